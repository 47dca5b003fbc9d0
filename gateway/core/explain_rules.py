"""The checks `explain` runs one by one: the request path's own check functions, each on its
own, so that one failure does not hide the next; every failure with its remedy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.assertion import (
    AssertionPolicy,
    ParsedAssertion,
    check_algorithm,
    check_audience,
    check_jti,
    check_lifetime,
    check_times,
    check_typ,
    numeric_date,
    verify_signature,
)
from gateway.core.certificates import check_certificate_binding
from gateway.core.claim_rules import claim_text, first_unmet, resolve_claim
from gateway.core.credentials import RegisteredKeys
from gateway.core.errors import InvalidClient
from gateway.core.federation import IssuerTrusts, Trust, check_federated_typ
from gateway.core.keyset import JWS_ALGORITHMS, VerificationKey, select_keys
from gateway.core.keysource import KeySource
from gateway.core.reasons import Reason
from gateway.core.remedies import (
    NO_FIX,
    ConfigFacts,
    Fix,
    Remedy,
    algorithm_fix,
    audience_fix,
    claims_fix,
    fetch_fix,
    key_fix,
    lifetime_fix,
    quoted,
    time_fix,
    trust_fix,
    typ_fix,
)

PASS, FAIL, SKIPPED, NOT_CHECKED, SHADOW = "pass", "fail", "skipped", "not_checked", "shadow"


@dataclass(frozen=True, slots=True)
class Check:
    """One rule's outcome (pass, fail, skipped, not_checked, shadow) on one assertion."""

    rule: str
    outcome: str
    detail: str
    reason: Reason | None = None  # the refusal's reason word, when it failed
    fix: Fix = NO_FIX


def _judge(rule: str, check: Callable[[], object], passed: str,
           fix: Callable[[InvalidClient], Fix]) -> Check:
    try:
        check()
    except InvalidClient as refusal:
        return Check(rule, FAIL, refusal.detail or str(refusal.reason), refusal.reason,
                     fix(refusal))
    return Check(rule, PASS, passed)


def registered_checks(parsed: ParsedAssertion, credential: RegisteredKeys, endpoint: str,
                      facts: ConfigFacts, now: float) -> list[Check]:
    """The checks of verify_assertion, in its order, under the client's endpoint policy."""
    policy = credential.policies[endpoint]
    where, kid, kind = f"clients.{policy.client_id}", parsed.kid, credential.source.kind
    key_checks, key = _key_checks(parsed, parsed.header["alg"], credential.source,
                                  lambda reason: key_fix(reason, kid, kind, where), "jwks_fetch")
    checks = [*header_checks(parsed, policy), *key_checks]
    if "x5c" in parsed.header:
        checks.append(_certificate_check(parsed.header["x5c"], key, policy.client_id))
    return checks + claim_checks(parsed, policy, endpoint, facts, now)


def header_checks(parsed: ParsedAssertion, policy: AssertionPolicy) -> list[Check]:
    """alg and typ under a client's policy."""
    where = f"clients.{policy.client_id}"
    alg, typ = parsed.header["alg"], parsed.header.get("typ")
    return [
        _judge("alg", lambda: check_algorithm(alg, policy.algorithms), f"{alg} is allowed",
               lambda _: algorithm_fix(alg, policy.algorithms, where)),
        _judge("typ", lambda: check_typ(typ, policy.require_typ),
               "absent: accepted" if typ is None else f"{quoted(typ)} is accepted",
               lambda refusal: typ_fix(refusal.reason, where)),
    ]


