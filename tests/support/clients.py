"""Real client libraries against the gateway: loopback-only sessions, certificates, decoding."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from requests.adapters import HTTPAdapter

from tests.support.tokens import TEST_RSA_BITS, b64url

REQUEST_TIMEOUT = 10.0  # seconds; every library call in these tests is bounded by it


class _Refused(HTTPAdapter):
    """Mounted for every URL that is not loopback: the tests must never leave the machine."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a request left loopback: {request.method} {request.url}")


def loopback_only(session: requests.Session) -> list[requests.PreparedRequest]:
    """Confine ``session`` to 127.0.0.1 with a default timeout; returns what it sends.

    The list receives each request as it went on the wire (after the library's client
    authentication was applied), so the assertion a library built can be read back.
    """
    sent: list[requests.PreparedRequest] = []
    session.trust_env = False  # no proxy or netrc from the environment
    session.mount("http://", _Refused())
    session.mount("https://", _Refused())
    for scheme in ("http", "https"):
        session.mount(f"{scheme}://127.0.0.1:", HTTPAdapter(max_retries=0))
    session.hooks["response"].append(lambda response, *a, **k: sent.append(response.request))
    plain_request = session.request

    def bounded(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return plain_request(method, url, *args, **kwargs)

    session.request = bounded  # type: ignore[method-assign]
    return sent


def form_of(request: requests.PreparedRequest) -> dict[str, str]:
    body = request.body or b""
    text = body.decode() if isinstance(body, bytes) else body
    return dict(parse_qsl(text, keep_blank_values=True))


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, for reading what a library put there."""
    header, payload, _ = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(payload))


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass(frozen=True)
class ClientCertificate:
    """An RSA key and a self-signed certificate, the way MSAL clients hold their credential."""

    key_pem: str
    cert_pem: str
    cert_der: bytes
    pfx: bytes
    public_jwk: dict[str, Any]

    @property
    def sha1_hex(self) -> str:  # what Azure calls the certificate thumbprint
        return hashlib.sha1(self.cert_der).hexdigest()

    @property
    def x5t(self) -> str:
        return b64url(hashlib.sha1(self.cert_der).digest())

    @property
    def x5t_s256(self) -> str:
        return b64url(hashlib.sha256(self.cert_der).digest())


def make_client_certificate(common_name: str) -> ClientCertificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=TEST_RSA_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "use": "sig",
           "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
           "e": b64url(numbers.e.to_bytes(3, "big"))}
    return ClientCertificate(
        key_pem=key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        pfx=pkcs12.serialize_key_and_certificates(
            common_name.encode(), key, cert, None, serialization.NoEncryption()),
        public_jwk=jwk,
    )
