"""CA-anchored chains: trust anchors and CRLs read once, an x5c chain validated against them.

Path building and validation are cryptography's (``cryptography.x509.verification``, its
Web PKI profile for client certificates): the validity of every certificate, CA
constraints and key usage of every issuer, and the leaf's extended key usage (clientAuth
when it has one). Set here: what that profile leaves to the caller for a client
certificate of the subject-name-and-issuer model (the leaf need not carry a
subjectAltName; its key usage, when present, must permit signatures), the clock skew,
revocation by the configured CRLs, and which refusal each failure is.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.core.attempt import Attempt
from gateway.core.errors import InvalidClient
from gateway.core.reasons import Reason

MAX_SHOWN_NAME = 256  # characters of a subject kept for the audit line and logs
MAX_DETAIL = 240  # characters of the library's explanation kept for the log

_LINE_BREAKS = str.maketrans("", "", "\r\n")  # MSAL leaves the PEM's line breaks in x5c
# Standard base64 (RFC 7515 §4.1.6), whole quanta, padding only where due.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class TrustFileProblem(ValueError):
    """A ca_file or crl_file that cannot serve: ``setting`` names which."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


def _signatures_allowed(policy: Policy, cert: x509.Certificate,
                        usage: x509.KeyUsage | None) -> None:
    # Without a keyUsage extension the key is not restricted (RFC 5280 §4.2.1.3).
    if usage is not None and not usage.digital_signature:
        raise ValueError("the leaf's keyUsage does not permit digitalSignature")


# The profile's end-entity defaults want a subjectAltName (a TLS client names a host);
# a client identified by its subject has none. The key usage rule replaces the default's.
_EE_POLICY = (ExtensionPolicy.webpki_defaults_ee()
              .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
              .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _signatures_allowed))
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


@dataclass(frozen=True, slots=True)
class ValidatedChain:
    """A chain that validated to an anchor, not revoked: what the rest of the checks read."""

    leaf: x509.Certificate
    expires_at: float  # the earliest notAfter on the validated path: this outcome lapses then
    not_after: float  # the leaf's notAfter, epoch seconds
    subject: str  # the leaf's subject, RFC 4514, control characters escaped, bounded
    serial: str  # upper-case hex, as openssl prints it
    thumbprint: str  # x5t#S256: base64url SHA-256 of the leaf's DER

    def record(self, attempt: Attempt) -> None:
        """What the audit line says of the leaf."""
        attempt.certificate_subject = self.subject
        attempt.certificate_serial = self.serial
        attempt.certificate_thumbprint = self.thumbprint


class CertificateTrust:
    """The anchors of one ca_file and the CRLs of one crl_file, prepared once per load.

    ``identity`` changes whenever either file's bytes do: it scopes every cached outcome.
    ``validations`` counts the chains validated (the expensive step).
    """

    def __init__(self, anchors: Sequence[x509.Certificate],
                 crls: Sequence[x509.CertificateRevocationList], identity: str) -> None:
        self.anchors = tuple(anchors)
        self.identity = identity
        self.validations = 0
        self._store = Store(list(self.anchors))
        by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            by_issuer.setdefault(crl.issuer, []).append(crl)
        self._crls = {issuer: tuple(found) for issuer, found in by_issuer.items()}

    def validate(self, chain: Sequence[x509.Certificate], now: float, clock_skew: float,
                 attempt: Attempt | None = None) -> ValidatedChain:
        """Validate ``chain`` (leaf first, then intermediates in any order) at ``now``.

        Once a path to an anchor is found, the leaf's subject, serial and thumbprint go on
        ``attempt`` (a revoked certificate's audit line names it).

        Raises InvalidClient ``certificate_expired`` (a certificate of the chain past its
        notAfter plus ``clock_skew``), ``certificate_revoked`` (on a configured CRL) or
        ``certificate_untrusted`` (anything else: no path to an anchor, a constraint or a
        usage the profile refuses, a certificate not yet valid).
        """
        self.validations += 1
        at = _validation_time(chain, now, clock_skew)
        verifier = (PolicyBuilder().store(self._store).time(datetime.fromtimestamp(at, UTC))
                    .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                    .build_client_verifier())
        try:
            path = verifier.verify(chain[0], list(chain[1:])).chain
        except VerificationError as exc:
            expired = any(_not_after(cert) + clock_skew <= now for cert in chain)
            reason = Reason.CERTIFICATE_EXPIRED if expired else Reason.CERTIFICATE_UNTRUSTED
            raise InvalidClient(reason, str(exc)[:MAX_DETAIL]) from None
        leaf = path[0]
        validated = ValidatedChain(
            leaf=leaf,
            expires_at=min(_not_after(cert) for cert in path),
            not_after=_not_after(leaf),
            subject=shown_name(leaf.subject),
            serial=serial_hex(leaf.serial_number),
            thumbprint=certificate_thumbprint(leaf),
        )
        if attempt is not None:
            validated.record(attempt)
        self._check_revocation(path)
        return validated

    def _check_revocation(self, path: Sequence[x509.Certificate]) -> None:
        for cert, issuer in itertools.pairwise(path):
            for crl in self._crls.get(cert.issuer, ()):
                # A CRL naming this issuer must be its own: one that is not cannot be
                # trusted to list nothing.
                if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    raise InvalidClient(Reason.CERTIFICATE_UNTRUSTED,
                                        f"the CRL of {shown_name(cert.issuer)} is not signed "
                                        "by the issuer on the path")
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise InvalidClient(Reason.CERTIFICATE_REVOKED,
                                        f"serial {serial_hex(cert.serial_number)} of "
                                        f"{shown_name(cert.subject)}")


