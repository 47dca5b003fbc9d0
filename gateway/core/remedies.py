"""What would accept a refused assertion, and what that gives up: the remedies `explain` prints.

Each function takes one failed check and returns a Fix: a configuration change with its
cost, or, when no setting accepts the assertion, what the client must change instead. The
texts name configuration keys; the values that go into them come from the configuration
(``ConfigFacts``) or, quoted, from the token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.core.assertion import ASSERTION_TYP
from gateway.core.keyset import JWS_ALGORITHMS
from gateway.core.reasons import Reason

MAX_QUOTED_CHARS = 160
_AUDIENCE_COST = ("the endpoint URL is accepted as aud too, the form audience-injection "
                  "attacks exploit; RFC 7523bis advises the issuer alone (`check` warns: "
                  "audience-compat). Better: have the client send aud = {issuer}")


@dataclass(frozen=True, slots=True)
class Remedy:
    """A configuration change that would accept the assertion, and what it weakens."""

    change: str
    weakens: str


@dataclass(frozen=True, slots=True)
class Fix:
    """For one failed check: a remedy, or the advice when no setting accepts it."""

    remedy: Remedy | None = None
    advice: str | None = None


NO_FIX = Fix()


@dataclass(frozen=True, slots=True)
class ConfigFacts:
    """What remedies name, read from the configuration by the caller (the core reads none)."""

    issuer: str
    public_base: str  # public_url, or the issuer's origin, without a trailing slash
    max_clock_skew: float  # the largest clock_skew a configuration may set
    max_lifetime_limit: float  # the largest max_lifetime a configuration may set
    lint_max_lifetime: float  # above this, `check` warns about max_lifetime
    disabled: frozenset[str] = frozenset()  # configured clients with enabled: false


def quoted(value: object) -> str:
    """A token's value as JSON (control characters escaped), cut to a readable length."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "..."


def seconds(value: float) -> str:
    """A duration in the configuration's syntax, rounded up to whole seconds."""
    return f"{math.ceil(value)}s"


def algorithm_fix(alg: object, allowed: frozenset[str], where: str) -> Fix:
    if type(alg) is not str or alg not in JWS_ALGORITHMS:
        return Fix(advice=f"alg {quoted(alg)} is never accepted (no shared-secret or unsigned "
                          "algorithm can be configured): the client must sign with a "
                          "public-key algorithm such as ES256 or PS256")
    listed = ", ".join([*sorted(allowed), alg])
    cost = ("RSA PKCS#1 v1.5 signatures are accepted (`check` warns: rsa-pkcs1); prefer a "
            "client that signs PS256" if alg.startswith("RS")
            else "little: another public-key algorithm, verified only with the keys "
                 "registered for it")
    return Fix(Remedy(f"{where}.algorithms: [{listed}]", cost))


def typ_fix(reason: Reason, where: str) -> Fix:
    if reason is Reason.MISSING_TYP:
        return Fix(Remedy(f"{where}.require_typ: false",
                          "explicit typing: a JWT the client signs for another purpose (an "
                          "ID token, a request object) could then pass as its assertion"))
    return Fix(advice=f"typ must be absent, JWT or {ASSERTION_TYP}")


def key_fix(reason: Reason, kid: str | None, source_kind: str, where: str) -> Fix:
    """No registered key fits (no_matching_key), or none verified (bad_signature)."""
    named = f" with kid {quoted(kid)}" if kid is not None else ""
    cost = ("nothing, if the key truly is the client's: confirm it with the client's owner "
            "before registering it")
    if reason is Reason.BAD_SIGNATURE:
        cost += "; a signature that fails with the registered key may also be a forged assertion"
    if source_kind == "jwks_uri":
        return Fix(advice=f"the client's jwks_uri must publish its current public key{named} "
                          f"({cost})")
    return Fix(Remedy(f"{where}.{source_kind}: add the client's current public key{named}", cost))


