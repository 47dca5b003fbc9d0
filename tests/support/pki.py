"""A test PKI built with cryptography: a root, intermediates, client leaves, CRLs, bad variants.

Every certificate is built here, on the spot, so a test says exactly what is wrong with the
one it sends (an intermediate without CA rights, a leaf whose EKU is server-only, ...).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli.mint import load_private_key
from tests.support.tokens import TEST_RSA_BITS, Signer, b64url

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
DAY = datetime.timedelta(days=1)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def name(rfc4514: str) -> x509.Name:
    return x509.Name.from_rfc4514_string(rfc4514)


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=TEST_RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def key_usage(*, signature: bool = True, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature, content_commitment=False, key_encipherment=not signature,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def x5c_entry(self) -> str:
        """Standard base64 of the DER, as x5c carries it."""
        return base64.b64encode(self.der).decode("ascii")

    @property
    def thumbprint(self) -> str:  # x5t#S256
        return b64url(hashlib.sha256(self.der).digest())

    @property
    def serial(self) -> str:
        digits = f"{self.cert.serial_number:X}"
        return digits if len(digits) % 2 == 0 else f"0{digits}"

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def signer(self, alg: str | None = None) -> Signer:
        """A signer with this certificate's key (no kid)."""
        alg = alg or ("ES256" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "PS256")
        return Signer(alg=alg, kid=None, private_key=load_private_key(self.key_pem, alg),
                      public_jwk={})


def build(subject: x509.Name, issuer_name: x509.Name, public_key: Any, signing_key: PrivateKey,
          *, ca: bool | None, usage: x509.KeyUsage | None, eku: Sequence[x509.ObjectIdentifier]
          | None = None, san: Sequence[x509.GeneralName] | None = None,
          not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, authority: PrivateKey | None = None,
          serial: int | None = None) -> x509.Certificate:
    start = not_before or now_utc() - DAY
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(public_key).serial_number(serial or x509.random_serial_number())
               .not_valid_before(start).not_valid_after(not_after or start + 30 * DAY)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if usage is not None:
        builder = builder.add_extension(usage, True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), False)
    if authority is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.public_key()), False)
    return builder.sign(signing_key, hashes.SHA256())


class CA:
    """A certificate authority: a self-signed root, or an intermediate under another CA."""

    def __init__(self, common_name: str = "Test Root CA", *, parent: CA | None = None,
                 ca: bool | None = True, usage: x509.KeyUsage | None = None,
                 key_kind: str = "ec", not_after: datetime.datetime | None = None) -> None:
        self.name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test PKI"),
                               x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.key = new_key(key_kind)
        self.parent = parent
        signer = parent.key if parent is not None else self.key
        cert = build(self.name, parent.name if parent else self.name, self.key.public_key(),
                     signer, ca=ca, usage=usage or key_usage(cert_sign=True),
                     authority=parent.key if parent else None, not_after=not_after)
        self.issued = Issued(cert, self.key)

    @property
    def cert(self) -> x509.Certificate:
        return self.issued.cert

    @property
    def pem(self) -> bytes:
        return self.issued.pem

    def intermediate(self, common_name: str = "Test Issuing CA", **options: Any) -> CA:
        return CA(common_name, parent=self, **options)

    def issue(self, subject: str | x509.Name = "CN=partner-acme,O=Acme Corp,C=DE", *,
              key: PrivateKey | None = None, key_kind: str = "ec",
              eku: Sequence[x509.ObjectIdentifier] | None = (CLIENT_AUTH,),
              usage: x509.KeyUsage | None = None, san: Sequence[x509.GeneralName] | None = None,
              not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> Issued:
        """A client certificate (a leaf) issued by this CA."""
        key = key or new_key(key_kind)
        subject = name(subject) if isinstance(subject, str) else subject
        cert = build(subject, self.name, key.public_key(), self.key, ca=False,
                     usage=usage or key_usage(), eku=eku, san=san, not_before=not_before,
                     not_after=not_after, authority=self.key)
        return Issued(cert, key)

    def chain(self, leaf: Issued) -> list[str]:
        """x5c for ``leaf``: the leaf, then every CA up to (not including) the root."""
        entries = [leaf.x5c_entry]
        ca: CA | None = self
        while ca is not None and ca.parent is not None:
            entries.append(ca.issued.x5c_entry)
            ca = ca.parent
        return entries

    def crl(self, *revoked: Issued, signer: PrivateKey | None = None) -> bytes:
        """A PEM CRL of this CA listing ``revoked`` (signed by ``signer`` when given)."""
        now = now_utc()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
                   .last_update(now - DAY).next_update(now + 7 * DAY))
        for entry in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(entry.cert.serial_number)
                .revocation_date(now - DAY).build())
        crl = builder.sign(signer or self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)