def load_trust(ca_data: bytes, crl_data: bytes | None) -> CertificateTrust:
    """The anchors of a PEM bundle and the CRLs of a PEM (one or more) or DER file.

    Raises TrustFileProblem: no certificate, a certificate that is not a CA, a file that
    holds no CRL, or a CRL of an anchor that the anchor did not sign.
    """
    try:
        anchors = x509.load_pem_x509_certificates(ca_data)
    except ValueError:
        raise TrustFileProblem("ca_file", "holds no PEM certificate (or a malformed one)") from None
    for anchor in anchors:
        if not _is_ca(anchor):
            raise TrustFileProblem("ca_file", f"{shown_name(anchor.subject)} is not a CA "
                                              "certificate (basicConstraints cA is not set)")
    crls = _load_crls(crl_data, anchors) if crl_data is not None else []
    digest = hashlib.sha256(ca_data)
    digest.update(b"\x00crl\x00" + (crl_data or b""))
    return CertificateTrust(anchors, crls, digest.hexdigest())


def _load_crls(data: bytes, anchors: Sequence[x509.Certificate],
               ) -> list[x509.CertificateRevocationList]:
    blocks = _PEM_CRL.findall(data)
    if not blocks and b"-----BEGIN" in data:
        raise TrustFileProblem("crl_file", "holds no PEM X509 CRL block")
    try:
        crls = ([x509.load_pem_x509_crl(block) for block in blocks] if blocks
                else [x509.load_der_x509_crl(data)])
    except ValueError:
        raise TrustFileProblem("crl_file", "is not a CRL (PEM or DER)") from None
    for crl in crls:
        issuers = [anchor for anchor in anchors if anchor.subject == crl.issuer]
        # An intermediate's CRL is checked against the intermediate when a chain uses it.
        if issuers and not any(crl.is_signature_valid(a.public_key())  # type: ignore[arg-type]
                               for a in issuers):
            raise TrustFileProblem("crl_file", f"the CRL of {shown_name(crl.issuer)} is not "
                                               "signed by that CA in ca_file")
    return crls


def decode_x5c(x5c: Sequence[str]) -> tuple[x509.Certificate, ...]:
    """The certificates of an x5c header (its shape already checked by the parser).

    Raises InvalidClient ``bad_header`` for an entry that is not base64 DER.
    """
    found = []
    for index, entry in enumerate(x5c):
        encoded = entry.translate(_LINE_BREAKS)
        try:
            if not _BASE64.fullmatch(encoded):
                raise ValueError("not canonical base64")
            der = binascii.a2b_base64(encoded, strict_mode=True)
            found.append(x509.load_der_x509_certificate(der))
        except (ValueError, binascii.Error):
            raise InvalidClient(Reason.BAD_HEADER, f"x5c[{index}] is not a certificate") from None
    return tuple(found)


def _validation_time(chain: Sequence[x509.Certificate], now: float, clock_skew: float) -> float:
    """``now``, or the nearest moment within ``clock_skew`` of it at which every
    certificate of the chain is valid (the library takes one validation time)."""
    start = max(cert.not_valid_before_utc.timestamp() for cert in chain)
    end = min(_not_after(cert) for cert in chain)
    if start > end:
        return now
    at = min(max(now, start), end)
    return at if abs(at - now) <= clock_skew else now


def _not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def shown_name(name: x509.Name) -> str:
    """A name as RFC 4514 text safe in a log line: control characters escaped, bounded."""
    text = name.rfc4514_string()
    printable = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return printable[:MAX_SHOWN_NAME]


def serial_hex(serial: int) -> str:
    digits = f"{serial:X}"
    return digits if len(digits) % 2 == 0 else f"0{digits}"


def certificate_thumbprint(cert: x509.Certificate) -> str:
    """x5t#S256 (RFC 7515 §4.1.8): base64url, unpadded, of the SHA-256 of the DER."""
    digest = cert.fingerprint(hashes.SHA256())
    return binascii.b2a_base64(digest, newline=False).decode("ascii").translate(
        str.maketrans("+/", "-_")).rstrip("=")
