"""What a CA-anchored client's leaf certificate must name, and the key it certifies.

The subject is compared as a parsed name (RFC 4514 text in the config, the certificate's
Name here): same attributes, same order, same values. A subjectAltName is compared by
kind: a DNS name and an email's domain without regard to case, a URI byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.core.errors import InvalidClient
from gateway.core.keyset import VerificationKey, prepare_keyset
from gateway.core.reasons import Reason

SUBJECT_EXAMPLE = "CN=partner-acme,O=Acme Corp,C=DE"
_SAN_TYPES: dict[str, type[x509.DNSName | x509.UniformResourceIdentifier | x509.RFC822Name]] = {
    "dns": x509.DNSName, "uri": x509.UniformResourceIdentifier, "email": x509.RFC822Name}


@dataclass(frozen=True, slots=True)
class LeafIdentity:
    """The leaf's exact subject, or one subjectAltName of a kind (dns, uri or email)."""

    subject: x509.Name | None = None
    san_kind: str | None = None
    san_value: str | None = None  # in its compared form (see _compared)

    def matches(self, leaf: x509.Certificate) -> bool:
        if self.subject is not None:
            return leaf.subject == self.subject
        assert self.san_kind is not None
        try:
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (x509.ExtensionNotFound, ValueError):
            return False
        values = names.get_values_for_type(_SAN_TYPES[self.san_kind])
        return any(_compared(self.san_kind, value) == self.san_value for value in values)

    def describe(self) -> str:
        """The configured identity, for a refusal's log detail."""
        if self.subject is not None:
            return f"subject {self.subject.rfc4514_string()}"
        return f"san {self.san_kind} {self.san_value}"


def parse_identity(subject: str | None, san_kind: str | None = None,
                   san_value: str | None = None) -> LeafIdentity:
    """The identity a client's ``subject`` (RFC 4514) or ``san`` names.

    Raises ValueError with a message for the config's problem list.
    """
    if subject is not None:
        try:
            name = x509.Name.from_rfc4514_string(subject)
        except ValueError:
            name = x509.Name([])
        if not name.rdns:
            raise ValueError(f"is not an RFC 4514 distinguished name such as {SUBJECT_EXAMPLE!r} "
                             "(attribute names such as CN, O, OU, C in capitals, no spaces "
                             "around ',' or '=')")
        return LeafIdentity(subject=name)
    if san_kind not in _SAN_TYPES or not san_value:
        raise ValueError("needs a subject or one san of dns, uri, email")
    return LeafIdentity(san_kind=san_kind, san_value=_compared(san_kind, san_value))


def _compared(kind: str, value: str) -> str:
    if kind == "dns":
        return value.lower()
    if kind == "email":
        local, at, domain = value.rpartition("@")
        return f"{local}{at}{domain.lower()}"
    return value


_KEY_TYPES: tuple[tuple[type, type[RSAKey | ECKey | OKPKey]], ...] = (
    (rsa.RSAPublicKey, RSAKey), (ec.EllipticCurvePublicKey, ECKey),
    (ed25519.Ed25519PublicKey, OKPKey))


def leaf_key(leaf: x509.Certificate) -> VerificationKey:
    """The leaf's public key as a verification key, under the rules every JWK is held to.

    Raises InvalidClient ``certificate_untrusted`` for a key the gateway does not verify
    with (an unsupported type or curve, RSA under 2048 bits).
    """
    try:
        public = leaf.public_key()
        kind = next((cls for base, cls in _KEY_TYPES if isinstance(public, base)), None)
        if kind is None:
            raise ValueError(f"a {type(public).__name__}")
        jwk = kind.import_key(public).as_dict(private=False)  # type: ignore[arg-type]
        return prepare_keyset([jwk]).keys[0]
    except Exception as exc:  # cryptography and joserfc raise many types for odd keys
        raise InvalidClient(Reason.CERTIFICATE_UNTRUSTED,
                            f"the leaf's key is not usable ({str(exc)[:80]})") from None
