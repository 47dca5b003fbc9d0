"""Verification keys: a client's JWKs imported once, what each may verify, which fit a header."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from joserfc import jwa, jwk
from joserfc.jwa import JWSAlgModel

from gateway.core.errors import InvalidClient

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # as jwkset: verification cost grows with the modulus
MAX_KEY_TRIES = 4  # keys tried when the header names none: bounds the CPU one token can cost

# The only JWS algorithms the gateway knows, built once from an explicit list. joserfc's
# registry defaults include HS256 and "none"; nothing here reaches them. "EdDSA" (RFC 8037)
# and "Ed25519" (RFC 9864) name the same signature over Ed25519 keys; both map to the
# RFC 9864 model, which does not emit joserfc's deprecation warning.
_JOSERFC_ALGORITHMS = {alg.name: alg for alg in jwa.JWS_ALGORITHMS}
JWS_ALGORITHMS: Mapping[str, JWSAlgModel] = MappingProxyType(
    {
        **{name: _JOSERFC_ALGORITHMS[name] for name in (
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
        )},
        "Ed25519": _JOSERFC_ALGORITHMS["Ed25519"],
        "EdDSA": _JOSERFC_ALGORITHMS["Ed25519"],
    }
)
EDDSA_NAMES = frozenset({"EdDSA", "Ed25519"})

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"}),
                  "P-521": frozenset({"ES512"})}
_OKP_ALGORITHMS = {"Ed25519": EDDSA_NAMES}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: Any                    # joserfc key object, imported once
    kid: str | None
    algorithms: frozenset[str]  # algs this key may verify (from its kty/crv and its own `alg`)
    thumbprint: str             # RFC 7638 SHA-256 thumbprint, base64url
    x5t: str | None             # from JWK x5t (unpadded base64url form for comparison)
    x5t_s256: str | None        # from JWK x5t#S256 (unpadded)


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...]
    by_kid: Mapping[str, tuple[VerificationKey, ...]]


def prepare_keyset(jwks_keys: Iterable[Mapping[str, Any]]) -> KeySet:
    """Import every public JWK once and index the result by ``kid``.

    Raises ValueError naming the key's position when a JWK cannot serve as a public
    signature-verification key (private members, unknown type, RSA under 2048 bits,
    members joserfc refuses). The message never contains key material.
    """
    keys = tuple(_prepare_key(index, jwk_dict) for index, jwk_dict in enumerate(jwks_keys))
    by_kid: dict[str, tuple[VerificationKey, ...]] = {}
    for key in keys:
        if key.kid is not None:
            by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
    return KeySet(keys=keys, by_kid=MappingProxyType(by_kid))


def select_keys(
    header: Mapping[str, Any], keys: KeySet, alg: str
) -> tuple[VerificationKey, ...]:
    """The client's keys worth trying for this header, at most MAX_KEY_TRIES of them.

    A ``kid`` selects only keys with that kid. Without one, ``x5t#S256``/``x5t`` select the
    keys declaring that certificate thumbprint; keys declaring another are dropped, and keys
    declaring none remain candidates only when no key matches. Raises InvalidClient
    ``no_matching_key`` when no candidate may verify ``alg``.
    """
    kid = header.get("kid")
    if kid is not None:
        pool = keys.by_kid.get(kid, ())
        if not pool:
            raise InvalidClient("no_matching_key", f"unknown kid {kid[:64]!r}")
    else:
        x5t, x5t_s256 = header.get("x5t"), header.get("x5t#S256")
        pool = keys.keys
        if x5t is not None or x5t_s256 is not None:
            pool = _by_certificate(pool, x5t, x5t_s256)
    candidates = tuple(key for key in pool if alg in key.algorithms)
    if not candidates:
        raise InvalidClient("no_matching_key", f"no key of the client verifies {alg}")
    return candidates[:MAX_KEY_TRIES]


def key_algorithms(jwk_dict: Mapping[str, Any]) -> frozenset[str]:
    """The algorithms a public JWK may verify: from its kty/crv, narrowed by its own ``alg``."""
    kty = jwk_dict.get("kty")
    if kty == "RSA":
        family = _RSA_ALGORITHMS
    elif kty == "EC":
        family = _EC_ALGORITHMS.get(jwk_dict.get("crv"), frozenset())  # type: ignore[arg-type]
    elif kty == "OKP":
        family = _OKP_ALGORITHMS.get(jwk_dict.get("crv"), frozenset())  # type: ignore[arg-type]
    else:
        family = frozenset()
    declared = jwk_dict.get("alg")
    if declared is None:
        return family
    if declared in EDDSA_NAMES:
        return family & EDDSA_NAMES
    return family & {declared}


def unpadded(value: str) -> str:
    """A base64url value without its '=' padding, the form thumbprints are compared in."""
    return value.rstrip("=")


def _by_certificate(
    pool: tuple[VerificationKey, ...], x5t: str | None, x5t_s256: str | None
) -> tuple[VerificationKey, ...]:
    # MSAL pads these; JWKs usually do not.
    wanted = (unpadded(x5t) if x5t is not None else None,
              unpadded(x5t_s256) if x5t_s256 is not None else None)
    exact: list[VerificationKey] = []
    undeclared: list[VerificationKey] = []
    for key in pool:
        pairs = ((key.x5t, wanted[0]), (key.x5t_s256, wanted[1]))
        if any(held is not None and shown is not None and held != shown for held, shown in pairs):
            continue
        if any(held is not None and held == shown for held, shown in pairs):
            exact.append(key)
        else:
            undeclared.append(key)
    return tuple(exact or undeclared)


def _prepare_key(index: int, jwk_dict: Mapping[str, Any]) -> VerificationKey:
    where = f"key {index}"
    if not isinstance(jwk_dict, Mapping):
        raise ValueError(f"{where}: a JWK must be a JSON object")
    kty = jwk_dict.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        raise ValueError(f"{where}: unsupported kty {str(kty)[:20]!r}")
    if _PRIVATE_MEMBERS & jwk_dict.keys():
        raise ValueError(f"{where}: a verification key must not carry private members")
    if jwk_dict.get("use", "sig") != "sig":
        raise ValueError(f"{where}: use must be 'sig'")
    key_ops = jwk_dict.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError(f"{where}: key_ops must include 'verify'")
    if kty == "RSA":
        # Checked before import: joserfc only warns about short RSA keys.
        bits = _rsa_modulus_bits(jwk_dict.get("n"))
        if bits < MIN_RSA_BITS:
            raise ValueError(f"{where}: RSA modulus of {bits} bits, at least {MIN_RSA_BITS} needed")
        if bits > MAX_RSA_BITS:
            raise ValueError(f"{where}: RSA modulus of {bits} bits, at most {MAX_RSA_BITS}")
    kid = jwk_dict.get("kid")
    x5t = jwk_dict.get("x5t")
    x5t_s256 = jwk_dict.get("x5t#S256")
    for name, value in (("kid", kid), ("x5t", x5t), ("x5t#S256", x5t_s256)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {name} must be a string")
    try:
        key = jwk.import_key(dict(jwk_dict), kty)
        thumbprint = key.thumbprint()
    except Exception as exc:  # joserfc and cryptography raise many types for bad members
        raise ValueError(f"{where}: cannot import ({type(exc).__name__})") from exc
    return VerificationKey(
        key=key,
        kid=kid,
        algorithms=key_algorithms(jwk_dict),
        thumbprint=thumbprint,
        x5t=unpadded(x5t) if x5t is not None else None,
        x5t_s256=unpadded(x5t_s256) if x5t_s256 is not None else None,
    )


def _rsa_modulus_bits(n: object) -> int:
    if not isinstance(n, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw, "big").bit_length()
