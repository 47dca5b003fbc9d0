"""Verification keys: a JWK Set checked and imported once, what each key may verify, which fit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwa, jwk
from joserfc.jwa import JWSAlgModel

from gateway.core.errors import KeyMiss
from gateway.core.jwk_rules import MIN_RSA_BITS as MIN_RSA_BITS  # part of this module's API
from gateway.core.jwk_rules import KeyRefusal, is_sequence, key_refusal
from gateway.core.key_certificates import KeyCertificate, read_key_certificate
from gateway.core.reasons import Reason

MAX_KEY_TRIES = 4  # keys tried when the header names none: bounds the CPU one token can cost
NOT_A_JWK_SET = "must be a JWK Set: a mapping with a 'keys' list"
NO_USABLE_KEY = "holds no usable public signing key"

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

# verifier(signing_input, signature) -> whether the signature is valid; never raises.
Verifier = Callable[[bytes, bytes], bool]


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: Any                    # joserfc key object, imported once
    kid: str | None
    algorithms: frozenset[str]  # algs this key may verify (from its kty/crv and its own `alg`)
    # One verifier per alg in `algorithms`, built at import (see _verifiers).
    verifiers: Mapping[str, Verifier] = field(compare=False, repr=False)
    thumbprint: str             # RFC 7638 SHA-256 thumbprint, base64url
    x5t: str | None             # from JWK x5t (unpadded base64url form for comparison)
    x5t_s256: str | None        # from JWK x5t#S256 (unpadded)
    # The JWK's x5c leaf, read at import (it holds this very key), and its notAfter.
    certificate: KeyCertificate | None = field(default=None, compare=False, repr=False)
    not_after: float | None = None


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...]
    by_kid: Mapping[str, tuple[VerificationKey, ...]]
    # The soonest notAfter of the keys' certificates; None when no key carries x5c (then
    # nothing about certificates costs anything on the request path).
    certificate_not_after: float | None = None


@dataclass(frozen=True, slots=True)
class KeySetImport:
    """A JWK Set checked and imported once: its usable keys and every problem at its path."""

    keyset: KeySet
    keys: tuple[dict[str, Any], ...]      # the imported JWKs as JSON-clean copies
    problems: tuple[tuple[str, str], ...]  # (dotted path, message); never key material
    # The problems that are secret key material (a private member, an 'oct' key): a set
    # publishing one is compromised or broken, not merely partly unusable.
    secret: tuple[tuple[str, str], ...] = ()


def import_jwks(document: object, path: str) -> KeySetImport:
    """Check every key of a JWK Set and import the usable ones once; never raises.

    `path` names the set in problems (``clients.acme.jwks``); a key's problem is at
    ``<path>.keys[<i>]``. A value that is not a JWK Set, or a set without one usable
    key, is a problem at `path` itself.
    """
    if not isinstance(document, Mapping) or not is_sequence(document.get("keys")):
        return KeySetImport(_index(()), (), ((path, NOT_A_JWK_SET),))
    imported, kept, refused = _import_keys(document["keys"])
    problems = [(f"{path}.keys[{index}]", refusal.message) for index, refusal in refused]
    secret = tuple(p for p, (_, refusal) in zip(problems, refused, strict=True) if refusal.secret)
    if not imported:
        problems.append((path, NO_USABLE_KEY))
    return KeySetImport(_index(imported), tuple(kept), tuple(problems), secret)


def prepare_keyset(jwks_keys: Iterable[Mapping[str, Any]]) -> KeySet:
    """Import keys that must all be usable (the program's own, or a test's); may be empty.

    The rules are import_jwks's. Raises ValueError naming the first unusable key's
    position (``key 1: ...``); the message never contains key material.
    """
    imported, _, refused = _import_keys(list(jwks_keys))
    if refused:
        index, refusal = refused[0]
        raise ValueError(f"key {index}: {refusal.message}")
    return _index(imported)


def _import_keys(
    jwk_dicts: Sequence[object],
) -> tuple[list[VerificationKey], list[dict[str, Any]], list[tuple[int, KeyRefusal]]]:
    imported: list[VerificationKey] = []
    kept: list[dict[str, Any]] = []
    refused: list[tuple[int, KeyRefusal]] = []
    for index, jwk_dict in enumerate(jwk_dicts):
        outcome = _import_key(jwk_dict)
        if isinstance(outcome, KeyRefusal):
            refused.append((index, outcome))
        else:
            kept.append(outcome[0])
            imported.append(outcome[1])
    return imported, kept, refused


def _index(keys: Iterable[VerificationKey]) -> KeySet:
    keys = tuple(keys)
    by_kid: dict[str, tuple[VerificationKey, ...]] = {}
    for key in keys:
        if key.kid is not None:
            by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
    expiries = [key.not_after for key in keys if key.not_after is not None]
    return KeySet(keys=keys, by_kid=MappingProxyType(by_kid),
                  certificate_not_after=min(expiries, default=None))


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
            raise KeyMiss(Reason.NO_MATCHING_KEY, f"unknown kid {kid[:64]!r}")
    else:
        x5t, x5t_s256 = header.get("x5t"), header.get("x5t#S256")
        pool = keys.keys
        if x5t is not None or x5t_s256 is not None:
            pool = _by_certificate(pool, x5t, x5t_s256)
    candidates = tuple(key for key in pool if alg in key.algorithms)
    if not candidates:
        raise KeyMiss(Reason.NO_MATCHING_KEY, f"no key of the client verifies {alg}")
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


def _import_key(jwk_dict: object) -> tuple[dict[str, Any], VerificationKey] | KeyRefusal:
    refusal = key_refusal(jwk_dict)
    if refusal is not None:
        return refusal
    try:
        # A JSON-clean copy: later changes to the caller's data never reach the key.
        clean: dict[str, Any] = json.loads(json.dumps(jwk_dict))
    except (TypeError, ValueError, RecursionError):
        return KeyRefusal("holds values that are not JSON")
    algorithms = key_algorithms(clean)
    try:
        key = jwk.import_key(dict(clean), clean["kty"])
        thumbprint = key.thumbprint()
        public_key = key.get_op_key("verify")
        verifiers = _verifiers(public_key, algorithms)
    except Exception as exc:  # joserfc and cryptography raise many types for bad members
        return KeyRefusal(f"cannot import ({type(exc).__name__})")
    certificate: KeyCertificate | None = None
    if "x5c" in clean:
        leaf = read_key_certificate(clean["x5c"], public_key)
        if isinstance(leaf, str):
            return KeyRefusal(leaf)
        certificate = leaf
    x5t, x5t_s256 = clean.get("x5t"), clean.get("x5t#S256")
    return clean, VerificationKey(
        key=key,
        kid=clean.get("kid"),
        algorithms=algorithms,
        verifiers=verifiers,
        thumbprint=thumbprint,
        x5t=unpadded(x5t) if x5t is not None else None,
        x5t_s256=unpadded(x5t_s256) if x5t_s256 is not None else None,
        certificate=certificate,
        not_after=certificate.not_after if certificate is not None else None,
    )


# What joserfc's models (RFC 7518 §3.3-3.5, RFC 9864) do per call, prepared once per key:
# its RS/PS/ES models build the padding or ECDSA object, hex-decode r and s and look the
# key up again on every verification. Same algorithms, same parameters, same verdicts.
_SHA = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


def _verifiers(public_key: Any, algorithms: frozenset[str]) -> Mapping[str, Verifier]:
    """One verifier per algorithm for a public key whose type fits every one of them."""
    return MappingProxyType({alg: _verifier(public_key, alg) for alg in sorted(algorithms)})


def _verifier(public_key: Any, alg: str) -> Verifier:
    if alg in EDDSA_NAMES:
        return _checked(public_key.verify)
    sha = _SHA[alg[2:]]
    if alg.startswith("RS"):
        return _checked(public_key.verify, padding.PKCS1v15(), sha)
    if alg.startswith("PS"):
        # RFC 7518 §3.5: MGF1 with the same hash, a salt as long as the hash output.
        pss = padding.PSS(mgf=padding.MGF1(sha), salt_length=sha.digest_size)
        return _checked(public_key.verify, pss, sha)
    return _ecdsa_verifier(public_key, ec.ECDSA(sha))


def _checked(verify: Callable[..., object], *parameters: object) -> Verifier:
    def verifier(signing_input: bytes, signature: bytes) -> bool:
        try:
            verify(signature, signing_input, *parameters)
        except Exception:  # InvalidSignature, or a signature cryptography cannot parse
            return False
        return True

    return verifier


def _ecdsa_verifier(public_key: Any, ecdsa: ec.ECDSA) -> Verifier:
    # RFC 7518 §3.4: the JWS signature is r || s, each exactly the curve's byte length;
    # cryptography takes them DER-encoded.
    size = (public_key.curve.key_size + 7) // 8
    verify = _checked(public_key.verify, ecdsa)

    def verifier(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != 2 * size:
            return False
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                   int.from_bytes(signature[size:], "big"))
        return verify(signing_input, der)

    return verifier
