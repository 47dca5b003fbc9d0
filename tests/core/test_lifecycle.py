"""Key lifecycle rules: key_expiry and retire refuse a key from the day after its date, and
the policy flags (old, unused, expiring, retiring, expired; dormant clients), with an
injected clock."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gateway.core.attempt import Attempt
from gateway.core.backend_auth import BackendCredential
from gateway.core.clients import ClientRuntime
from gateway.core.credentials import RegisteredKeys
from gateway.core.errors import InvalidClient
from gateway.core.keysource import KeySource
from gateway.core.lifecycle import (
    FLAGS,
    KeyDeadline,
    KeyDeadlines,
    LifecyclePolicy,
    check_key_deadline,
    client_dormant,
    credential_flags,
    earliest_first_seen,
    refuse_from,
    too_many_keys,
)
from gateway.core.reasons import Reason
from gateway.core.usage import Usage
from tests.core.test_authenticator import (
    ENDPOINT,
    RotatingKeySource,
    World,
    body,
    policy,
    static,
)
from tests.support.tokens import CLIENT_ID, make_signer

DAY = 86400.0
LAST_DAY = date(2026, 12, 31)
MIDNIGHT = datetime(2027, 1, 1, tzinfo=UTC).timestamp()  # the first moment refused


def registered(source: KeySource, *, expiry: dict[str, date] | None = None,
               retire: dict[str, date] | None = None) -> ClientRuntime:
    """A client with these key_expiry and retire dates, as the runtime builds it."""
    keys = RegisteredKeys(CLIENT_ID, source, {ENDPOINT: policy()},
                          deadlines=KeyDeadlines.of_settings(expiry or {}, retire or {}))
    return ClientRuntime(CLIENT_ID, (keys,),
                         BackendCredential(CLIENT_ID, "client_secret_basic", "s3cret"))


# -- Deadlines ------------------------------------------------------------------------------

def test_a_date_is_the_last_day_accepted_the_next_midnight_utc_is_refused() -> None:
    assert refuse_from(LAST_DAY) == MIDNIGHT
    deadline = KeyDeadline.on(LAST_DAY, retired=True)
    assert (deadline.refuse_from, deadline.setting) == (MIDNIGHT, "retire")
    assert KeyDeadline.on(LAST_DAY, retired=False).setting == "key_expiry"


def test_no_dates_means_no_deadlines_to_check() -> None:
    assert KeyDeadlines.of_settings({}, {}) is None


def test_a_key_is_found_by_kid_or_thumbprint_and_the_sooner_date_wins() -> None:
    deadlines = KeyDeadlines.of_settings({"k1": date(2027, 6, 30)}, {"tp-1": LAST_DAY})
    assert deadlines is not None
    assert deadlines.of("k1", "tp-other") == KeyDeadline.on(date(2027, 6, 30), retired=False)
    assert deadlines.of(None, "tp-1") == KeyDeadline.on(LAST_DAY, retired=True)
    # Named twice (kid in key_expiry, thumbprint in retire): the sooner end applies.
    assert deadlines.of("k1", "tp-1") == KeyDeadline.on(LAST_DAY, retired=True)
    assert deadlines.of("k2", "tp-2") is None
    assert deadlines.matched([("k1", "x"), (None, "tp-9")]) == {"k1"}


@pytest.mark.parametrize(("now", "refused"), [
    (MIDNIGHT - 1, False), (MIDNIGHT, True), (MIDNIGHT + 400 * DAY, True),
], ids=["last-second-of-the-day", "midnight-after", "long-after"])
def test_check_key_deadline_refuses_from_midnight_after_the_date(now: float,
                                                                  refused: bool) -> None:
    deadlines = KeyDeadlines.of_settings({"k1": LAST_DAY}, {})
    assert deadlines is not None
    attempt = Attempt()
    if not refused:
        check_key_deadline(deadlines, "k1", "tp", now, attempt)
        assert attempt.key_thumbprint is None
        return
    with pytest.raises(InvalidClient) as caught:
        check_key_deadline(deadlines, "k1", "tp", now, attempt)
    assert caught.value.reason is Reason.KEY_EXPIRED
    assert "expired" in caught.value.detail and "key_expiry date 2026-12-31" in caught.value.detail
    assert attempt.key_thumbprint == "tp"  # the audit line names the refused key


# -- The request path, attacker's side: a valid signature with a key past its end -----------

async def test_a_key_past_its_key_expiry_is_refused_with_a_valid_signature() -> None:
    signer = make_signer("ES256", kid="old")
    world = World(signer, {CLIENT_ID: registered(static(signer), expiry={"old": LAST_DAY})})
    world.clock.now = MIDNIGHT - 60
    approval = await world.run(body(signer.assertion(now=world.clock.now)))
    assert approval.client.client_id == CLIENT_ID  # through its last day
    world.clock.now = MIDNIGHT
    error = await world.refused(body(signer.assertion(now=world.clock.now, jti="after")))
    assert (type(error), error.reason) == (InvalidClient, Reason.KEY_EXPIRED)
    assert "expired" in error.detail
    assert len(world.ledger) == 1, "a refused assertion burnt its jti"
    assert error.attempt is not None and error.attempt.key_thumbprint is not None


async def test_a_retired_key_is_refused_after_its_date_by_thumbprint_the_new_one_is_not() -> None:
    old, new = make_signer("ES256", kid=None), make_signer("ES256", slot=1, kid=None)
    thumbprint = old.keyset().keys[0].thumbprint
    world = World(old, {CLIENT_ID: registered(static(old, new),
                                              retire={thumbprint: LAST_DAY})})
    world.clock.now = MIDNIGHT - 1
    await world.run(body(old.assertion(now=world.clock.now)))  # the overlap: still accepted
    world.clock.now = MIDNIGHT + DAY
    error = await world.refused(body(old.assertion(now=world.clock.now)))
    assert error.reason is Reason.KEY_EXPIRED and "retired" in error.detail
    assert "retire date 2026-12-31" in error.detail
    approval = await world.run(body(new.assertion(now=world.clock.now)))
    assert approval.attempt.key_thumbprint == new.keyset().keys[0].thumbprint


async def test_a_retired_key_is_refused_after_a_refetch_too() -> None:
    old, new = make_signer("ES256", kid="old"), make_signer("ES256", slot=1, kid="old")
    # The cached set has another key under the same kid: the miss refetches, and the
    # refetched set holds the retired key.
    source = RotatingKeySource(new.keyset(), old.keyset())
    world = World(old, {CLIENT_ID: registered(source, retire={"old": LAST_DAY})})
    world.clock.now = MIDNIGHT
    error = await world.refused(body(old.assertion(now=world.clock.now)))
    assert source.refreshes == 1
    assert error.reason is Reason.KEY_EXPIRED


async def test_a_client_without_dates_has_no_deadlines_to_check() -> None:
    signer = make_signer("ES256")
    client = registered(static(signer))
    assert isinstance(client.credentials[0], RegisteredKeys)
    assert client.credentials[0].deadlines is None
    world = World(signer, {CLIENT_ID: client})
    world.clock.now = MIDNIGHT + 1000 * DAY
    await world.run(body(signer.assertion(now=world.clock.now)))


# -- Flags ----------------------------------------------------------------------------------

NOW = MIDNIGHT
POLICY = LifecyclePolicy(key_max_age=90 * DAY, key_unused_after=30 * DAY,
                         client_dormant_after=60 * DAY, max_keys_per_client=2,
                         expiry_warning=14 * DAY)


def usage(first_days_ago: float | None, last_days_ago: float | None, uses: int = 1) -> Usage:
    return Usage(None if first_days_ago is None else NOW - first_days_ago * DAY,
                 None if last_days_ago is None else NOW - last_days_ago * DAY, uses)


FLAG_CASES = {
    "fresh-and-used": (usage(10, 1), None, None, set()),
    "old": (usage(91, 1), None, None, {"old"}),
    "unused-since-last-use": (usage(60, 31), None, None, {"unused"}),
    "never-used-counts-from-first-seen": (usage(31, None, 0), None, None, {"unused"}),
    "never-used-but-new": (usage(5, None, 0), None, None, set()),
    "unknown-usage": (None, None, None, set()),
    "expiring-within-the-warning": (usage(1, 1), KeyDeadline.on(date(2027, 1, 10),
                                                                  retired=False), None,
                                    {"expiring"}),
    "expiry-far-away": (usage(1, 1), KeyDeadline.on(date(2028, 1, 1), retired=False), None,
                        set()),
    "retiring-during-the-overlap": (usage(1, 1), KeyDeadline.on(date(2027, 6, 1),
                                                                  retired=True), None,
                                    {"retiring"}),
    "expired-key": (usage(1, 1), KeyDeadline.on(LAST_DAY, retired=False), None, {"expired"}),
    "retired-key": (usage(100, 40), KeyDeadline.on(LAST_DAY, retired=True), None,
                    {"expired", "old", "unused"}),
    "certificate-expiring": (usage(1, 1), None, NOW + 3 * DAY, {"expiring"}),
    "certificate-expired": (usage(1, 1), None, NOW - 1, {"expired"}),
}


@pytest.mark.parametrize(("used", "deadline", "not_after", "flags"), FLAG_CASES.values(),
                         ids=FLAG_CASES.keys())
def test_credential_flags(used: Usage | None, deadline: KeyDeadline | None,
                          not_after: float | None, flags: set[str]) -> None:
    found = credential_flags(used, NOW, POLICY, deadline=deadline, not_after=not_after)
    assert found == flags and found <= set(FLAGS)


def test_rules_left_unset_flag_nothing() -> None:
    off = LifecyclePolicy()
    assert credential_flags(usage(1000, 1000), NOW, off) == frozenset()
    assert not client_dormant(NOW - 1000 * DAY, None, NOW, off)
    assert not too_many_keys(100, off)


@pytest.mark.parametrize(("last_success", "first_seen", "dormant"), [
    (NOW - 61 * DAY, NOW - 400 * DAY, True),
    (NOW - 59 * DAY, NOW - 400 * DAY, False),
    (None, NOW - 61 * DAY, True),   # never authenticated: counted from its first sighting
    (None, NOW - 1 * DAY, False),
    (None, None, False),            # nothing known of it
], ids=["silent-61-days", "used-59-days-ago", "never-used-old", "never-used-new", "unknown"])
def test_client_dormant(last_success: float | None, first_seen: float | None,
                        dormant: bool) -> None:
    assert client_dormant(last_success, first_seen, NOW, POLICY) is dormant


def test_too_many_keys_and_the_earliest_first_sighting() -> None:
    assert not too_many_keys(2, POLICY) and too_many_keys(3, POLICY)
    assert earliest_first_seen([usage(3, 1), usage(9, None), usage(None, None)]) == NOW - 9 * DAY
    assert earliest_first_seen([]) is None
