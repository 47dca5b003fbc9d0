"""Credential kinds: the ways a client may prove itself with a signed assertion.

Each kind brings its own key source, its own claim rules and its own replay mode; the
authenticator selects one per assertion and runs it, so a new kind (a federated issuer
trust, a CA-anchored certificate) is a new class here and an entry in the client's
``credentials``, with no new branch in the authenticator or the HTTP shell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from gateway.core.assertion import (
    AssertionPolicy,
    ParsedAssertion,
    VerifiedAssertion,
    verify_assertion,
)
from gateway.core.attempt import Attempt
from gateway.core.errors import TemporarilyUnavailable
from gateway.core.keysource import KeySource
from gateway.core.lifecycle import KeyDeadlines, check_key_deadline
from gateway.core.reasons import Reason


@dataclass(frozen=True, slots=True)
class ReplayEntry:
    """What the ledger records for one accepted assertion, and until when."""

    subject: str  # whose jti namespace: two subjects may use the same jti
    jti: str
    expires_at: float  # epoch seconds: the assertion's exp plus the clock skew
    fingerprint: str | None = None  # set when the identical assertion may be re-sent
    # When it was issued (iat, else exp - max_lifetime) and the skew its times were checked
    # with: a ledger that lost its data refuses what may have been accepted before the loss.
    issued_at: float | None = None  # None: unknown, never refused for a loss
    clock_skew: float = 0.0


class AssertionCredential(Protocol):
    """One credential of a client that verifies client assertions."""

    kind: ClassVar[str]  # the credential kind, e.g. registered_keys

    @property
    def name(self) -> str:
        """Which credential of the client this is, for the audit log (never key material)."""
        ...

    def key_sources(self) -> tuple[KeySource, ...]:
        """The key sources this credential reads (started, closed and watched by the shell)."""
        ...

    def matches(self, parsed: ParsedAssertion) -> bool:
        """Whether this credential is the one the assertion claims to be made for."""
        ...

    def verify(self, parsed: ParsedAssertion, endpoint: str, now: float,
               attempt: Attempt) -> VerifiedAssertion:
        """Signature, then claims under this credential's policy for ``endpoint``; what the
        kind learns on the way (a trust's name, its verdicts) goes on ``attempt``.

        Raises KeyMiss when no key verified (``verify_after_refresh`` may then help),
        another InvalidClient for any other failed check, TemporarilyUnavailable when
        the keys cannot be had.
        """
        ...

    async def verify_after_refresh(
        self, parsed: ParsedAssertion, endpoint: str, now: float, attempt: Attempt
    ) -> VerifiedAssertion | None:
        """After a key miss: refetch the keys when the source may, and verify again.

        Returns None when nothing new came (the caller's miss stands); raises as ``verify``.
        """
        ...

    def replay_entry(
        self, verified: VerifiedAssertion, assertion: str, endpoint: str
    ) -> ReplayEntry:
        """What the ledger must record for this accepted assertion (this kind's replay mode)."""
        ...


@dataclass(frozen=True, slots=True)
class RegisteredKeys:
    """The client's own registered keys (jwks, jwks_file or jwks_uri): iss = sub = client_id.

    Replay mode: each jti once per client until exp + clock_skew; with ``allow_reuse``
    the byte-identical assertion may come again (MSAL re-sends one), nothing else.
    A key past its ``key_expiry`` or ``retire`` date is refused (``key_expired``) once it
    has verified the signature, whatever its source serves.
    """

    kind: ClassVar[str] = "registered_keys"

    client_id: str
    source: KeySource
    policies: Mapping[str, AssertionPolicy]  # per endpoint path
    allow_reuse: bool = False
    # key_expiry and retire, by kid or thumbprint; None (most clients): nothing to check.
    deadlines: KeyDeadlines | None = None

    @property
    def name(self) -> str:
        return self.source.kind

    def key_sources(self) -> tuple[KeySource, ...]:
        return (self.source,)

    def matches(self, parsed: ParsedAssertion) -> bool:
        return parsed.claims.get("iss") == self.client_id

    def verify(self, parsed: ParsedAssertion, endpoint: str, now: float,
               attempt: Attempt) -> VerifiedAssertion:
        keys = self.source.current()
        if keys is None:
            raise TemporarilyUnavailable(Reason.KEYS_UNAVAILABLE)
        verified = verify_assertion(parsed, keys, self.policies[endpoint], now)
        if self.deadlines is not None:
            check_key_deadline(self.deadlines, verified.kid, verified.key_thumbprint, now,
                               attempt)
        return verified

    async def verify_after_refresh(
        self, parsed: ParsedAssertion, endpoint: str, now: float, attempt: Attempt
    ) -> VerifiedAssertion | None:
        # A rotated key shows up as an unknown kid (or, without a kid, as no key verifying).
        held = self.source.current()
        fresh = await self.source.refresh_for_unknown_kid()
        if fresh is None or fresh is held:
            return None
        verified = verify_assertion(parsed, fresh, self.policies[endpoint], now)
        if self.deadlines is not None:
            check_key_deadline(self.deadlines, verified.kid, verified.key_thumbprint, now,
                               attempt)
        return verified

    def replay_entry(
        self, verified: VerifiedAssertion, assertion: str, endpoint: str
    ) -> ReplayEntry:
        return client_replay_entry(verified, assertion, self.policies[endpoint],
                                   self.allow_reuse)


def assertion_fingerprint(assertion: str) -> str:
    """The digest an identical re-send is recognised by (``ReplayEntry.fingerprint``)."""
    return hashlib.sha256(assertion.encode("ascii", "replace")).hexdigest()


def client_replay_entry(verified: VerifiedAssertion, assertion: str, policy: AssertionPolicy,
                        allow_reuse: bool) -> ReplayEntry:
    """The replay mode of a client's own assertion (iss = sub = client_id): each jti once per
    client until exp + clock_skew; with ``allow_reuse`` the identical assertion again."""
    # Remembered until it can no longer pass the expiry check: exp plus the skew.
    expires_at = verified.exp + policy.clock_skew
    fingerprint = assertion_fingerprint(assertion) if allow_reuse else None
    # Without iat, the earliest issue time the lifetime check lets through.
    issued_at = verified.iat if verified.iat is not None else (
        verified.exp - policy.max_lifetime)
    return ReplayEntry(policy.client_id, verified.jti, expires_at, fingerprint,
                       issued_at=issued_at, clock_skew=policy.clock_skew)
