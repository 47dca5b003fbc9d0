"""The x5c header: its shape, and binding its first certificate to the key that verified.

A certificate in a token is never a source of keys: the key always comes from the client's
registered set. When a client (MSAL with ``public_certificate``) sends its chain anyway, the
first certificate must certify that very key, so the header cannot claim an identity the
signature does not back. Nothing else of the certificate (validity, issuer, chain) is
checked: the registration is the trust anchor.
"""

from __future__ import annotations

import binascii
import functools
import re
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.core.errors import InvalidClient
from gateway.core.reasons import Reason

MAX_X5C_CERTIFICATES = 10
MAX_X5C_CHARS = 10 * 1024  # all certificates together; a token is at most 16 KiB anyway
CERTIFICATE_CACHE_SIZE = 128  # a client sends the same certificate with every assertion

# Standard base64 (RFC 7515 §4.1.6), with the line breaks MSAL leaves in from the PEM file.
_BASE64_WITH_LINE_BREAKS = re.compile(r"[A-Za-z0-9+/\r\n]+={0,2}")
_LINE_BREAKS = str.maketrans("", "", "\r\n")
# Without line breaks: whole quanta, padding only where due (binascii lets "TWFu=" pass).
_CANONICAL_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def check_x5c_shape(value: object) -> None:
    """Accept a JSON array of 1..MAX_X5C_CERTIFICATES base64 strings of bounded total size.

    Cheap and syntactic only: the certificate is decoded after the signature verified.
    Raises InvalidClient ``bad_header`` for anything else.
    """
    if type(value) is not list or not 1 <= len(value) <= MAX_X5C_CERTIFICATES:
        raise InvalidClient(Reason.BAD_HEADER,
                            f"x5c is not an array of 1 to {MAX_X5C_CERTIFICATES}")
    if any(type(item) is not str for item in value):
        raise InvalidClient(Reason.BAD_HEADER, "x5c holds a value that is not a string")
    if sum(len(item) for item in value) > MAX_X5C_CHARS:
        raise InvalidClient(Reason.BAD_HEADER, f"x5c longer than {MAX_X5C_CHARS} characters")
    if not all(_BASE64_WITH_LINE_BREAKS.fullmatch(item) for item in value):
        raise InvalidClient(Reason.BAD_HEADER, "x5c holds a value that is not base64")


def check_certificate_binding(x5c: list[str], verifying_key: Any) -> None:
    """Require the first certificate of ``x5c`` to hold ``verifying_key`` (a joserfc key).

    Raises InvalidClient ``bad_header`` when it is not a DER certificate with a usable
    public key, ``certificate_key_mismatch`` when it certifies another key.
    """
    certified = _certified_key(x5c[0])
    if certified is None:
        raise InvalidClient(Reason.BAD_HEADER, "x5c[0] is not a certificate")
    verifying = verifying_key.public_key.public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if certified != verifying:
        raise InvalidClient(Reason.CERTIFICATE_KEY_MISMATCH, "x5c[0] certifies another key")


@functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def _certified_key(certificate: str) -> bytes | None:
    """The SubjectPublicKeyInfo (DER, re-encoded) of a base64 certificate, or None."""
    encoded = certificate.translate(_LINE_BREAKS)
    if not _CANONICAL_BASE64.fullmatch(encoded):
        return None
    try:
        der = binascii.a2b_base64(encoded, strict_mode=True)
        public_key = x509.load_der_x509_certificate(der).public_key()
        return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