def fetch_fix(error: str | None, fetch_path: str) -> Fix:
    """The key source has no keys: what its last fetch said, and the switch that may help."""
    if error == "forbidden_address":
        return Fix(Remedy(f"{fetch_path}.allow_private_networks: true",
                          "the gateway may then fetch from loopback and private addresses, a "
                          "server-side request forgery risk (`check` warns: "
                          "jwks-private-networks)"))
    if error == "http_refused":
        return Fix(Remedy("jwks_fetch.allow_http: true",
                          "keys fetched over plain http can be swapped by anyone on the path "
                          "(`check` warns: jwks-allow-http)"))
    said = f"the last fetch failed: {error}" if error else "no keys were fetched in time"
    return Fix(advice=f"{said}; fix the key host (`pkjwt-gateway keys` shows every source)")


def audience_fix(aud: object, facts: ConfigFacts, endpoint: str, where: str) -> Fix:
    if type(aud) is list:
        if len(aud) != 1:
            return Fix(advice=f"one audience only ({len(aud)} given): an assertion valid at "
                              "several servers can be replayed here by any of them")
        aud = aud[0]
    if type(aud) is not str:
        return Fix(advice=f"aud must be the issuer {facts.issuer}")
    cost = _AUDIENCE_COST.format(issuer=facts.issuer)
    if aud == facts.public_base + endpoint:
        return Fix(Remedy(f"{where}.audience: compat", cost))
    parts = urlsplit(aud)
    if parts.path == endpoint and parts.scheme in ("http", "https") and parts.netloc:
        origin = f"{parts.scheme}://{parts.netloc}"
        return Fix(Remedy(f"public_url: {origin} and {where}.audience: compat",
                          f"{cost}; public_url must be where clients really reach the gateway"))
    return Fix(advice=f"aud must be the issuer {facts.issuer}, not {quoted(aud)}")


def time_fix(reason: Reason, claims: Mapping[str, Any], skew: float, now: float,
             facts: ConfigFacts, where: str) -> Fix:
    """exp, iat or nbf refused: a wider clock_skew when that is all it takes."""
    if reason is Reason.EXPIRED:
        late = now - claims["exp"]
        story = f"the assertion expired {seconds(late)} ago"
        advice = f"{story}: the client must mint a fresh assertion for every request"
    elif reason in (Reason.ISSUED_IN_FUTURE, Reason.NOT_YET_VALID):
        name = "iat" if reason is Reason.ISSUED_IN_FUTURE else "nbf"
        late = claims[name] - now
        story = f"{name} is {seconds(late)} ahead of this clock"
        advice = f"{story}: the client's clock must be set right (NTP)"
    else:
        return Fix(advice="exp is required; exp, iat and nbf must be NumericDates with "
                          "iat and nbf before exp")
    if late > facts.max_clock_skew:
        return Fix(advice=advice)
    return Fix(Remedy(f"{where}.clock_skew: {seconds(late + 1)}",
                      f"every time check of this client widens by that much (now {skew:g}s); "
                      f"{advice.partition(': ')[2]} instead"))


def lifetime_fix(lifetime: float, facts: ConfigFacts, where: str) -> Fix:
    if lifetime > facts.max_lifetime_limit:
        return Fix(advice=f"a lifetime of {seconds(lifetime)} is over the longest any setting "
                          f"allows ({seconds(facts.max_lifetime_limit)}): the client must "
                          "mint shorter-lived assertions")
    cost = f"a captured assertion of this client stays usable for up to {seconds(lifetime)}"
    if lifetime > facts.lint_max_lifetime:
        cost += " (`check` warns: long-max-lifetime)"
    return Fix(Remedy(f"{where}.max_lifetime: {seconds(lifetime)}", cost))


def claims_fix(reason: Reason, client_id: str) -> Fix:
    """iss, sub and jti: nothing in the configuration changes them."""
    if reason in (Reason.BAD_ISSUER, Reason.BAD_SUBJECT):
        return Fix(advice=f"iss and sub must both be the client id {quoted(client_id)} "
                          "(RFC 7523 section 3)")
    if reason in (Reason.MISSING_JTI, Reason.BAD_JTI):
        return Fix(advice="a unique jti of 1 to 256 characters is required in every assertion")
    if reason is Reason.CERTIFICATE_KEY_MISMATCH or reason is Reason.BAD_HEADER:
        return Fix(advice="the x5c header's first certificate must hold the key that signed: "
                          "the client must send its own certificate, or no x5c")
    return NO_FIX


