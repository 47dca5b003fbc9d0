"""Federated trusts: a platform's workload token as a client's assertion, by issuer and subject.

A token names its issuer (``iss``, or for SPIFFE the trust domain of ``sub``); only issuers
the operator declared are known, and an unknown one is refused before anything is fetched.
The issuer's keys verify the signature once; then each trust of the client in that issuer
(audience, subject or subject pattern, claims, lifetime, replay mode) decides, and shadow
trusts are evaluated beside them without deciding anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.core.assertion import (
    ParsedAssertion,
    VerifiedAssertion,
    check_algorithm,
    check_jti,
    check_times,
    verify_signature,
)
from gateway.core.attempt import Attempt, FederationDecision
from gateway.core.claim_rules import ClaimRequirement, first_unmet
from gateway.core.credentials import ReplayEntry, assertion_fingerprint
from gateway.core.errors import GatewayError, InvalidClient, TemporarilyUnavailable
from gateway.core.keyset import select_keys
from gateway.core.keysource import KeySource
from gateway.core.reasons import Reason
from gateway.core.subject_pattern import SubjectPattern

FEDERATED = "federated"  # the audit's and the metrics' method word
SPIFFE_PREFIX = "spiffe://"
# typ values a platform token may carry (lower-cased): none, JWT, or JOSE (JWT-SVID).
FEDERATED_TYPS = frozenset({"jwt", "application/jwt", "jose", "application/jose"})
# Reasons a trust gives when its subject matched: they say more than subject_mismatch.
_SUBJECT_MATCHED = frozenset({Reason.BAD_AUDIENCE, Reason.CLAIM_MISMATCH,
                              Reason.LIFETIME_TOO_LONG, Reason.MISSING_JTI, Reason.BAD_JTI})


def check_federated_typ(typ: str | None) -> None:
    """Raises InvalidClient bad_typ unless ``typ`` is absent or one of FEDERATED_TYPS."""
    if typ is not None and typ.lower() not in FEDERATED_TYPS:
        raise InvalidClient(Reason.BAD_TYP, repr(typ)[:80])


def federated_subject(issuer: str, reuse: bool) -> str:
    """The replay ledger's namespace for tokens of ``issuer`` under one replay mode.

    A jti is unique per issuer, not per client: a token used once for one client is a
    replay for every other client trusting the same identity. A NUL never occurs in a
    client id, so these never meet a client's own namespace.
    """
    return f"\x00federated\x00{issuer}\x00{'reuse' if reuse else 'single_use'}"


@dataclass(frozen=True, slots=True)
class FederationIssuer:
    """A platform issuer the operator declared, with its key source."""

    name: str  # the operator's name for it (a metric label)
    issuer: str | None  # compared byte for byte with iss; None for a SPIFFE trust domain alone
    trust_domain: str | None  # SPIFFE: trust keyed by the trust domain of sub
    algorithms: frozenset[str]
    source: KeySource


@dataclass(frozen=True, slots=True)
class Trust:
    """One identity a client accepts: its rules, checked on a verified token's claims."""

    name: str
    audience: str | None  # None only with allow_any_audience: any single audience
    subject: str | None
    pattern: SubjectPattern | None
    claims: tuple[ClaimRequirement, ...]
    max_lifetime: float
    reuse: bool  # replay: reuse (the same token again until exp) instead of single_use
    shadow: bool

    @property
    def mode(self) -> str:
        return "shadow" if self.shadow else "enforce"

    def refusal(self, claims: Mapping[str, Any], subject: str, exp: float,
                iat: float) -> Reason | None:
        """Why this trust refuses a verified token's claims, or None when it accepts them."""
        if self.pattern is not None:
            if not self.pattern.matches(subject):
                return Reason.SUBJECT_MISMATCH
        elif subject != self.subject:
            return Reason.SUBJECT_MISMATCH
        if not _audience_fits(claims.get("aud"), self.audience):
            return Reason.BAD_AUDIENCE
        if self.claims and first_unmet(claims, self.claims) is not None:
            return Reason.CLAIM_MISMATCH
        if exp - iat > self.max_lifetime:
            return Reason.LIFETIME_TOO_LONG
        if "jti" in claims or not self.reuse:
            try:
                check_jti(claims)
            except InvalidClient as refused:
                return refused.reason
        return None


def _audience_fits(aud: object, audience: str | None) -> bool:
    # One audience only, as a string or a one-element array: a token valid at several
    # relying parties lets any of them pose as the workload here.
    if type(aud) is list:
        if len(aud) != 1:
            return False
        aud = aud[0]
    return type(aud) is str and (audience is None or aud == audience)


