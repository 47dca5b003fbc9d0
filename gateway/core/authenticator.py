"""The authenticator: one token request in, an approval out, or a GatewayError.

detect (form) → resolve the client → brakes → select the credential → verify (signature,
then claims under the credential's policy) → replay under the credential's mode. The
ledger is written last, only after every other check passed, so a refused assertion never
burns its jti. No HTTP, no wall clock of its own: the shell hands in plain values and the
collaborators, and reads the outcome (an Approval, or the ``attempt`` of the error).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from time import perf_counter
from time import time as wall_time
from typing import Protocol

from gateway.core.assertion import ParsedAssertion, VerifiedAssertion, parse_assertion
from gateway.core.attempt import Attempt, ReplayCheck, jti_digest, untrusted
from gateway.core.brakes import FailureLimiter
from gateway.core.clients import ClientRuntime, LegacyPolicy
from gateway.core.credentials import AssertionCredential
from gateway.core.errors import (
    GatewayError,
    InvalidClient,
    InvalidRequest,
    KeyMiss,
    TooManyRequests,
    UnsupportedAuthMethod,
)
from gateway.core.federation import FEDERATED, NO_FEDERATION, Federation, FederationIssuer
from gateway.core.form import SPIFFE_ASSERTION_TYPE, TokenForm, parse_form
from gateway.core.legacy import identify_secret_client
from gateway.core.reasons import Reason
from gateway.core.replay import ReplayLedger


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock epoch seconds: what token times are compared with."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: brakes and timings."""
        ...


class SystemClock:
    """The process's clocks."""

    time = staticmethod(wall_time)
    monotonic = staticmethod(perf_counter)


