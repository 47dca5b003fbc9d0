"""The authenticator without a server: real keys, the memory ledger, an injected clock."""

from __future__ import annotations

import base64
import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from gateway.core.assertion import (
    AssertionPolicy,
    ParsedAssertion,
    VerifiedAssertion,
    verify_assertion,
)
from gateway.core.attempt import Attempt
from gateway.core.authenticator import Approval, Authenticator, Brakes, TokenRequest
from gateway.core.backend_auth import BackendCredential
from gateway.core.brakes import FailureLimiter
from gateway.core.clients import ClientRuntime, LegacyPolicy
from gateway.core.credentials import RegisteredKeys, ReplayEntry
from gateway.core.errors import (
    GatewayError,
    InvalidClient,
    InvalidRequest,
    KeyMiss,
    RetryLater,
    TemporarilyUnavailable,
    TooManyRequests,
    UnsupportedAuthMethod,
)
from gateway.core.form import ASSERTION_TYPE
from gateway.core.keyset import KeySet
from gateway.core.keysource import KeySource, KeySourceStatus, StaticKeySource
from gateway.core.reasons import Reason
from gateway.core.replay import MemoryReplayLedger
from tests.support.tokens import AUDIENCE, CLIENT_ID, NOW, OMIT, Signer, make_signer

ENDPOINT = "/oauth2/token"
FORM = "application/x-www-form-urlencoded"
SKEW = 15.0


@dataclass
class FakeClock:
    """Time moves only when a test moves it."""

    now: float = NOW
    ticks: float = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        self.ticks += 0.001
        return self.ticks


def policy(client_id: str = CLIENT_ID, **changes: object) -> AssertionPolicy:
    values: dict[str, object] = {
        "client_id": client_id, "algorithms": frozenset({"ES256", "PS256"}),
        "audiences": frozenset({AUDIENCE}), "max_lifetime": 300.0, "clock_skew": SKEW,
        "require_typ": False}
    values.update(changes)
    return AssertionPolicy(**values)  # type: ignore[arg-type]


def client(source: KeySource, client_id: str = CLIENT_ID, *, reuse: bool = False,
           legacy: LegacyPolicy | None = None) -> ClientRuntime:
    registered = RegisteredKeys(client_id, source, {ENDPOINT: policy(client_id)},
                                allow_reuse=reuse)
    return ClientRuntime(client_id, (registered,),
                         BackendCredential(client_id, "client_secret_basic", "s3cret"),
                         legacy=legacy)


def static(*signers: Signer) -> StaticKeySource:
    return StaticKeySource(signers[0].keyset(*signers[1:]), "jwks")


def body(assertion: str, **extra: str) -> bytes:
    fields = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
              "client_assertion": assertion, **extra}
    return "&".join(f"{name}={value}" for name, value in fields.items()).encode()


def request(payload: bytes, *, authorization: str | None = None,
            remote: str = "192.0.2.10") -> TokenRequest:
    return TokenRequest(endpoint=ENDPOINT, body=payload, content_type=FORM,
                        authorization=authorization, query_string="", remote=remote)


@dataclass
class World:
    signer: Signer
    clients: dict[str, ClientRuntime]
    ledger: MemoryReplayLedger = field(default_factory=lambda: MemoryReplayLedger(1000))
    clock: FakeClock = field(default_factory=FakeClock)
    brakes: Brakes = field(default_factory=lambda: Brakes(FailureLimiter(1.0, 3, 100),
                                                          FailureLimiter(1.0, 5, 100)))

    @property
    def authenticator(self) -> Authenticator:
        return Authenticator(self.ledger, self.brakes, max_body=65536, clock=self.clock)

    async def run(self, payload: bytes, **options: str) -> Approval:
        """As the handler does: the address brake, then (the body read) authentication."""
        token_request = request(payload, **options)
        authenticator = self.authenticator
        authenticator.admit(token_request.remote)
        return await authenticator.authenticate(token_request, self.clients)

    async def refused(self, payload: bytes, **options: str) -> GatewayError:
        with pytest.raises(GatewayError) as caught:
            await self.run(payload, **options)
        return caught.value


@pytest.fixture
def world() -> World:
    signer = make_signer("ES256")
    return World(signer, {CLIENT_ID: client(static(signer))})