def claim_checks(parsed: ParsedAssertion, policy: AssertionPolicy, endpoint: str,
                 facts: ConfigFacts, now: float) -> list[Check]:
    """iss, sub, aud, the times, the lifetime and jti under a client's policy."""
    client_id, where, claims = policy.client_id, f"clients.{policy.client_id}", parsed.claims
    checks = []
    for name, reason in (("iss", Reason.BAD_ISSUER), ("sub", Reason.BAD_SUBJECT)):
        value = claims.get(name)
        checks.append(Check(name, PASS, "the client id") if value == client_id else
                      Check(name, FAIL, f"{quoted(value)} is not the client id", reason,
                            claims_fix(reason, client_id)))
    aud = claims.get("aud")
    checks.append(_judge("aud", lambda: check_audience(aud, policy.audiences),
                         f"{quoted(aud)} is accepted",
                         lambda _: audience_fix(aud, facts, endpoint, where)))
    checks += _time_checks(claims, policy.clock_skew, now, facts, where)
    checks.append(_lifetime_check(claims, policy.max_lifetime, now, facts, where))
    checks.append(_judge("jti", lambda: check_jti(claims), "present",
                         lambda refusal: claims_fix(refusal.reason, client_id)))
    return checks


def _certificate_check(x5c: list[str], key: VerificationKey | None, client_id: str) -> Check:
    if key is None:
        return Check("x5c", SKIPPED, "no key verified the signature")
    return _judge("x5c", lambda: check_certificate_binding(x5c, key.key),
                  "the certificate holds the key that signed",
                  lambda refusal: claims_fix(refusal.reason, client_id))


def federated_checks(parsed: ParsedAssertion, trusts: IssuerTrusts, facts: ConfigFacts,
                     now: float) -> list[Check]:
    """The issuer's checks (header, signature, times), then every trust's verdict."""
    issuer, where = trusts.issuer, f"clients.{trusts.client_id}"
    issuer_where = f"federation.issuers.{issuer.name}"
    header, claims = parsed.header, parsed.claims
    alg, typ = header["alg"], header.get("typ")
    checks: list[Check] = []
    if "x5c" in header:
        checks.append(Check("x5c", FAIL, "x5c on a platform token", Reason.FORBIDDEN_HEADER,
                            Fix(advice="the issuer's published keys are its only keys: a "
                                       "platform token must not carry x5c")))
    checks.append(_judge("alg", lambda: check_algorithm(alg, issuer.algorithms),
                         f"{alg} is allowed for {issuer.name}",
                         lambda _: algorithm_fix(alg, issuer.algorithms, issuer_where)))
    checks.append(_judge("typ", lambda: check_federated_typ(typ),
                         "absent" if typ is None else quoted(typ),
                         lambda _: Fix(advice="typ must be absent, JWT or JOSE")))
    checks += _key_checks(parsed, alg, issuer.source, lambda _: Fix(
        advice=f"the keys {issuer.name} publishes do not verify it: the token was not "
               "issued by that platform, or its keys moved"), issuer_where)[0]
    checks += _time_checks(claims, trusts.clock_skew, now, facts, where, require_iat=True)
    subject = parsed.subject
    if subject is None:
        checks.append(Check("sub", FAIL, "not a string", Reason.BAD_SUBJECT,
                            Fix(advice="a platform token's sub names the workload")))
        return checks
    checks.append(Check("sub", PASS, quoted(subject)))
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    for trust in trusts.enforced + trusts.shadows:
        checks.append(_trust_check(trust, claims, subject, exp, iat, trusts.client_id))
    if not trusts.enforced:
        shadows = ", ".join(trust.name for trust in trusts.shadows) or "none"
        checks.append(Check("trust", FAIL, f"no enforced trust in {issuer.name}",
                            Reason.NO_TRUST, Fix(Remedy(
                                f"{where}.federated: mode: enforce on one of {shadows}",
                                "that trust starts accepting tokens instead of only logging "
                                "its verdicts"))))
    return checks


