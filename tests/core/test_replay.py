"""The replay ledger contract, run against every ledger implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.core.errors import TemporarilyUnavailable
from gateway.core.replay import ExpiringKeys, MemoryReplayLedger, ReplayLedger, ledger_key


class LedgerContract:
    """What every ReplayLedger must do; a subclass supplies the ``ledger`` fixture.

    The clock is injected, but a ledger may expire entries by its store's own clock (Redis),
    so expiry is checked per implementation, not here.
    """

    async def test_first_use_is_fresh_and_second_is_a_replay(self, ledger: ReplayLedger) -> None:
        assert await ledger.record("client-a", "jti-1", expires_at=200.0, now=100.0) is True
        assert await ledger.record("client-a", "jti-1", expires_at=200.0, now=150.0) is False

    async def test_same_jti_for_two_clients_is_two_entries(self, ledger: ReplayLedger) -> None:
        assert await ledger.record("client-a", "shared", expires_at=200.0, now=100.0) is True
        assert await ledger.record("client-b", "shared", expires_at=200.0, now=100.0) is True

    async def test_concurrent_records_of_one_jti_admit_exactly_one(
        self, ledger: ReplayLedger
    ) -> None:
        results = await asyncio.gather(
            *(ledger.record("c", "race", expires_at=200.0, now=100.0) for _ in range(50)))
        assert results.count(True) == 1

    async def test_the_same_fingerprint_is_accepted_again_and_no_other(
        self, ledger: ReplayLedger
    ) -> None:
        assert await ledger.record("c", "reused", 200.0, 100.0, fingerprint="f" * 64) is True
        assert await ledger.record("c", "reused", 200.0, 110.0, fingerprint="f" * 64) is True
        # The same jti in another assertion, or without reuse, is still a replay.
        assert await ledger.record("c", "reused", 200.0, 120.0, fingerprint="e" * 64) is False
        assert await ledger.record("c", "reused", 200.0, 130.0) is False
        assert await ledger.record("c", "plain", 200.0, 100.0) is True
        assert await ledger.record("c", "plain", 200.0, 110.0, fingerprint="f" * 64) is False

    async def test_a_fresh_ledger_is_ready(self, ledger: ReplayLedger) -> None:
        assert await ledger.record("c", "ready", expires_at=200.0, now=100.0) is True
        assert ledger.ready() is True


class TestMemoryLedger(LedgerContract):
    @pytest.fixture
    async def ledger(self) -> AsyncIterator[ReplayLedger]:
        instance = MemoryReplayLedger(1000)
        yield instance
        await instance.close()

    async def test_entry_is_kept_until_it_expires_then_forgotten(
        self, ledger: ReplayLedger
    ) -> None:
        assert await ledger.record("c", "j", expires_at=200.0, now=100.0) is True
        assert await ledger.record("c", "j", expires_at=200.0, now=199.999) is False
        assert await ledger.record("c", "j", expires_at=400.0, now=200.0) is True


@pytest.mark.parametrize(
    ("first", "second"),
    [(("a:b", "c"), ("a", "b:c")), (("a", "b\x00c"), ("a\x00b", "c"))],
    ids=["colon-split", "nul-split"],
)
def test_ledger_keys_do_not_collide_across_splits(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assert ledger_key(*first) != ledger_key(*second)


async def test_a_full_memory_ledger_refuses_rather_than_forgetting_live_entries() -> None:
    ledger = MemoryReplayLedger(max_entries=2)
    assert await ledger.record("c", "1", expires_at=200.0, now=100.0)
    assert await ledger.record("c", "2", expires_at=300.0, now=100.0)
    with pytest.raises(TemporarilyUnavailable) as caught:
        await ledger.record("c", "3", expires_at=300.0, now=100.0)
    assert caught.value.reason == "replay_store_full"
    assert caught.value.status == 503
    # The live entries are still remembered: the replays are refused.
    assert await ledger.record("c", "1", expires_at=200.0, now=150.0) is False
    assert await ledger.record("c", "2", expires_at=300.0, now=150.0) is False
    # Once one expires there is room again.
    assert await ledger.record("c", "3", expires_at=300.0, now=200.0) is True
    assert len(ledger) == 2


def test_memory_ledger_needs_a_positive_bound() -> None:
    with pytest.raises(ValueError):
        MemoryReplayLedger(max_entries=0)


def test_expiring_keys_keep_the_later_expiry_and_report_what_expires() -> None:
    dropped: list[bytes] = []
    keys = ExpiringKeys(on_expire=dropped.append)
    keys.add(b"a", 10.0)
    keys.add(b"a", 20.0)  # re-added for longer: the first heap entry must not drop it
    keys.add(b"b", 5.0)
    assert keys.live(b"a", 15.0) and not keys.live(b"b", 15.0)
    assert dropped == [b"b"]
    assert not keys.live(b"a", 20.0) and dropped == [b"b", b"a"] and len(keys) == 0
