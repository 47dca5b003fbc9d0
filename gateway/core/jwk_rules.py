"""What a JWK must be to verify client assertions: the structural rules and their constants."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.key_certificates import NOT_A_CHAIN, is_certificate_chain

MIN_RSA_BITS = 2048
# Verification cost grows with the modulus: a huge key set by a hostile JWKS host (or a
# careless config) must not turn every token into a CPU sink.
MAX_RSA_BITS = 8192
# Members that only a private or symmetric key carries (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Coordinate length in bytes per curve: a wrong length means a corrupt or mislabelled key.
EC_CURVES = {"P-256": 32, "P-384": 48, "P-521": 66}
OKP_CURVES = {"Ed25519": 32, "Ed448": 57}
# Members read as text: a number or a list there is a broken key, not a value to coerce.
_STRING_MEMBERS = ("kid", "alg", "x5t", "x5t#S256")

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class KeyRefusal:
    """Why a JWK cannot verify signatures. The message names members, never their values."""

    message: str
    # The key is secret material (a private member, or a symmetric key): whoever published
    # it has leaked a secret, which is worse than publishing an unusable key.
    secret: bool = False


def key_refusal(key: object) -> KeyRefusal | None:
    """Why `key` cannot serve as a public signature-verification key, or None when it can.

    Structure only: a key passing here may still fail to import (a point off its curve).
    """
    if not isinstance(key, Mapping):
        return KeyRefusal("must be a mapping (a JWK)")
    secret = _secret_material(key)
    if secret is not None:
        return KeyRefusal(secret, secret=True)
    kty = key.get("kty")
    if not isinstance(kty, str):
        return KeyRefusal("has no 'kty'")
    problem = _usage_problem(key) or _type_problem(key, kty)
    return None if problem is None else KeyRefusal(problem)


def _secret_material(key: Mapping[str, Any]) -> str | None:
    if key.get("kty") == "oct":
        return "is a symmetric ('oct') key: only public asymmetric keys verify client assertions"
    private = [name for name in PRIVATE_MEMBERS if name in key]
    if private:
        return f"holds private key material ({', '.join(private)}): publish the public key only"
    return None


def _type_problem(key: Mapping[str, Any], kty: str) -> str | None:
    if kty == "RSA":
        return _rsa_problem(key)
    if kty == "EC":
        return _curve_problem(key, EC_CURVES, ("x", "y"))
    if kty == "OKP":
        return _curve_problem(key, OKP_CURVES, ("x",))
    return f"skipped: unsupported kty {kty[:20]!r}"


def is_sequence(value: object) -> bool:
    """A list-like value that is not text (JSON arrays, YAML sequences)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _usage_problem(key: Mapping[str, Any]) -> str | None:
    for name in _STRING_MEMBERS:
        if name in key and not isinstance(key[name], str):
            return f"'{name}' must be a string"
    if "use" in key and key["use"] != "sig":
        return "has 'use' other than 'sig': it is not a signing key"
    if "key_ops" in key:
        ops = key["key_ops"]
        if not is_sequence(ops) or not all(isinstance(op, str) for op in ops):
            return "'key_ops' must be a list of strings"
        if "verify" not in ops:
            return "has 'key_ops' without 'verify': it is not a verification key"
    if "x5c" in key and not is_certificate_chain(key["x5c"]):
        return NOT_A_CHAIN
    return None


def _rsa_problem(key: Mapping[str, Any]) -> str | None:
    n = decode_base64url(key.get("n"))
    e = decode_base64url(key.get("e"))
    if n is None or e is None:
        name = "n" if n is None else "e"
        return f"RSA key's '{name}' is missing or not base64url"
    # Checked here, not left to the import: joserfc only warns about short RSA keys.
    bits = int.from_bytes(n, "big").bit_length()
    if bits < MIN_RSA_BITS:
        return f"RSA modulus of {bits} bits is too short (at least {MIN_RSA_BITS})"
    if bits > MAX_RSA_BITS:
        return f"RSA modulus of {bits} bits is too long (at most {MAX_RSA_BITS})"
    exponent = int.from_bytes(e, "big")
    if exponent < 3 or exponent % 2 == 0:
        return "RSA public exponent is not valid"
    return None


def _curve_problem(
    key: Mapping[str, Any], curves: Mapping[str, int], members: tuple[str, ...]
) -> str | None:
    crv = key.get("crv")
    if not isinstance(crv, str) or crv not in curves:
        shown = repr(crv[:20]) if isinstance(crv, str) else "missing"
        return f"'crv' {shown} is not a signing curve (one of {', '.join(curves)})"
    for name in members:
        value = decode_base64url(key.get(name))
        if value is None:
            return f"{key['kty']} key's '{name}' is missing or not base64url"
        if len(value) != curves[crv]:
            return f"'{name}' has {len(value)} bytes, {crv} needs {curves[crv]}"
    return None


def decode_base64url(value: object) -> bytes | None:
    """Bytes of an unpadded base64url string (RFC 7515 §2), or None if it is not one."""
    if not isinstance(value, str) or not value or _BASE64URL.fullmatch(value) is None:
        return None
    if len(value) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
