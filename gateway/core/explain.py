"""Explaining one assertion: the request path's own verdict, then every check on its own.

`explain_assertion` hands the assertion to the same Authenticator a request reaches (with a
ledger that records nothing, so no jti is spent) for the verdict, then runs each check of
the credential that judged it separately, so that every failing rule shows, each with what
would accept it and at what cost (`core.remedies`). The caller fetches the keys first
(`key_sources_for` says which); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from gateway.core.assertion import AssertionPolicy, ParsedAssertion, parse_assertion
from gateway.core.attempt import PRIVATE_KEY_JWT, Attempt
from gateway.core.authenticator import Approval, Authenticator, Brakes, TokenRequest
from gateway.core.brakes import FailureLimiter
from gateway.core.clients import ClientRuntime
from gateway.core.credentials import RegisteredKeys
from gateway.core.errors import GatewayError, InvalidClient
from gateway.core.explain_rules import (
    FAIL,
    NOT_CHECKED,
    PASS,
    Check,
    claim_checks,
    federated_checks,
    header_checks,
    registered_checks,
)
from gateway.core.federation import Federation
from gateway.core.form import ASSERTION_TYPE
from gateway.core.keysource import KeySource
from gateway.core.reasons import Reason
from gateway.core.remedies import ConfigFacts, Fix, quoted, resolution_fix

FORM_TYPE = "application/x-www-form-urlencoded"
REPLAY_NOTE = ("not checked: explain records nothing; the gateway accepts each jti once, "
               "until exp plus the clock skew")


@dataclass(frozen=True, slots=True)
class Explanation:
    """The verdict on one assertion at one endpoint, and every check that led to it."""

    endpoint: str
    accepted: bool
    status: int | None  # the refusal's HTTP status; None when accepted (then forwarded)
    error: str | None  # the refusal's OAuth error code
    reason: Reason
    client: str | None
    credential: str | None  # which of the client's credentials judged it
    header: Mapping[str, Any]
    claims: Mapping[str, Any]  # as sent, but jti shown by its length only
    checks: tuple[Check, ...]


class _UnwrittenLedger:
    """A replay ledger that records nothing: explaining an assertion never spends its jti."""

    name = "explain"

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        return True

    def ready(self) -> bool:
        return True

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _FixedClock:
    now: float

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return 0.0


def key_sources_for(token: str, clients: Mapping[str, ClientRuntime], federation: Federation,
                    client_id: str | None = None) -> tuple[KeySource, ...]:
    """The key sources the assertion would be verified with: the only ones worth fetching."""
    try:
        parsed = parse_assertion(token)
    except GatewayError:
        return ()
    issuer = federation.issuer_for(parsed)
    if issuer is not None:
        return (issuer.source,)
    claimed = client_id if client_id is not None else parsed.subject
    client = clients.get(claimed) if claimed is not None else None
    if client is None:
        return ()
    try:
        return client.credential_for(parsed).key_sources()
    except GatewayError:
        return ()


async def explain_assertion(
    token: str, *, endpoint: str, clients: Mapping[str, ClientRuntime], federation: Federation,
    facts: ConfigFacts, now: float, client_id: str | None = None,
) -> Explanation:
    """Judge ``token`` as a token request to ``endpoint`` would be at ``now`` (``client_id``:
    the request's client_id parameter), and explain every check."""
    approval, error = await _verdict(token, endpoint, clients, federation, now, client_id)
    attempt = approval.attempt if approval is not None else (error.attempt if error else None)
    attempt = attempt or Attempt()
    header: Mapping[str, Any] = {}
    claims: Mapping[str, Any] = {}
    try:
        parsed = parse_assertion(token)
    except InvalidClient as refusal:
        checks = [Check("parse", FAIL, refusal.detail or "not an assertion", refusal.reason,
                        Fix(advice="the client must send a compact JWS (three base64url "
                                   "parts) whose header and claims are JSON objects"))]
    else:
        header, claims = _shown_header(parsed.header), _shown_claims(parsed.claims)
        checks = [Check("parse", PASS, "a compact JWS; header and claims are JSON objects"),
                  *_judged(parsed, attempt, error, clients, endpoint, facts, now, client_id)]
    failed = {check.reason for check in checks if check.outcome == FAIL}
    if error is not None and error.reason not in failed:  # a check this list does not name
        checks.append(Check("request", FAIL, error.detail or str(error.reason), error.reason))
    return Explanation(
        endpoint=endpoint, accepted=error is None,
        status=error.status if error else None, error=error.code if error else None,
        reason=error.reason if error else Reason.OK, client=attempt.client,
        credential=_credential_name(attempt), header=header, claims=claims,
        checks=tuple(checks))


async def _verdict(
    token: str, endpoint: str, clients: Mapping[str, ClientRuntime], federation: Federation,
    now: float, client_id: str | None,
) -> tuple[Approval | None, GatewayError | None]:
    form = [("grant_type", "client_credentials"), ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", token)]
    if client_id is not None:
        form.append(("client_id", client_id))
    body = urlencode(form).encode("ascii")
    brakes = Brakes(FailureLimiter(1.0, 10, 10), FailureLimiter(1.0, 10, 10))  # never reached
    authenticator = Authenticator(_UnwrittenLedger(), brakes, max_body=len(body) + 1,
                                  clock=_FixedClock(now))
    request = TokenRequest(endpoint=endpoint, body=body, content_type=FORM_TYPE,
                           authorization=None, query_string="", remote="explain")
    try:
        return await authenticator.authenticate(request, clients, federation), None
    except GatewayError as error:
        return None, error


def _judged(
    parsed: ParsedAssertion, attempt: Attempt, error: GatewayError | None,
    clients: Mapping[str, ClientRuntime], endpoint: str, facts: ConfigFacts, now: float,
    client_id: str | None,
) -> list[Check]:
    """The client row, then the checks of the credential the request path chose."""
    client = clients.get(attempt.client) if attempt.client is not None else None
    if client is None or attempt.credential is None:  # no client, or none of its credentials
        reason = error.reason if error is not None else Reason.UNKNOWN_CLIENT
        detail = error.detail if error is not None and error.detail else str(reason)
        if reason is Reason.UNKNOWN_CLIENT:
            detail = f"no client {quoted(detail)} is served (none configured, or disabled)"
        return [Check("client", FAIL, detail, reason,
                      resolution_fix(reason, parsed.claims, client_id, facts))]
    named = "the client_id parameter" if client_id is not None else "sub"
    checks: list[Check]
    if attempt.issuer is not None:
        trusts = client.federated[attempt.issuer]
        checks = [Check("client", PASS, f"{client.client_id} (named by {named}), trusting "
                                        f"issuer {attempt.issuer}")]
        checks += federated_checks(parsed, trusts, facts, now)
    else:
        credential = client.credential_for(parsed)
        checks = [Check("client", PASS, f"{client.client_id} (named by {named}), its "
                                        f"{credential.name} credential")]
        policies = getattr(credential, "policies", None)
        policy = policies.get(endpoint) if isinstance(policies, Mapping) else None
        if isinstance(credential, RegisteredKeys):
            checks += registered_checks(parsed, credential, endpoint, facts, now)
        elif isinstance(policy, AssertionPolicy):  # another kind under a client's policy
            header = header_checks(parsed, policy)
            claims = claim_checks(parsed, policy, endpoint, facts, now)
            checks += [*header, _own(credential.name, error, header + claims), *claims]
        else:
            checks.append(_own(credential.name, error, []))
    return [*checks, Check("replay", NOT_CHECKED, REPLAY_NOTE)]


def _own(name: str, error: GatewayError | None, others: list[Check]) -> Check:
    """The checks of a credential kind this module has no rows for, as one row: failed
    when the verdict names a reason no other row does."""
    if error is None:
        return Check(name, PASS, "accepted by the request path")
    if error.reason in {check.reason for check in others if check.outcome == FAIL}:
        return Check(name, NOT_CHECKED, "the request path refused the assertion before")
    return Check(name, FAIL, error.detail or str(error.reason), error.reason)


def _credential_name(attempt: Attempt) -> str | None:
    if attempt.issuer is not None:
        trust = f", trust {attempt.trust}" if attempt.trust else ""
        return f"federated: issuer {attempt.issuer}{trust}"
    if attempt.credential is None or attempt.method != PRIVATE_KEY_JWT:
        return attempt.credential
    return f"registered keys ({attempt.credential})"


def _shown_header(header: Mapping[str, Any]) -> dict[str, Any]:
    shown = dict(header)
    if "x5c" in shown:
        shown["x5c"] = f"({len(header['x5c'])} certificate(s))"
    return shown


def _shown_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    shown = dict(claims)
    jti = shown.get("jti")
    if isinstance(jti, str):
        shown["jti"] = f"({len(jti)} characters)"
    return shown