@dataclass(frozen=True, slots=True)
class IssuerTrusts:
    """A client's trusts in one issuer: the credential a federated token of it is checked by."""

    kind: ClassVar[str] = FEDERATED

    client_id: str
    issuer: FederationIssuer
    enforced: tuple[Trust, ...]
    shadows: tuple[Trust, ...]
    other_shadows: tuple[str, ...]  # shadow trusts of the client in other issuers
    clock_skew: float
    _by_name: Mapping[str, Trust] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {t.name: t for t in self.enforced})

    @property
    def name(self) -> str:
        return self.issuer.name

    def key_sources(self) -> tuple[KeySource, ...]:
        return (self.issuer.source,)

    def matches(self, parsed: ParsedAssertion) -> bool:
        return self.issuer.issuer is not None and parsed.claims.get("iss") == self.issuer.issuer

    def verify(self, parsed: ParsedAssertion, endpoint: str, now: float,
               attempt: Attempt) -> VerifiedAssertion:
        """The issuer's signature, the token's times, then the trusts decide.

        Raises KeyMiss when no published key verified, TemporarilyUnavailable while the
        issuer's keys cannot be had, InvalidClient for any refusal (forbidden_header,
        alg_not_allowed, bad_typ, missing_iat and the time reasons, then the deciding
        trust's subject_mismatch, bad_audience, claim_mismatch, lifetime_too_long,
        missing_jti, bad_jti, or no_trust when the client enforces no trust here).
        """
        keys = self.issuer.source.current()
        if keys is None:
            raise TemporarilyUnavailable(Reason.KEYS_UNAVAILABLE, self.issuer.name)
        return self._verify_with(parsed, keys, now, attempt)

    async def verify_after_refresh(self, parsed: ParsedAssertion, endpoint: str, now: float,
                                   attempt: Attempt) -> VerifiedAssertion | None:
        source = self.issuer.source
        held = source.current()
        fresh = await source.refresh_for_unknown_kid()
        if fresh is None or fresh is held:
            return None
        return self._verify_with(parsed, fresh, now, attempt)

    def replay_entry(self, verified: VerifiedAssertion, assertion: str,
                     endpoint: str) -> ReplayEntry:
        trust = self._by_name[verified.credential or ""]
        subject = federated_subject(self.issuer.name, trust.reuse)
        expires_at = verified.exp + self.clock_skew
        if not trust.reuse:
            return ReplayEntry(subject, verified.jti, expires_at, None,
                               issued_at=verified.iat, clock_skew=self.clock_skew)
        # Reuse: the identical token again until exp; keyed by its jti, else by its hash.
        fingerprint = assertion_fingerprint(assertion)
        return ReplayEntry(subject, verified.jti or f"#{fingerprint}", expires_at, fingerprint,
                           issued_at=verified.iat, clock_skew=self.clock_skew)

    def _verify_with(self, parsed: ParsedAssertion, keys: Any, now: float,
                     attempt: Attempt) -> VerifiedAssertion:
        header, claims = parsed.header, parsed.claims
        try:
            alg = header["alg"]
            # The issuer's published keys are the only source: never a key the token brings.
            if "x5c" in header:
                raise InvalidClient(Reason.FORBIDDEN_HEADER, "x5c on a federated token")
            check_algorithm(alg, self.issuer.algorithms)
            check_federated_typ(header.get("typ"))
            key = verify_signature(parsed, alg, select_keys(header, keys, alg))
            exp, iat = check_times(claims, self.clock_skew, now, require_iat=True)
            assert iat is not None  # required above
            trust = self._decide(claims, parsed.subject, exp, iat, attempt)
        except GatewayError:
            raise
        except Exception as exc:  # nothing foreign may escape
            raise InvalidClient(Reason.MALFORMED, f"unexpected {type(exc).__name__}") from exc
        jti = claims.get("jti")
        return VerifiedAssertion(
            client_id=self.client_id, jti=jti if type(jti) is str else "", exp=exp, alg=alg,
            kid=key.kid, key_thumbprint=key.thumbprint, iat=iat, credential=trust.name)

    def _decide(self, claims: Mapping[str, Any], subject: str | None, exp: float, iat: float,
                attempt: Attempt) -> Trust:
        """Every trust's verdict, recorded; the first enforced trust that accepts decides."""
        if subject is None:
            raise InvalidClient(Reason.BAD_SUBJECT, "sub is not a string")
        decisions: list[FederationDecision] = []
        chosen: Trust | None = None
        reason: Reason | None = None
        for trust in self.enforced + self.shadows:
            refused = trust.refusal(claims, subject, exp, iat)
            decisions.append(FederationDecision(trust.name, trust.mode,
                                                "mismatch" if refused else "match"))
            if trust.shadow:
                continue
            if refused is None:
                chosen = chosen or trust
            elif reason is None or (reason not in _SUBJECT_MATCHED and refused in _SUBJECT_MATCHED):
                reason = refused
        decisions += [FederationDecision(name, "shadow", "mismatch") for name in self.other_shadows]
        attempt.decisions = tuple(decisions)
        if chosen is None:
            raise InvalidClient(reason or Reason.NO_TRUST, f"issuer {self.issuer.name}")
        attempt.trust = chosen.name
        return chosen


@dataclass(frozen=True, slots=True)
class Federation:
    """The declared issuers, and which clients trust an exact (issuer, subject)."""

    by_iss: Mapping[str, FederationIssuer] = field(default_factory=dict)
    by_trust_domain: Mapping[str, FederationIssuer] = field(default_factory=dict)
    # (issuer name, exact subject) -> the clients enforcing a trust with that subject
    exact: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def issuer_for(self, parsed: ParsedAssertion) -> FederationIssuer | None:
        """The declared issuer the token names, or None (nothing is looked up elsewhere)."""
        iss = parsed.claims.get("iss")
        if type(iss) is str:
            found = self.by_iss.get(iss)
            if found is not None:
                return found
        subject = parsed.subject
        if self.by_trust_domain and subject is not None and subject.startswith(SPIFFE_PREFIX):
            domain = subject[len(SPIFFE_PREFIX):].partition("/")[0]
            found = self.by_trust_domain.get(domain)
            # A JWT-SVID needs no iss; one that names another issuer is not this domain's.
            if found is not None and (iss is None or iss == found.issuer or found.issuer is None):
                return found
        return None

    def sources(self) -> tuple[KeySource, ...]:
        issuers = {id(i): i for i in (*self.by_iss.values(), *self.by_trust_domain.values())}
        return tuple(issuer.source for issuer in issuers.values())


NO_FEDERATION = Federation()