def _trust_check(trust: Trust, claims: Mapping[str, Any], subject: str, exp: float | None,
                 iat: float | None, client_id: str) -> Check:
    rule = f"trust {trust.name}"
    if exp is None or iat is None:
        return Check(rule, SKIPPED, "needs numeric exp and iat")
    refused = trust.refusal(claims, subject, exp, iat)
    if trust.shadow:
        verdict = "would match" if refused is None else f"would refuse ({refused})"
        return Check(rule, SHADOW, f"shadow trust: {verdict}; it decides nothing")
    if refused is None:
        return Check(rule, PASS, "matches")
    unmet_key = first_unmet(claims, trust.claims) if refused is Reason.CLAIM_MISMATCH else None
    unmet = None if unmet_key is None else (
        unmet_key, claim_text(resolve_claim(claims, unmet_key)))
    where = f"clients.{client_id}.federated, trust {trust.name}"
    fix = trust_fix(refused, where=where, client_id=client_id, subject=subject,
                    aud=claims.get("aud"), unmet=unmet, lifetime=exp - iat,
                    pattern=trust.pattern is not None)
    detail = f"{refused}" + (f" at {unmet_key}" if unmet_key else "")
    return Check(rule, FAIL, detail, refused, fix)


def _key_checks(parsed: ParsedAssertion, alg: str, source: KeySource,
                fix: Callable[[Reason], Fix], fetch_path: str,
                ) -> tuple[list[Check], VerificationKey | None]:
    """Key selection, then the signature: what verify_signature does after select_keys."""
    if alg not in JWS_ALGORITHMS:
        return [Check("key", SKIPPED, "no key verifies an unknown alg"),
                Check("signature", SKIPPED, "no key to verify with")], None
    keys = source.current()
    if keys is None:
        error = source.status().last_error
        return [Check("key", FAIL, f"no keys to verify with ({error or 'not fetched'})",
                      Reason.KEYS_UNAVAILABLE, fetch_fix(error, fetch_path)),
                Check("signature", SKIPPED, "no keys to verify with")], None
    try:
        candidates = select_keys(parsed.header, keys, alg)
    except InvalidClient as refusal:
        return [Check("key", FAIL, refusal.detail, refusal.reason, fix(refusal.reason)),
                Check("signature", SKIPPED, "no key to verify with")], None
    selected = Check("key", PASS, f"{len(candidates)} of {len(keys.keys)} key(s) may verify {alg}")
    try:
        key = verify_signature(parsed, alg, candidates)
    except InvalidClient as refusal:
        return [selected, Check("signature", FAIL, refusal.detail, refusal.reason,
                                fix(refusal.reason))], None
    name = f"kid {quoted(key.kid)}" if key.kid is not None else f"thumbprint {key.thumbprint}"
    return [selected, Check("signature", PASS, f"verified with the key of {name}")], key


def _time_checks(claims: Mapping[str, Any], skew: float, now: float, facts: ConfigFacts,
                 where: str, *, require_iat: bool = False) -> list[Check]:
    try:
        exp, _ = check_times(claims, skew, now, require_iat=require_iat)
    except InvalidClient as refusal:
        fix = (Fix(advice="a platform token must carry iat")
               if refusal.reason is Reason.MISSING_IAT
               else time_fix(refusal.reason, claims, skew, now, facts, where))
        return [Check("time", FAIL, refusal.detail or str(refusal.reason), refusal.reason, fix)]
    return [Check("time", PASS, f"exp in {exp - now:.0f}s; iat and nbf not ahead "
                                f"(clock skew {skew:g}s)")]


def _lifetime_check(claims: Mapping[str, Any], max_lifetime: float, now: float,
                    facts: ConfigFacts, where: str) -> Check:
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    if exp is None or ("iat" in claims and iat is None):
        return Check("lifetime", SKIPPED, "needs numeric exp (and iat when present)")
    lifetime = exp - (now if iat is None else iat)
    return _judge("lifetime", lambda: check_lifetime(claims, exp, max_lifetime, now),
                  f"{lifetime:.0f}s, at most {max_lifetime:g}s",
                  lambda _: lifetime_fix(lifetime, facts, where))


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    try:
        return float(numeric_date(claims, name))
    except InvalidClient:
        return None