def self_signed(subject: str, *, ca: bool | None = False) -> Issued:
    """A certificate signed by its own key (no authority key identifier)."""
    key = new_key()
    cert = build(name(subject), name(subject), key.public_key(), key, ca=ca,
                 usage=key_usage(), eku=(CLIENT_AUTH,))
    return Issued(cert, key)


@dataclass(frozen=True)
class Attack:
    """An x5c an attacker sends, signed with ``signer``'s key, and the refusal it must get."""

    signer: Issued
    x5c: list[str]
    reason: str


def _under(ca: CA, **options: Any) -> Attack:
    leaf = ca.issue(**options)
    return Attack(leaf, ca.chain(leaf), "certificate_untrusted")


def attacks(root: CA, issuing: CA, subject: str) -> dict[str, Attack]:
    """Chains made to pass for the client whose leaf ``issuing`` (under ``root``) would
    issue with ``subject``, each wrong in one way."""
    now = now_utc()
    lone = self_signed(subject)
    stranger = CA("Other Root").intermediate("Other Issuing")
    ca_leaf = Issued(issuing.cert, issuing.key)
    expired = issuing.issue(subject, not_before=now - 40 * DAY, not_after=now - DAY)
    genuine, thief = issuing.issue(subject), issuing.issue(subject)
    x5c_of_eleven = [genuine.x5c_entry] * 11
    assert "C=DE" in subject, "the one attribute changed is the country"
    off = issuing.issue(subject.replace("C=DE", "C=FR"))
    return {
        "self-signed-leaf": Attack(lone, [lone.x5c_entry], "certificate_untrusted"),
        "leaf-of-another-ca": _under(stranger, subject=subject),
        "expired-leaf": Attack(expired, issuing.chain(expired), "certificate_expired"),
        "not-yet-valid-leaf": _under(issuing, subject=subject, not_before=now + DAY),
        "intermediate-without-ca-rights": _under(root.intermediate("No CA", ca=False),
                                                 subject=subject),
        "intermediate-without-basic-constraints": _under(root.intermediate("No BC", ca=None),
                                                         subject=subject),
        "leaf-without-signature-usage": _under(issuing, subject=subject,
                                               usage=key_usage(signature=False)),
        "leaf-eku-server-only": _under(issuing, subject=subject, eku=(SERVER_AUTH,)),
        "intermediate-left-out": Attack(genuine, [genuine.x5c_entry], "certificate_untrusted"),
        "ca-certificate-as-leaf": Attack(ca_leaf, [issuing.issued.x5c_entry],
                                         "certificate_untrusted"),
        "subject-one-attribute-off": Attack(off, issuing.chain(off),
                                            "certificate_subject_mismatch"),
        "valid-chain-another-key-signed": Attack(thief, issuing.chain(genuine), "bad_signature"),
        "oversized-chain": Attack(genuine, x5c_of_eleven, "bad_header"),
        "x5c-not-base64-der": Attack(genuine, [base64.b64encode(b"not DER").decode()],
                                     "bad_header"),
        "x5c-not-base64": Attack(genuine, ["not base64!"], "bad_header"),
    }
