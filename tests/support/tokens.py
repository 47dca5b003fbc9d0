"""Test-side keys and tokens: cached key pairs per algorithm and a signer that can build any token.

The signer plays the attacker too: ``sign`` takes any header and payload (dicts, or raw
bytes for JSON the encoder would never write) and signs the exact segments it produced.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from gateway.cli.mint import generate_key, load_private_key
from gateway.core.keyset import JWS_ALGORITHMS, KeySet, prepare_keyset

NOW: Final = 1_750_000_000.0
CLIENT_ID: Final = "client-a"
AUDIENCE: Final = "https://idp.example.com"
TEST_RSA_BITS: Final = 2048  # keygen speed; the gateway's floor


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()  # as an override value: leave the member out
_DEFAULT_KID: Final = object()

# Algorithms sharing a key type share cached key material (slot by slot).
_FAMILY = {
    **{alg: ("RSA", "RS256") for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("P-256", "ES256"),
    "ES384": ("P-384", "ES384"),
    "ES512": ("P-521", "ES512"),
    "EdDSA": ("Ed25519", "Ed25519"),
    "Ed25519": ("Ed25519", "Ed25519"),
}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def encode_segment(part: Mapping[str, Any] | bytes) -> str:
    """A header or payload as a base64url segment; bytes are used exactly as given."""
    raw = part if isinstance(part, bytes) else json.dumps(part, separators=(",", ":")).encode()
    return b64url(raw)


def compact(header: Mapping[str, Any] | bytes, claims: Mapping[str, Any] | bytes,
            signature: bytes) -> str:
    """A compact JWS with an arbitrary (usually wrong) signature."""
    return f"{encode_segment(header)}.{encode_segment(claims)}.{b64url(signature)}"


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; an override of OMIT removes the member."""
    out = dict(base)
    for name, value in overrides.items():
        if value is OMIT:
            out.pop(name, None)
        else:
            out[name] = value
    return out


@functools.cache
def _key_material(family: str, slot: int) -> tuple[str, dict[str, Any]]:
    del slot  # part of the cache key only: each slot is an independent key
    alg = next(generate_alg for fam, generate_alg in _FAMILY.values() if fam == family)
    return generate_key(alg, None, rsa_bits=TEST_RSA_BITS)


@dataclass(frozen=True)
class Signer:
    alg: str
    kid: str | None
    private_key: Any
    public_jwk: dict[str, Any]

    def with_jwk(self, **members: Any) -> Signer:
        """The same private key with changed public JWK members (OMIT removes one)."""
        jwk = merge(self.public_jwk, members)
        return replace(self, public_jwk=jwk, kid=jwk.get("kid"))

    def keyset(self, *others: Signer) -> KeySet:
        return prepare_keyset([self.public_jwk, *(other.public_jwk for other in others)])

    def header(self, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"alg": self.alg}
        if self.kid is not None:
            base["kid"] = self.kid
        return merge(base, overrides)

    def sign(self, header: Mapping[str, Any] | bytes, claims: Mapping[str, Any] | bytes,
             *, sign_alg: str | None = None) -> str:
        """Sign exactly these header and payload segments with ``sign_alg`` (default: own alg)."""
        signing_input = f"{encode_segment(header)}.{encode_segment(claims)}"
        model = JWS_ALGORITHMS[sign_alg or self.alg]
        signature = model.sign(signing_input.encode("ascii"), self.private_key)
        return f"{signing_input}.{b64url(signature)}"

    def assertion(self, client_id: str = CLIENT_ID, audience: str = AUDIENCE, *,
                  now: float = NOW, lifetime: float = 60, header: Mapping[str, Any] | None = None,
                  **claim_overrides: Any) -> str:
        """A valid assertion unless overridden; header members via ``header``, claims by name."""
        claims = valid_claims(client_id, audience, now=now, lifetime=lifetime, **claim_overrides)
        return self.sign(self.header(**(header or {})), claims)


def valid_claims(client_id: str = CLIENT_ID, audience: str = AUDIENCE, *, now: float = NOW,
                 lifetime: float = 60, **overrides: Any) -> dict[str, Any]:
    """Claims accepted at ``now`` (a fresh jti each call), then ``overrides`` (OMIT drops)."""
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": int(now),
              "exp": int(now + lifetime), "jti": secrets.token_urlsafe(16)}
    return merge(claims, overrides)


def make_signer(alg: str, *, kid: Any = _DEFAULT_KID, slot: int = 0) -> Signer:
    """A signer for ``alg`` on a cached key; ``slot`` picks another key of the same type.

    ``kid`` defaults to "<alg>-<slot>"; pass None for a JWK and header without kid.
    The public JWK has ``use: sig`` and no ``alg`` (use ``with_jwk(alg=...)``).
    """
    family, _ = _FAMILY[alg]
    pem, public = _key_material(family, slot)
    if kid is _DEFAULT_KID:
        kid = f"{alg.lower()}-{slot}"
    jwk = merge(public, {"alg": OMIT, "kid": OMIT if kid is None else kid})
    return Signer(alg=alg, kid=kid, private_key=load_private_key(pem, alg), public_jwk=jwk)
