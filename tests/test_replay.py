"""The replay ledger contract, run against every ledger implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.errors import TemporarilyUnavailable
from gateway.replay import MemoryReplayLedger, ReplayLedger, ledger_key

LedgerFactory = Callable[[int], ReplayLedger]
FACTORIES: dict[str, LedgerFactory] = {"memory": MemoryReplayLedger}


@pytest.fixture(params=sorted(FACTORIES))
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[ReplayLedger]:
    instance = FACTORIES[request.param](1000)
    yield instance
    await instance.close()


async def test_first_use_is_fresh_and_second_is_a_replay(ledger: ReplayLedger) -> None:
    assert await ledger.record("client-a", "jti-1", expires_at=200.0, now=100.0) is True
    assert await ledger.record("client-a", "jti-1", expires_at=200.0, now=150.0) is False


async def test_same_jti_for_two_clients_is_two_entries(ledger: ReplayLedger) -> None:
    assert await ledger.record("client-a", "shared", expires_at=200.0, now=100.0) is True
    assert await ledger.record("client-b", "shared", expires_at=200.0, now=100.0) is True


async def test_entry_is_kept_until_it_expires_then_forgotten(ledger: ReplayLedger) -> None:
    assert await ledger.record("c", "j", expires_at=200.0, now=100.0) is True
    assert await ledger.record("c", "j", expires_at=200.0, now=199.999) is False
    assert await ledger.record("c", "j", expires_at=400.0, now=200.0) is True


async def test_concurrent_records_of_one_jti_admit_exactly_one(ledger: ReplayLedger) -> None:
    results = await asyncio.gather(
        *(ledger.record("c", "race", expires_at=200.0, now=100.0) for _ in range(50)))
    assert results.count(True) == 1


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
