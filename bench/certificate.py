"""Benchmark CA-anchored case: the client identified by a certificate a bench CA issued.

The gateway under test holds the bench root in the client's ``ca_file``; every body carries
a fresh assertion signed with the client's own key, with the same chain (the client's leaf
for that key, then the issuing CA) in ``x5c``. The chain is validated once and then served
from the cache: the case measures the cached path, to compare with the same client on its
registered key.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from joserfc.jwk import ECKey, RSAKey
from tokens import Claimant, SigningKey

SUBJECT = "CN=bench-client,O=Bench,C=DE"
_DAY = datetime.timedelta(days=1)
_CA_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)
_LEAF_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False,
                            key_encipherment=False, data_encipherment=False,
                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                            encipher_only=False, decipher_only=False)


@dataclass(frozen=True, slots=True)
class BenchPki:
    """The root the gateway trusts and the chain the client sends."""

    root_pem: bytes
    x5c: list[str]  # the leaf, then the issuing CA

    def write_ca_file(self, path: Path) -> Path:
        path.write_bytes(self.root_pem)
        return path


def _certificate(subject: x509.Name, issuer: x509.Name, public_key: Any, signer: Any,
                 authority: Any, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - _DAY).not_valid_after(now + 7 * _DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(_CA_USAGE if ca else _LEAF_USAGE, critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   authority.public_key()), False))
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(key: SigningKey) -> BenchPki:
    """A root, an issuing CA under it, and a leaf for the client's key `key`."""
    root_key, issuing_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name.from_rfc4514_string("CN=Bench Root CA,O=Bench")
    issuing_name = x509.Name.from_rfc4514_string("CN=Bench Issuing CA,O=Bench")
    root = _certificate(root_name, root_name, root_key.public_key(), root_key, root_key, ca=True)
    issuing = _certificate(issuing_name, root_name, issuing_key.public_key(), root_key,
                           root_key, ca=True)
    client_key = (ECKey if key.alg == "ES256" else RSAKey).import_key(key.private_jwk)
    leaf = _certificate(x509.Name.from_rfc4514_string(SUBJECT), issuing_name,
                        client_key.public_key, issuing_key, issuing_key, ca=False)
    der = serialization.Encoding.DER
    return BenchPki(root.public_bytes(serialization.Encoding.PEM),
                    [base64.b64encode(cert.public_bytes(der)).decode() for cert in (leaf, issuing)])


def certificate_claimant(key: SigningKey, pki: BenchPki, client_id: str,
                         audience: str) -> Claimant:
    """The client's own assertions, each carrying its certificate chain in x5c."""
    return Claimant(key, client_id, client_id, audience, header={"x5c": pki.x5c})


def certificate_yaml(ca_file: Path) -> str:
    """The client's ``certificate`` key (indented under the client), instead of its jwks."""
    return f"    certificate: {json.dumps({'ca_file': str(ca_file), 'subject': SUBJECT})}\n"
