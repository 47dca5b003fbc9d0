"""pkjwt-gateway: private_key_jwt client authentication in front of a legacy OAuth IdP."""

__version__ = "0.1.0"
