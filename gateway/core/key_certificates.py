"""A registered key's own certificate: the leaf of a JWK's ``x5c``, bound to the key, read once.

RFC 7517 §4.7: ``x5c`` is a chain of standard base64 DER certificates, the first of which
MUST hold the JWK's public key. The gateway reads that leaf when it imports the key (never
per request): a leaf certifying another key makes the key unusable, and the leaf's
``notAfter`` is when the key's certificate expires, watched by the expiry gauge, ``check``,
``keys`` and, with ``refuse_expired_certificates``, enforced. Nothing else of the chain is
checked here: the registration is the trust anchor.
"""

from __future__ import annotations

import binascii
import math
import re
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.core.certificate_chain import serial_hex, shown_name
from gateway.core.certificates import MAX_X5C_CERTIFICATES

SECONDS_PER_DAY = 86_400
NOT_A_CHAIN = f"'x5c' must be a list of 1 to {MAX_X5C_CERTIFICATES} base64 certificates"
NOT_A_CERTIFICATE = "'x5c' holds a first entry that is not a base64 DER certificate"
ANOTHER_KEY = "'x5c' certifies another key than the JWK's own: the leaf must hold this key"

# Standard base64 (RFC 7517 §4.7: not base64url), whole quanta, padding only where due.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@dataclass(frozen=True, slots=True)
class KeyCertificate:
    """What the inventory and the expiry checks read of a key's leaf; never key material."""

    subject: str  # RFC 4514 form, non-printable characters escaped
    issuer: str
    serial: str  # upper-case hex, as openssl prints it
    not_before: float  # epoch seconds
    not_after: float


def is_certificate_chain(x5c: object) -> TypeGuard[list[str]]:
    """The shape of a JWK's ``x5c``: a list of 1..MAX_X5C_CERTIFICATES strings."""
    return (type(x5c) is list and 1 <= len(x5c) <= MAX_X5C_CERTIFICATES
            and all(type(item) is str for item in x5c))


def read_key_certificate(x5c: object, public_key: Any) -> KeyCertificate | str:
    """The leaf of a JWK's ``x5c`` when it holds ``public_key`` (a cryptography public key).

    Returns why the key is unusable otherwise, as a message naming members only: ``x5c``
    not a list of base64 strings, a first entry that is not a DER certificate, or a leaf
    that certifies another key.
    """
    if not is_certificate_chain(x5c):
        return NOT_A_CHAIN
    leaf = _load(x5c[0])
    if leaf is None:
        return NOT_A_CERTIFICATE
    try:
        certified = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return ANOTHER_KEY  # a key type the JWK cannot be
    if certified != public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        return ANOTHER_KEY
    try:
        return describe_certificate(leaf)
    except (ValueError, TypeError):  # fields are parsed lazily: a malformed name shows here
        return NOT_A_CERTIFICATE


def describe_certificate(certificate: x509.Certificate) -> KeyCertificate:
    """Subject, issuer, serial and validity of a certificate, as text safe to print."""
    return KeyCertificate(
        subject=shown_name(certificate.subject),
        issuer=shown_name(certificate.issuer),
        serial=serial_hex(certificate.serial_number),
        not_before=certificate.not_valid_before_utc.timestamp(),
        not_after=certificate.not_valid_after_utc.timestamp(),
    )


def days_left(not_after: float, now: float) -> int:
    """Whole days from ``now`` to ``not_after``, rounded down (negative once expired)."""
    return math.floor((not_after - now) / SECONDS_PER_DAY)


def expiry_warning(not_after: float, now: float, within: float) -> str | None:
    """``expires <when>, in <n> day(s)`` when ``not_after`` is less than ``within`` seconds
    away, ``expired <when>`` once past, else None."""
    if not_after - now >= within:
        return None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))
    if not_after <= now:
        return f"expired {when}"
    return f"expires {when}, in {days_left(not_after, now)} day(s)"


def _load(encoded: str) -> x509.Certificate | None:
    if not _BASE64.fullmatch(encoded):
        return None
    try:
        return x509.load_der_x509_certificate(binascii.a2b_base64(encoded, strict_mode=True))
    except (ValueError, TypeError, binascii.Error):
        return None
