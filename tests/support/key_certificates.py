"""Test-side certificates of registered keys: a self-signed leaf for a signer's own key.

``with_certificate`` gives a signer whose public JWK carries ``x5c`` (standard base64 DER,
RFC 7517 §4.7) with the validity asked for, as a JWKS publishing certificates would.
"""

from __future__ import annotations

import base64
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests.support.tokens import Signer

DAY = 86_400.0


def _moment(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)


def _certificate_der(signer: Signer, not_before: float, not_after: float, serial: int,
                     common_name: str, issuer_key_of: Signer | None) -> bytes:
    key = signer.private_key.raw_value
    signing = issuer_key_of.private_key.raw_value if issuer_key_of is not None else key
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Corp")])
    issuer = subject if issuer_key_of is None else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Acme Issuing CA")])
    # Ed25519 and Ed448 sign without a separate hash.
    algorithm = None if signing.__class__.__name__.startswith("Ed") else hashes.SHA256()
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(_moment(not_before)).not_valid_after(_moment(not_after))
                   .sign(signing, algorithm))
    return certificate.public_bytes(Encoding.DER)


def certificate_b64(signer: Signer, *, not_before: float, not_after: float, serial: int = 0x1A2B,
                    common_name: str = "client-a", issued_by: Signer | None = None) -> str:
    """A certificate for ``signer``'s key (self-signed unless ``issued_by``), base64 DER."""
    der = _certificate_der(signer, not_before, not_after, serial, common_name, issued_by)
    return base64.b64encode(der).decode("ascii")


def with_certificate(signer: Signer, *, not_after: float, not_before: float | None = None,
                     serial: int = 0x1A2B, issued_by: Signer | None = None) -> Signer:
    """``signer`` whose public JWK carries ``x5c``: a leaf for its own key valid until
    ``not_after`` (from ``not_before``, by default 30 days earlier)."""
    start = not_after - 30 * DAY if not_before is None else not_before
    leaf = certificate_b64(signer, not_before=start, not_after=not_after, serial=serial,
                           issued_by=issued_by)
    return signer.with_jwk(x5c=[leaf])