def resolution_fix(reason: Reason, claims: Mapping[str, Any], client_id: str | None,
                   facts: ConfigFacts) -> Fix:
    """No client (or no trust) was found for the assertion."""
    sub, iss = claims.get("sub"), claims.get("iss")
    claimed = client_id if client_id is not None else sub
    if reason is Reason.UNKNOWN_CLIENT and type(claimed) is str:
        if claimed in facts.disabled:
            return Fix(Remedy(f"clients.{claimed}.enabled: true",
                              "the client is back in service, with every credential it has"))
        return Fix(Remedy(f"clients.{claimed}: its public keys (jwks, jwks_file or jwks_uri) "
                          "and backend_auth",
                          "a new client: register only keys whose owner you have confirmed"))
    if reason is Reason.CLIENT_ID_MISMATCH:
        return Fix(advice="the client_id parameter must equal the assertion's sub")
    if reason is Reason.UNKNOWN_ISSUER and type(iss) is str and iss != sub:
        return Fix(Remedy(f"federation.issuers.NAME: issuer {quoted(iss)} with its keys, and a "
                          "trust in the client's federated list",
                          "every token that issuer mints for a trusted subject becomes that "
                          "client: declare only a platform whose tokens you rely on"))
    if reason is Reason.NO_TRUST:
        return Fix(Remedy(f"clients.ID.federated: a trust in this issuer with subject "
                          f"{quoted(sub)} (or name the client: explain --client-id ID)",
                          "every token of the issuer with this subject becomes that client"))
    if reason is Reason.AMBIGUOUS_IDENTITY:
        return Fix(advice="several clients trust this subject: the request must name one "
                          "with client_id (explain --client-id ID)")
    if reason is Reason.UNKNOWN_ISSUER:
        return Fix(advice="the client accepts platform tokens only, and none of a declared "
                          "issuer came: iss must name a declared issuer")
    return Fix(advice="sub (or the client_id parameter) must name a configured client")


def trust_fix(reason: Reason, *, where: str, client_id: str, subject: str, aud: object,
              unmet: tuple[str, str | None] | None, lifetime: float, pattern: bool) -> Fix:
    """One enforced federated trust refused the token: what would make it match."""
    if reason is Reason.SUBJECT_MISMATCH:
        change = ("a subject_pattern that matches " if pattern else "subject: ") + quoted(subject)
        return Fix(Remedy(f"{where}: {change}",
                          f"every token of the issuer with this subject becomes {client_id}: "
                          "set it only if this workload is meant to be that client"))
    if reason is Reason.BAD_AUDIENCE:
        if type(aud) is list and len(aud) == 1:
            aud = aud[0]
        if type(aud) is not str:
            return Fix(advice="one audience only, as a string or a one-element array")
        return Fix(Remedy(f"{where}: audience: {quoted(aud)}",
                          "tokens the platform mints for that audience become usable here: "
                          "choose an audience only this gateway receives (e.g. the issuer)"))
    if reason is Reason.CLAIM_MISMATCH and unmet is not None:
        key, value = unmet
        if value is None:
            return Fix(Remedy(f"{where}: drop claims.{key} (the token has no such claim)",
                              f"the trust no longer pins {key}"))
        return Fix(Remedy(f"{where}: claims.{key}: add {quoted(value)}",
                          f"tokens with {key} = {quoted(value)} match this trust too"))
    if reason is Reason.LIFETIME_TOO_LONG:
        return Fix(Remedy(f"{where}: max_lifetime: {seconds(lifetime)}",
                          "a leaked token of this trust stays usable that long"))
    if reason is Reason.MISSING_JTI:
        return Fix(Remedy(f"{where}: replay: reuse",
                          "the same token is accepted again until it expires (`check` warns: "
                          "trust-reuse)"))
    return claims_fix(reason, client_id)
