"""Client-side keys and assertions: key generation, private key loading and assertion minting."""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import secrets
import time
from typing import Any

from joserfc import jwk

from gateway.config.types import MAX_LIFETIME_LIMIT, parse_duration
from gateway.core.assertion import ASSERTION_TYP
from gateway.core.keyset import JWS_ALGORITHMS, MIN_RSA_BITS, key_algorithms

DEFAULT_RSA_BITS = 3072
DEFAULT_LIFETIME = 60.0
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?")

# alg -> (kty, crv); crv None for RSA.
_KEY_SHAPES: dict[str, tuple[str, str | None]] = {
    **{f"{family}{bits}": ("RSA", None) for family in ("RS", "PS") for bits in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
}


def generate_key(
    alg: str, kid: str | None, *, rsa_bits: int = DEFAULT_RSA_BITS
) -> tuple[str, dict[str, Any]]:
    """A new key pair for ``alg``: the private key as PKCS#8 PEM and the public JWK.

    The JWK carries ``kid`` (the RFC 7638 thumbprint when ``kid`` is None), ``alg`` and
    ``use: sig``. Raises ValueError for an unknown algorithm or RSA under 2048 bits.
    """
    kty, crv = _shape(alg)
    if kty == "RSA":
        if rsa_bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        key: Any = jwk.RSAKey.generate_key(rsa_bits)
    elif kty == "EC":
        key = jwk.ECKey.generate_key(crv)
    else:
        key = jwk.OKPKey.generate_key(crv)  # type: ignore[arg-type]
    return key.as_pem(private=True).decode("ascii"), public_jwk(key, alg, kid)


def public_jwk(key: Any, alg: str, kid: str | None) -> dict[str, Any]:
    """The public JWK of a joserfc key, as ``generate_key`` gives it: ``kid`` (the RFC 7638
    thumbprint when None), ``alg`` and ``use: sig``; never a private member."""
    public = dict(key.as_dict(private=False))
    public.update(kid=kid if kid is not None else key.thumbprint(), alg=alg, use="sig")
    return public


def parse_lifetime(text: str) -> float:
    """``mint --lifetime``: a duration as in the config ("60s", "5m") or plain seconds, from
    one second to the longest max_lifetime a configuration allows.

    Raises argparse.ArgumentTypeError (argparse prints it and exits 2).
    """
    try:
        value = float(text) if _PLAIN_SECONDS.fullmatch(text) else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}, or plain seconds") from None
    if not 1 <= value <= MAX_LIFETIME_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be between 1s and {MAX_LIFETIME_LIMIT:g}s")
    return value


def load_private_key(pem: str | bytes, alg: str) -> Any:
    """Load a PEM private key and check that it can sign ``alg``; returns a joserfc key.

    Raises ValueError when the PEM is not a private key or does not fit ``alg``.
    """
    kty, _ = _shape(alg)
    try:
        key: Any = jwk.import_key(pem, kty)  # type: ignore[call-overload]
    except Exception as exc:  # cryptography raises several types for a bad PEM
        raise ValueError(f"not a {kty} private key in PEM form ({type(exc).__name__})") from exc
    if not key.is_private:
        raise ValueError("the PEM holds a public key, a private key is needed")
    if alg not in key_algorithms(key.as_dict(private=False)):
        raise ValueError(f"this key cannot sign {alg}")
    if kty == "RSA" and key.raw_value.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
    return key


def mint_assertion(
    private_key: Any,
    *,
    alg: str,
    client_id: str,
    audience: str,
    lifetime: float = DEFAULT_LIFETIME,
    now: float | None = None,
    kid: str | None = None,
    jti: str | None = None,
    typ: str | None = ASSERTION_TYP,
) -> str:
    """A signed client assertion (RFC 7523) with iss = sub = ``client_id``, one ``aud``.

    The header keeps ``alg`` as given ("EdDSA" or "Ed25519"). ``jti`` defaults to 128
    random bits. Raises ValueError for an unknown algorithm or a lifetime under a second.
    """
    if alg not in JWS_ALGORITHMS:
        raise ValueError(f"unsupported algorithm {alg!r}")
    if lifetime < 1:
        raise ValueError("lifetime must be at least one second")
    issued = int(time.time() if now is None else now)
    header: dict[str, Any] = {"alg": alg}
    if typ is not None:
        header["typ"] = typ
    if kid is not None:
        header["kid"] = kid
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + math.floor(lifetime),
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
    }
    signing_input = _segment(header) + b"." + _segment(claims)
    signature = JWS_ALGORITHMS[alg].sign(signing_input, private_key)
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


def _shape(alg: str) -> tuple[str, str | None]:
    try:
        return _KEY_SHAPES[alg]
    except KeyError:
        known = ", ".join(sorted(_KEY_SHAPES))
        raise ValueError(f"unsupported algorithm {alg!r} (one of {known})") from None


def _segment(obj: dict[str, Any]) -> bytes:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")