@dataclass(frozen=True, slots=True)
class Brakes:
    """Failure brakes: token buckets per client id and per client address."""

    per_client: FailureLimiter
    per_address: FailureLimiter


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A request to an endpoint, reduced to what authentication reads."""

    endpoint: str  # the configured path it came on
    body: bytes
    content_type: str | None
    authorization: str | None  # the Authorization header, if any
    query_string: str
    remote: str  # the client's address, "" when unknown


@dataclass(frozen=True, slots=True)
class Approval:
    """An authenticated request: who, with what, and what the shell needs to forward it."""

    client: ClientRuntime
    attempt: Attempt  # client, credential, kid, thumbprint, timings, for audit and metrics
    form: TokenForm | None  # the parsed form; None in migration mode (forwarded as it came)
    verified: VerifiedAssertion | None = None  # the verified claims; None in migration mode
    legacy: LegacyPolicy | None = None  # set when a shared secret was let through

    @property
    def reason(self) -> Reason:
        return Reason.OK if self.legacy is None else Reason.LEGACY_SECRET


class Authenticator:
    """Authenticates token requests against a runtime snapshot of clients."""

    def __init__(
        self, ledger: ReplayLedger, brakes: Brakes, *, max_body: int,
        clock: Clock | None = None,
    ) -> None:
        self.ledger = ledger
        self.brakes = brakes
        self.max_body = max_body
        self.clock: Clock = clock if clock is not None else SystemClock()

    def admit(self, remote: str) -> None:
        """The address's failure brake, checked before the body is even read.

        Raises TooManyRequests (``too_many_failures``) while ``remote`` must wait.
        """
        retry_after = self.brakes.per_address.retry_after(remote, self.clock.monotonic())
        if retry_after is not None:
            raise TooManyRequests(Reason.TOO_MANY_FAILURES, retry_after, "from this address")

    async def authenticate(
        self, request: TokenRequest, clients: Mapping[str, ClientRuntime],
        federation: Federation = NO_FEDERATION, disabled: Set[str] = frozenset(),
    ) -> Approval:
        """Authenticate ``request`` against ``clients`` and the declared ``federation``
        issuers (both read once: a reload does not change them); the caller has checked
        ``admit(request.remote)`` before reading the body. A client named in ``disabled``
        (configured, offboarded) is refused as ``client_disabled`` under its own id.

        Raises GatewayError (InvalidRequest, InvalidClient, TooManyRequests,
        TemporarilyUnavailable) with ``attempt`` set; every InvalidClient spends a token of
        the address's and, once known, the client's failure brake (a refused shared secret,
        which no check here could have verified, only the address's).
        """
        attempt = Attempt()
        try:
            try:
                form = parse_form(request.body, content_type=request.content_type,
                                  has_authorization=request.authorization is not None,
                                  query_string=request.query_string, max_body=self.max_body)
            except UnsupportedAuthMethod as refusal:
                return self._admit_secret(request, clients, attempt, refusal, disabled)
            return await self._authenticate_assertion(request, form, clients, federation,
                                                      attempt, disabled)
        except GatewayError as error:
            error.attempt = attempt
            if isinstance(error, InvalidClient):  # failed authentications slow down
                now = self.clock.monotonic()
                self.brakes.per_address.failed(request.remote, now)
                # A refused secret guessed nothing of the client's keys: braking the client
                # would also stop the key requests of a half-migrated one.
                secret = isinstance(error, UnsupportedAuthMethod)
                if attempt.client is not None and not secret:
                    self.brakes.per_client.failed(attempt.client, now)
            raise

    async def _authenticate_assertion(
        self, request: TokenRequest, form: TokenForm, clients: Mapping[str, ClientRuntime],
        federation: Federation, attempt: Attempt, disabled: Set[str],
    ) -> Approval:
        clock = self.clock
        started = clock.monotonic()
        try:  # refused tokens cost CPU too: every attempt is timed
            parsed = parse_assertion(form.assertion)
            attempt.kid, attempt.alg = untrusted(parsed.kid), untrusted(parsed.header.get("alg"))
            credential: AssertionCredential
            issuer = federation.issuer_for(parsed) if federation.by_iss or \
                federation.by_trust_domain else None
            if issuer is not None or form.assertion_type == SPIFFE_ASSERTION_TYPE:
                client, credential = self._resolve_federated(form, parsed, issuer, clients,
                                                             federation, attempt, disabled)
            else:
                client = self._resolve(form, parsed, clients, attempt, disabled)
                credential = client.credential_for(parsed)
            attempt.credential = credential.name
            now = clock.time()
            try:
                verified = credential.verify(parsed, request.endpoint, now, attempt)
            except KeyMiss:
                refreshed = await credential.verify_after_refresh(parsed, request.endpoint, now,
                                                                  attempt)
                if refreshed is None:
                    # A bare raise: a frame holding the exception would make a reference
                    # cycle of every refused request, left to the cyclic collector.
                    raise
                verified = refreshed
        finally:
            attempt.verification_seconds = clock.monotonic() - started
        attempt.key_thumbprint = verified.key_thumbprint
        await self._record(credential, verified, form.assertion, request.endpoint, now, attempt)
        return Approval(client=client, attempt=attempt, form=form, verified=verified)

    def _resolve(
        self, form: TokenForm, parsed: ParsedAssertion, clients: Mapping[str, ClientRuntime],
        attempt: Attempt, disabled: Set[str],
    ) -> ClientRuntime:
        """The client the request names (client_id, else the assertion's sub), if not braked."""
        iss = parsed.claims.get("iss")
        # iss != sub: a token some other issuer made, and no declared issuer made it.
        third_party = type(iss) is str and iss != parsed.subject
        if form.client_id is not None and parsed.subject != form.client_id:
            named = clients.get(form.client_id)
            if named is not None and named.federated and third_party:
                attempt.client = named.client_id
                raise InvalidClient(Reason.UNKNOWN_ISSUER, untrusted(iss) or "")
            raise InvalidRequest(Reason.CLIENT_ID_MISMATCH)
        claimed = form.client_id if form.client_id is not None else parsed.subject
        client = clients.get(claimed) if claimed is not None else None
        if client is None:
            if third_party and form.client_id is None:
                raise InvalidClient(Reason.UNKNOWN_ISSUER, untrusted(iss) or "")
            raise _unknown_client(claimed, disabled, attempt)
        attempt.client = client.client_id
        self._check_client_brake(client)
        return client

    def _resolve_federated(
        self, form: TokenForm, parsed: ParsedAssertion, issuer: FederationIssuer | None,
        clients: Mapping[str, ClientRuntime], federation: Federation, attempt: Attempt,
        disabled: Set[str],
    ) -> tuple[ClientRuntime, AssertionCredential]:
        """The client and its trusts in the token's issuer: client_id names the client, else
        the exact (issuer, subject) must name exactly one. Nothing is guessed."""
        attempt.method = FEDERATED
        if issuer is None:
            raise InvalidClient(Reason.UNKNOWN_ISSUER, "jwt-spiffe from an undeclared domain")
        if form.assertion_type == SPIFFE_ASSERTION_TYPE and issuer.trust_domain is None:
            raise InvalidRequest(Reason.BAD_ASSERTION_TYPE, f"jwt-spiffe for {issuer.name}")
        attempt.issuer = issuer.name
        subject = parsed.subject
        attempt.subject = untrusted(subject)
        if form.client_id is not None:
            client = clients.get(form.client_id)
            if client is None:
                raise _unknown_client(form.client_id, disabled, attempt)
        else:
            trusted_by = federation.exact.get((issuer.name, subject or ""), ())
            named = [client_id for client_id in trusted_by if client_id in clients]
            if not named:
                raise InvalidClient(Reason.NO_TRUST, "no client_id, and no trust of this subject")
            if len(named) > 1:
                raise InvalidClient(Reason.AMBIGUOUS_IDENTITY,
                                    f"{len(named)} clients trust it: client_id is required")
            client = clients[named[0]]
        attempt.client = client.client_id
        self._check_client_brake(client)
        credential = client.federated.get(issuer.name)
        if credential is None:
            raise InvalidClient(Reason.NO_TRUST, f"no trust in issuer {issuer.name}")
        return client, credential

    def _check_client_brake(self, client: ClientRuntime) -> None:
        # Checked before any signature is: a flood of bad assertions for one client costs little.
        retry_after = self.brakes.per_client.retry_after(client.client_id, self.clock.monotonic())
        if retry_after is not None:
            raise TooManyRequests(Reason.TOO_MANY_FAILURES, retry_after, "for this client")

    async def _record(
        self, credential: AssertionCredential, verified: VerifiedAssertion, assertion: str,
        endpoint: str, now: float, attempt: Attempt,
    ) -> None:
        """Write the ledger, last: raises InvalidClient replayed, or the ledger's 503."""
        entry = credential.replay_entry(verified, assertion, endpoint)
        # What the ledger keys it by: a token without a jti is keyed by its hash.
        attempt.jti_hash = jti_digest(verified.client_id, entry.jti)
        ledger, clock = self.ledger, self.clock
        started = clock.monotonic()
        try:
            fresh = await ledger.record(entry.subject, entry.jti, entry.expires_at, now,
                                        fingerprint=entry.fingerprint,
                                        issued_at=entry.issued_at, clock_skew=entry.clock_skew)
        except GatewayError:
            attempt.replay = ReplayCheck(ledger.name, "error", clock.monotonic() - started)
            raise
        attempt.replay = ReplayCheck(ledger.name, "fresh" if fresh else "replayed",
                                     clock.monotonic() - started)
        if not fresh:
            raise InvalidClient(Reason.REPLAYED)

    def _admit_secret(
        self, request: TokenRequest, clients: Mapping[str, ClientRuntime], attempt: Attempt,
        refusal: UnsupportedAuthMethod, disabled: Set[str],
    ) -> Approval:
        """Migration mode: a shared secret from a client still allowed one goes through as it
        came (the backend checks the secret, nothing here verifies it). A configured client
        not allowed that method is refused as ``secret_not_allowed`` under its own id (a
        bounded label, so the report can name it); anyone else gets ``refusal``."""
        try:
            claim = identify_secret_client(request.body, request.authorization)
        except GatewayError:
            raise refusal from None  # unreadable secret credentials: refused as before
        attempt.method = claim.method
        client = clients.get(claim.client_id)
        if client is None:
            if claim.client_id in disabled:  # offboarded, still sending its secret
                attempt.client = claim.client_id
                raise UnsupportedAuthMethod(Reason.CLIENT_DISABLED, "enabled: false")
            raise refusal
        attempt.client = client.client_id
        legacy = client.legacy
        if legacy is None or claim.method not in legacy.methods:
            # The same public answer as ``refusal``: the class decides it.
            raise UnsupportedAuthMethod(Reason.SECRET_NOT_ALLOWED,
                                        f"{claim.method} without migration mode for it")
        if legacy.deadline is not None and self.clock.time() >= legacy.deadline:
            raise InvalidClient(Reason.LEGACY_AUTH_EXPIRED, f"{claim.method} after its sunset")
        return Approval(client=client, attempt=attempt, form=None, legacy=legacy)


def _unknown_client(claimed: str | None, disabled: Set[str], attempt: Attempt) -> InvalidClient:
    """``unknown_client``; for a configured client with enabled: false, ``client_disabled``
    under its own id (a bounded label: the report lists offboarded clients still trying).

    The public answer is the same: an offboarded client learns nothing it did not know.
    """
    if claimed is not None and claimed in disabled:
        attempt.client = claimed
        return InvalidClient(Reason.CLIENT_DISABLED, "enabled: false")
    return InvalidClient(Reason.UNKNOWN_CLIENT, untrusted(claimed) or "")