async def test_an_accepted_assertion_gives_an_approval(world: World) -> None:
    assertion = world.signer.assertion()
    approval = await world.run(body(assertion))
    assert approval.client.client_id == CLIENT_ID
    assert approval.reason == "ok" and approval.legacy is None
    assert approval.verified is not None and approval.form is not None
    assert approval.verified.client_id == CLIENT_ID
    attempt = approval.attempt
    assert (attempt.client, attempt.credential, attempt.kid, attempt.alg) == (
        CLIENT_ID, "jwks", world.signer.kid, "ES256")
    assert attempt.key_thumbprint == world.signer.keyset().keys[0].thumbprint
    assert attempt.jti_hash is not None and len(attempt.jti_hash) == 16
    assert attempt.verification_seconds is not None and attempt.verification_seconds > 0
    assert attempt.replay is not None and attempt.replay.result == "fresh"
    assert ("grant_type", "client_credentials") in approval.form.params
    assert len(world.ledger) == 1


REFUSALS = {
    "bad-audience": ({"aud": "https://elsewhere.example"}, "bad_audience"),
    "expired": ({"iat": int(NOW - 120), "exp": int(NOW - SKEW - 1)}, "expired"),
    "too-long": ({"exp": int(NOW + 3600)}, "lifetime_too_long"),
    "other-issuer": ({"iss": "someone-else"}, "bad_issuer"),
    "two-audiences": ({"aud": [AUDIENCE, "https://other.example"]}, "bad_audience"),
}


