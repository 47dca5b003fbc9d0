"""SPIFFE trust bundles: the jwt-svid keys of a bundle, and the refresh hint of a fetched one."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.adapters.jwks_fetch import ParsedJwks, load_jwk_set, usable_keys
from gateway.core.jwk_rules import is_sequence, key_refusal
from gateway.core.keyset import NO_USABLE_KEY, KeySetImport, import_jwks

JWT_SVID = "jwt-svid"
X509_SVID = "x509-svid"
NO_JWT_SVID_KEY = f"holds no usable public signing key with use {JWT_SVID!r}"
# Far beyond any max_ttl, and a float for any integer: the hint is clamped afterwards.
_LONGEST_HINT = 1e9

Problem = tuple[str, str]


def select_jwt_svid_keys(document: object, path: str) -> KeySetImport:
    """Import the keys a bundle gives for JWT-SVIDs; never raises.

    The SPIFFE bundle format marks each key's `use`: only ``jwt-svid`` keys verify JWT-SVIDs.
    ``x509-svid`` keys (X.509 anchors) are dropped silently, keys of any other use are
    problems. Kept keys lose their `use` member, which the JWK rules would refuse as not
    "sig"; keys without `alg` may then verify every algorithm of their type. Secret key
    material counts wherever it is, as in any JWK Set. Problems are at ``<path>.keys[<i>]``
    with `i` the key's place in the bundle.
    """
    if not isinstance(document, Mapping) or not is_sequence(document.get("keys")):
        return import_jwks(document, path)  # which reports that it is no JWK Set
    kept: list[dict[str, Any]] = []
    places: list[int] = []
    dropped: list[Problem] = []
    secret: list[Problem] = []
    for index, key in enumerate(document["keys"]):
        use = key.get("use") if isinstance(key, Mapping) else None
        if use == JWT_SVID:
            kept.append({name: value for name, value in key.items() if name != "use"})
            places.append(index)
            continue
        where, refusal = f"{path}.keys[{index}]", key_refusal(key)
        if refusal is not None and refusal.secret:
            secret.append((where, refusal.message))
        elif use != X509_SVID:
            shown = repr(use[:20]) if isinstance(use, str) else _absent_or_odd(use)
            dropped.append((where, f"'use' is {shown}, not {JWT_SVID!r} or {X509_SVID!r}"))
    imported = import_jwks({"keys": kept}, path)
    problems = [_at_bundle_place(problem, path, places) for problem in imported.problems]
    return KeySetImport(
        imported.keyset, imported.keys,
        tuple(sorted([*dropped, *secret, *problems], key=_order)),
        (*secret, *(_at_bundle_place(problem, path, places) for problem in imported.secret)))


def _absent_or_odd(use: object) -> str:
    return "missing" if use is None else "not a string"


def _at_bundle_place(problem: Problem, path: str, places: Sequence[int]) -> Problem:
    # import_jwks counted the kept keys only; the operator reads the bundle.
    where, message = problem
    if where == path and message == NO_USABLE_KEY:
        return where, NO_JWT_SVID_KEY
    prefix = f"{path}.keys["
    if not where.startswith(prefix):
        return problem
    index, _, rest = where[len(prefix):].partition("]")
    return f"{prefix}{places[int(index)]}]{rest}", message


def _order(problem: Problem) -> tuple[int, int]:
    # Key problems in bundle order, the set's own problem last.
    where, _ = problem
    index = where.rpartition("[")[2].rstrip("]")
    return (0, int(index)) if index.isdigit() else (1, 0)


def parse_bundle(body: bytes) -> ParsedJwks:
    """The jwt-svid keys of a fetched bundle, living as long as its spiffe_refresh_hint says.

    A hint that is not a positive number of seconds is reported and ignored (the cache
    headers then apply). Raises JwksFetchError bad_document, secret_key_material or
    no_usable_key (no jwt-svid key the gateway can use).
    """
    document = load_jwk_set(body)
    parsed = usable_keys(select_jwt_svid_keys(document, "bundle"))
    hint = document.get("spiffe_refresh_hint")
    if hint is None:
        return parsed
    if isinstance(hint, bool) or not isinstance(hint, int | float) or not 0 < hint < math.inf:
        problem = "bundle.spiffe_refresh_hint: not a positive number of seconds, ignored"
        return dataclasses.replace(parsed, problems=(*parsed.problems, problem))
    return dataclasses.replace(parsed, lifetime=float(min(hint, _LONGEST_HINT)))