@pytest.mark.parametrize(("claims", "reason"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_the_ledger_is_written_last_only_after_every_other_check(
    world: World, claims: dict[str, Any], reason: str
) -> None:
    refused = world.signer.assertion(jti="kept-jti", **claims)
    error = await world.refused(body(refused))
    assert (type(error), error.reason) == (InvalidClient, reason)
    assert len(world.ledger) == 0, "a refused assertion burnt its jti"
    assert error.attempt is not None and error.attempt.replay is None
    # The jti is still free for the client's next, valid assertion.
    approval = await world.run(body(world.signer.assertion(jti="kept-jti")))
    assert approval.attempt.replay is not None and approval.attempt.replay.result == "fresh"


async def test_a_bad_signature_never_reaches_the_ledger(world: World) -> None:
    stranger = make_signer("ES256", slot=1, kid=world.signer.kid)
    error = await world.refused(body(stranger.assertion()))
    assert (type(error), error.reason) == (KeyMiss, "bad_signature")
    assert len(world.ledger) == 0


async def test_a_replay_is_refused_and_counted_as_such(world: World) -> None:
    assertion = world.signer.assertion()
    await world.run(body(assertion))
    error = await world.refused(body(assertion))
    assert error.reason == "replayed"
    assert error.attempt is not None and error.attempt.replay is not None
    assert error.attempt.replay.result == "replayed"


async def test_reuse_lets_only_the_identical_assertion_through() -> None:
    signer = make_signer("ES256")
    world = World(signer, {CLIENT_ID: client(static(signer), reuse=True)})
    assertion = signer.assertion(jti="same")
    await world.run(body(assertion))
    await world.run(body(assertion))  # MSAL re-sends its assertion
    error = await world.refused(body(signer.assertion(jti="same")))  # same jti, other bytes
    assert error.reason == "replayed"


async def test_the_injected_clock_decides_expiry(world: World) -> None:
    assertion = world.signer.assertion(lifetime=60)
    world.clock.now = NOW + 60 + SKEW  # exp + skew is no longer in the future
    error = await world.refused(body(assertion))
    assert error.reason == "expired"


async def test_the_ledger_remembers_until_exp_plus_skew(world: World) -> None:
    assertion = world.signer.assertion(lifetime=60)
    await world.run(body(assertion))
    world.clock.now = NOW + 60 + SKEW - 0.5  # still verifiable, so still a replay
    assert (await world.refused(body(assertion))).reason == "replayed"


async def test_a_full_ledger_fails_closed(world: World) -> None:
    world.ledger = MemoryReplayLedger(1)
    await world.run(body(world.signer.assertion()))
    error = await world.refused(body(world.signer.assertion()))
    assert (type(error), error.reason) == (TemporarilyUnavailable, "replay_store_full")
    assert error.attempt is not None and error.attempt.replay is not None
    assert error.attempt.replay.result == "error"


async def test_unknown_client_and_client_id_mismatch(world: World) -> None:
    error = await world.refused(body(world.signer.assertion(client_id="nobody")))
    assert (type(error), error.reason) == (InvalidClient, "unknown_client")
    assert error.attempt is not None and error.attempt.client is None
    error = await world.refused(body(world.signer.assertion(), client_id="other"))
    assert (type(error), error.reason) == (InvalidRequest, "client_id_mismatch")


async def test_the_client_brake_refuses_before_any_signature_is_checked(world: World) -> None:
    stranger = make_signer("ES256", slot=1, kid=world.signer.kid)
    for _ in range(3):  # the client's burst of failures
        await world.refused(body(stranger.assertion()), remote="198.51.100.1")
    error = await world.refused(body(world.signer.assertion()), remote="198.51.100.2")
    assert isinstance(error, TooManyRequests) and error.reason == "too_many_failures"
    assert error.attempt is not None and error.attempt.verification_seconds is not None
    assert len(world.ledger) == 0


async def test_the_address_brake_spares_other_addresses(world: World) -> None:
    for _ in range(5):
        await world.refused(body(world.signer.assertion(client_id="nobody")))
    assert isinstance(await world.refused(body(world.signer.assertion())), TooManyRequests)
    approval = await world.run(body(world.signer.assertion()), remote="203.0.113.9")
    assert approval.client.client_id == CLIENT_ID


class RotatingKeySource:
    """An in-process key source whose next refetch brings a rotated key set."""

    kind = "jwks_uri"

    def __init__(self, keys: KeySet, rotated: KeySet) -> None:
        self.keys, self.rotated, self.refreshes = keys, rotated, 0

    def current(self) -> KeySet:
        return self.keys

    def ready(self) -> bool:
        return True

    def settled(self) -> bool:
        return True

    async def refresh_for_unknown_kid(self) -> KeySet:
        self.refreshes += 1
        self.keys = self.rotated
        return self.keys

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> KeySourceStatus:
        return KeySourceStatus(self.kind, None, len(self.keys.keys), None, None, None, False,
                               None, False, True)


async def test_a_key_miss_refetches_once_and_verifies_with_the_rotated_key() -> None:
    old, new = make_signer("ES256"), make_signer("ES256", slot=1)
    source = RotatingKeySource(old.keyset(), old.keyset(new))
    world = World(new, {CLIENT_ID: client(source)})
    approval = await world.run(body(new.assertion()))
    assert source.refreshes == 1
    assert approval.attempt.key_thumbprint == new.keyset().keys[0].thumbprint


async def test_a_static_key_set_is_not_refetched_on_a_miss(world: World) -> None:
    stranger = make_signer("ES256", slot=1)
    error = await world.refused(body(stranger.assertion()))
    assert (type(error), error.reason) == (KeyMiss, "no_matching_key")


async def test_migration_mode_lets_an_allowed_secret_through_unverified() -> None:
    signer = make_signer("ES256")
    legacy = LegacyPolicy(frozenset({"client_secret_post"}), NOW + 10, None, "@0")
    world = World(signer, {CLIENT_ID: client(static(signer), legacy=legacy)})
    secret_body = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret=x".encode()
    approval = await world.run(secret_body)
    assert (approval.reason, approval.legacy, approval.form) == ("legacy_secret", legacy, None)
    assert approval.attempt.method == "client_secret_post"
    basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:x".encode()).decode()
    error = await world.refused(b"grant_type=client_credentials", authorization=basic)
    assert isinstance(error, UnsupportedAuthMethod)  # the public answer of any secret refusal
    assert error.attempt is not None
    assert (error.reason, error.attempt.client, error.attempt.method) == (
        "secret_not_allowed", CLIENT_ID, "client_secret_basic")
    world.clock.now = NOW + 10
    assert (await world.refused(secret_body)).reason == "legacy_auth_expired"
    assert len(world.ledger) == 0


async def test_refused_secrets_of_a_configured_client_do_not_brake_its_keys(
    world: World,
) -> None:
    basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:guess".encode()).decode()
    for index in range(10):  # far past the client's burst of 3, from many addresses
        error = await world.refused(b"grant_type=client_credentials", authorization=basic,
                                    remote=f"198.51.100.{index}")
        assert error.reason == "secret_not_allowed"
    approval = await world.run(body(world.signer.assertion()), remote="203.0.113.9")
    assert approval.client.client_id == CLIENT_ID


@dataclass(frozen=True)
class PartnerIssuerKeys:
    """A second credential kind, as a later one plugs in: a partner's issuer signs for the
    client (iss = the partner, sub = the client id), with its own keys and replay namespace."""

    kind: ClassVar[str] = "partner_issuer"
    issuer: str
    client_id: str
    keys: KeySet

    @property
    def name(self) -> str:
        return "partner"

    def key_sources(self) -> tuple[KeySource, ...]:
        return ()

    def matches(self, parsed: ParsedAssertion) -> bool:
        return parsed.claims.get("iss") == self.issuer

    def verify(self, parsed: ParsedAssertion, endpoint: str, now: float,
               attempt: Attempt) -> VerifiedAssertion:
        claims: Mapping[str, object] = parsed.claims
        if claims.get("sub") != self.client_id:
            raise InvalidClient("bad_subject")
        as_client = ParsedAssertion(parsed.header, {**claims, "iss": self.client_id},
                                    parsed.signing_input, parsed.signature)
        return verify_assertion(as_client, self.keys, policy(self.client_id), now)

    async def verify_after_refresh(self, parsed: ParsedAssertion, endpoint: str,
                                   now: float, attempt: Attempt) -> VerifiedAssertion | None:
        return None

    def replay_entry(self, verified: VerifiedAssertion, assertion: str,
                     endpoint: str) -> ReplayEntry:
        return ReplayEntry(f"{self.issuer} {self.client_id}", verified.jti, verified.exp + SKEW)


async def test_a_new_credential_kind_plugs_in_beside_the_registered_keys() -> None:
    own, partner = make_signer("ES256"), make_signer("ES256", slot=1)
    registered = RegisteredKeys(CLIENT_ID, static(own), {ENDPOINT: policy()})
    federated = PartnerIssuerKeys("https://partner.example", CLIENT_ID, partner.keyset())
    runtime = ClientRuntime(CLIENT_ID, (registered, federated),
                            BackendCredential(CLIENT_ID, "none"))
    world = World(own, {CLIENT_ID: runtime})
    by_partner = partner.assertion(iss="https://partner.example", jti="shared")
    assert (await world.run(body(by_partner))).attempt.credential == "partner"
    by_client = own.assertion(jti="shared")  # another replay namespace: not a replay
    assert (await world.run(body(by_client))).attempt.credential == "jwks"
    # An assertion claiming neither is judged by the first credential, which names the fault.
    error = await world.refused(body(own.assertion(iss="https://unknown.example")))
    assert error.reason == "bad_issuer"


class IssueTimes(MemoryReplayLedger):
    """A memory ledger that keeps what it was told of each assertion's issue time."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.told: list[tuple[float | None, float, str | None]] = []

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        self.told.append((issued_at, clock_skew, fingerprint))
        return await super().record(client_id, jti, expires_at, now, fingerprint=fingerprint)


@pytest.mark.parametrize(
    ("claims", "issued_at"),
    [({"iat": NOW - 10.5}, NOW - 10.5), ({"iat": OMIT}, NOW + 60 - 300.0)],
    ids=["iat", "no-iat-exp-minus-max-lifetime"],
)
async def test_the_ledger_learns_when_the_assertion_was_issued(
    world: World, claims: dict[str, Any], issued_at: float
) -> None:
    world.ledger = ledger = IssueTimes()
    await world.run(body(world.signer.assertion(lifetime=60, **claims)))
    assert ledger.told == [(issued_at, SKEW, None)]


async def test_a_ledger_that_lost_its_data_answers_retry_later(world: World) -> None:
    class Forgetful(MemoryReplayLedger):
        async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                         fingerprint: str | None = None, issued_at: float | None = None,
                         clock_skew: float = 0.0) -> bool:
            raise RetryLater(Reason.REPLAY_STORE_RESET, 0.5, "lost")

    world.ledger = Forgetful(10)
    error = await world.refused(body(world.signer.assertion()))
    assert isinstance(error, RetryLater) and isinstance(error, TemporarilyUnavailable)
    assert (error.status, error.code, error.reason) == (
        503, "temporarily_unavailable", "replay_store_reset")
    assert error.attempt is not None and error.attempt.replay is not None
    assert error.attempt.replay.result == "error"


async def test_refusals_leave_no_reference_cycles(world: World) -> None:
    # A frame that keeps its own exception makes every refused request a cycle for the
    # collector: the flood an attacker controls would pay for it.
    stranger = make_signer("ES256", slot=1, kid=world.signer.kid)
    payloads = [body(stranger.assertion()), body(world.signer.assertion(aud="https://x.test")),
                body(world.signer.assertion(client_id="nobody")), b"client_id=a&x=%zz"]
    gc.collect()
    gc.disable()
    try:
        for _ in range(25):
            for payload in payloads:
                try:
                    await world.run(payload, remote=f"198.51.100.{len(payload) % 200}")
                except GatewayError:
                    pass
        left_for_the_collector = gc.collect()
    finally:
        gc.enable()
    assert left_for_the_collector < 25, left_for_the_collector
