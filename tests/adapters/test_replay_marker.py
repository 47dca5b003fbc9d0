"""The epoch markers of the Redis ledger against real Redis: a first start is no loss, a lost
or replaced marker is one, noticed once, agreed on by every process, Cluster slot by slot.

Each test starts redis-server processes of its own (it flushes and rewrites them).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.adapters.redis_topology import build_redis_ledger
from gateway.adapters.replay_marker import (
    MARKER_PREFIX,
    ONE_LOSS_SECONDS,
    EpochMarkers,
    Offer,
    loss_time_of,
    marker_key,
)
from gateway.adapters.replay_redis import RedisReplayLedger, hash_tag, redis_key
from gateway.adapters.replay_tiered import TieredReplayLedger
from gateway.core.errors import RetryLater, TemporarilyUnavailable
from gateway.core.replay import ReplayLedger
from tests.support.redis_servers import SENTINEL_MASTER, Server, Servers, cli, wait_until

SKEW = 1.0
LIFETIME = 60.0
ROOMY = 2.0  # budget where a test checks what is decided, not how fast


class Clock:
    """Wall time, moved forward on demand: loss times without waiting for them."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Resets:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def redis_of(ledger: ReplayLedger) -> RedisReplayLedger:
    inner = ledger.redis if isinstance(ledger, TieredReplayLedger) else ledger
    assert isinstance(inner, RedisReplayLedger)
    return inner


@asynccontextmanager
async def ledger_on(
    target: Server | list[Server], *, subjects: tuple[str, ...] = (), tiered: bool = False,
    on_reset: Callable[[], None] | None = None, clock: Clock | None = None,
) -> AsyncIterator[ReplayLedger]:
    """A Redis ledger on one server or a cluster; the ``clock`` dates the losses it notices."""
    common: dict[str, Any] = {"timeout": ROOMY, "subjects": subjects, "on_reset": on_reset}
    ledger: ReplayLedger
    if clock is not None:
        assert isinstance(target, Server) and not tiered
        ledger = RedisReplayLedger(Redis.from_url(target.url), clock=clock, **common)
    elif isinstance(target, list):
        ledger = build_redis_ledger(cluster_nodes=[("127.0.0.1", n.port) for n in target],
                                    tiered=tiered, **common)
    else:
        ledger = build_redis_ledger(url=target.url, tiered=tiered, **common)
    try:
        yield ledger
    finally:
        await ledger.close()


async def check(ledger: ReplayLedger, client_id: str, jti: str, issued_at: float, *,
                fingerprint: str | None = None) -> bool:
    """A record as the authenticator makes it, for an assertion issued at ``issued_at``."""
    now = time.time()
    return await ledger.record(client_id, jti, issued_at + LIFETIME + SKEW, now,
                               fingerprint=fingerprint, issued_at=issued_at, clock_skew=SKEW)


async def marker_of(url: str, client_id: str) -> bytes | None:
    async with Redis.from_url(url) as direct:
        value = await direct.get(marker_key(hash_tag(client_id)))
        assert value is None or isinstance(value, bytes)
        return value


async def flushall(server: Server) -> None:
    async with Redis.from_url(server.url) as direct:
        await direct.flushall()


async def refused(ledger: ReplayLedger, client_id: str, jti: str,
                  issued_at: float) -> RetryLater:
    with pytest.raises(RetryLater) as caught:
        await check(ledger, client_id, jti, issued_at)
    error = caught.value
    assert (error.reason, error.status, error.code) == (
        "replay_store_reset", 503, "temporarily_unavailable")
    return error


# --- the bookkeeping, without Redis --------------------------------------------------------


def test_a_marker_records_its_loss_time_and_zero_before_any() -> None:
    offer = Offer.new(1234.5)
    assert offer.first.endswith(b"|0") and loss_time_of(offer.first) == 0.0
    assert loss_time_of(offer.loss) == 1234.5
    assert offer.first.split(b"|")[0] == offer.loss.split(b"|")[0]
    assert loss_time_of(b"garbage") == loss_time_of(b"x|-5") == 0.0


def test_markers_share_the_slot_of_their_clients_jti_keys() -> None:
    for client_id in ("ci-pipeline", "a{b}", "caf\u00e9"):
        marker = marker_key(hash_tag(client_id))
        assert marker.startswith(MARKER_PREFIX)
        assert key_slot(marker.encode()) == key_slot(redis_key(client_id, "j").encode())


def test_the_bookkeeping_tells_a_first_start_an_adoption_and_a_conflict() -> None:
    resets = Resets()
    markers = EpochMarkers(["t"], on_reset=resets)
    offer = markers.offer(100.0)
    assert markers.offered("t", offer) == offer.first  # nothing known yet
    assert markers.observe("t", offer.first, None) is True  # we wrote it: a first start
    assert markers.unread == set() and markers.loss_time("t") is None
    assert markers.observe("t", offer.loss, offer.first) is True  # still the same epoch
    # A marker recording a later loss is adopted and counted; an unknown one recording no
    # later loss is a conflict for the script.
    assert markers.observe("t", b"", b"other|200.000") is True
    assert (markers.loss_time("t"), resets.count) == (200.0, 1)
    assert markers.observe("t", b"", b"third|0") is False
    assert markers.offer(150.0).loss.endswith(b"|200.001")  # always after a known loss
    markers.resolved("t", b"mine|230.000")  # within ONE_LOSS_SECONDS: the same loss
    assert (markers.loss_time("t"), resets.count) == (230.0, 1)
    markers.resolved("t", b"later|" + str(230 + ONE_LOSS_SECONDS + 1).encode())
    assert resets.count == 2


# --- one Redis ------------------------------------------------------------------------------


async def test_a_redis_that_never_held_a_marker_is_a_first_start(servers: Servers) -> None:
    server = servers.start()
    resets = Resets()
    long_ago = time.time() - 30
    async with ledger_on(server, subjects=("c",), on_reset=resets) as ledger:
        assert await redis_of(ledger).ping() is True  # reads (here: writes) the marker
        first = await marker_of(server.url, "c")
        assert first is not None and loss_time_of(first) == 0.0
        assert await check(ledger, "c", "j", long_ago) is True
        assert await check(ledger, "other", "j", long_ago) is True  # another tag, new too
        assert await marker_of(server.url, "c") == first
    assert resets.count == 0


@pytest.mark.parametrize("tiered", [False, True], ids=["redis", "tiered"])
async def test_a_flushed_redis_is_a_loss_and_what_was_issued_before_is_refused(
    servers: Servers, tiered: bool
) -> None:
    server = servers.start()
    resets = Resets()
    issued = time.time() - 5
    async with ledger_on(server, tiered=tiered, on_reset=resets) as ledger:
        assert await check(ledger, "c", "accepted-before", issued) is True
        await flushall(server)
        noticed = time.time()
        if tiered:  # this process remembers accepting it: a replay, for certain
            assert await check(ledger, "c", "accepted-before", issued) is False
        else:  # Redis no longer knows: it may have been accepted before
            await refused(ledger, "c", "accepted-before", issued)
        await refused(ledger, "c", "never-seen", issued)
        loss = redis_of(ledger).markers.loss_time("c")
        # Markers keep the loss time to the millisecond, rounded: it may be up to 0.5 ms ahead.
        assert loss is not None and noticed - 0.1 <= loss <= time.time() + 0.001
        assert loss_time_of(await marker_of(server.url, "c") or b"") == pytest.approx(loss)
        # Issued after the loss plus the skew: accepted (the clock is the test's, in step).
        assert await check(ledger, "c", "fresh", loss + SKEW) is True
        assert await check(ledger, "c", "fresh", loss + SKEW) is False
    assert resets.count == 1


async def test_a_replaced_marker_is_a_loss_settled_by_the_script(servers: Servers) -> None:
    server = servers.start()
    resets = Resets()
    issued = time.time() - 5
    async with ledger_on(server, on_reset=resets) as ledger:
        assert await check(ledger, "c", "j1", issued) is True
        # As a process started after a flush would have it: a first-start marker of its own.
        async with Redis.from_url(server.url) as direct:
            await direct.flushall()
            await direct.set(marker_key("c"), b"newcomer|0")
        await refused(ledger, "c", "j1", issued)
        written = await marker_of(server.url, "c")
        assert written is not None and written != b"newcomer|0"
        assert loss_time_of(written) == redis_of(ledger).markers.loss_time("c")
    assert resets.count == 1


async def test_the_retry_after_is_when_a_fresh_assertion_passes(servers: Servers) -> None:
    server = servers.start()
    async with ledger_on(server) as ledger:
        assert await check(ledger, "c", "j", time.time()) is True
        await flushall(server)
        error = await refused(ledger, "c", "j", time.time() - 1)
        loss = redis_of(ledger).markers.loss_time("c")
        assert loss is not None
        assert 0 < error.retry_after <= loss + SKEW - time.time() + 0.1
        # Known now: refused before any round trip, the jti untouched.
        await refused(ledger, "c", "untouched", loss - 10)
        async with Redis.from_url(server.url) as direct:
            assert await direct.exists(redis_key("c", "untouched")) == 0


async def test_a_reusable_assertion_is_never_refused_for_a_loss(servers: Servers) -> None:
    server = servers.start()
    issued = time.time() - 5
    digest = "f" * 64
    async with ledger_on(server, tiered=True) as ledger:
        assert await check(ledger, "c", "reused", issued, fingerprint=digest) is True
        await flushall(server)
        assert await check(ledger, "c", "reused", issued, fingerprint=digest) is True
        assert redis_of(ledger).markers.loss_time("c") is not None
        assert await check(ledger, "c", "reused", issued, fingerprint=digest) is True
        assert await check(ledger, "c", "reused", issued, fingerprint="e" * 64) is False
        # Without a known issue time the rule cannot apply either.
        assert await ledger.record("c", "undated", time.time() + 60, time.time()) is True


async def test_two_ledgers_noticing_at_once_agree_on_one_loss_time(servers: Servers) -> None:
    server = servers.start()
    for round_ in range(5):  # a race: several rounds, each on the same Redis
        clients = [f"r{round_}-c{index}" for index in range(5)]
        resets = [Resets(), Resets()]
        async with ledger_on(server, subjects=tuple(clients), on_reset=resets[0]) as first, \
                ledger_on(server, subjects=tuple(clients), on_reset=resets[1]) as second:
            assert await redis_of(first).ping() and await redis_of(second).ping()
            await flushall(server)
            if round_ % 2:  # and a newcomer wrote first-start markers: the script decides
                async with Redis.from_url(server.url) as direct:
                    for client_id in clients:
                        await direct.set(marker_key(client_id), f"new{round_}|0")
            issued = time.time() - 1
            results = await asyncio.gather(*(
                check(ledger, client_id, f"j{round_}", issued)
                for client_id in clients for ledger in (first, second)),
                return_exceptions=True)
            assert all(isinstance(r, RetryLater) for r in results), results
            await asyncio.sleep(0.05)  # the sweep of the other markers, in the background
            for client_id in clients:
                stored = loss_time_of(await marker_of(server.url, client_id) or b"")
                assert stored > 0
                assert redis_of(first).markers.loss_time(client_id) == stored
                assert redis_of(second).markers.loss_time(client_id) == stored
        # One loss, however many clients and processes noticed it: counted once by each.
        assert [r.count for r in resets] == [1, 1], round_


async def test_the_process_that_notices_checks_its_other_markers_at_once(
    servers: Servers,
) -> None:
    server = servers.start()
    async with ledger_on(server, subjects=("a", "b", "c")) as ledger:
        assert await redis_of(ledger).ping() is True
        await flushall(server)
        await refused(ledger, "a", "j", time.time() - 1)
        markers = redis_of(ledger).markers
        deadline = time.monotonic() + ROOMY
        while markers.loss_time("c") is None:  # the sweep runs beside the request
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        loss = markers.loss_time("a")
        assert markers.loss_time("b") == markers.loss_time("c") == loss
        for client_id in ("a", "b", "c"):
            assert loss_time_of(await marker_of(server.url, client_id) or b"") == loss


async def test_a_process_started_after_the_loss_adopts_its_time(servers: Servers) -> None:
    server = servers.start()
    issued = time.time() - 5
    async with ledger_on(server) as witness:
        assert await check(witness, "c", "j", issued) is True
        await flushall(server)
        await refused(witness, "c", "j", issued)
        loss = redis_of(witness).markers.loss_time("c")
    resets = Resets()
    async with ledger_on(server, subjects=("c",), on_reset=resets) as later:
        assert await redis_of(later).ping() is True
        assert redis_of(later).markers.loss_time("c") == loss
        await refused(later, "c", "j", issued)
        await refused(later, "c", "other", issued)
    assert resets.count == 0  # an old loss read at start-up is not news


async def test_each_loss_is_counted_once_and_a_later_one_again(servers: Servers) -> None:
    server = servers.start()
    clock, resets = Clock(), Resets()
    async with ledger_on(server, subjects=("a", "b"), on_reset=resets, clock=clock) as ledger:
        assert await redis_of(ledger).ping() is True
        for loss_number in (1, 2):
            await flushall(server)
            issued = clock() - 1
            for client_id in ("a", "b", "a"):
                with pytest.raises(RetryLater):
                    await check(ledger, client_id, f"j{loss_number}", issued)
            assert resets.count == loss_number
            clock.offset += ONE_LOSS_SECONDS + 1


async def test_a_store_error_still_fails_closed(servers: Servers) -> None:
    server = servers.start()
    async with ledger_on(server) as ledger:
        assert await check(ledger, "c", "j", time.time()) is True
        server.kill()
        with pytest.raises(TemporarilyUnavailable) as caught:
            await check(ledger, "c", "k", time.time())
        assert caught.value.reason == "replay_store_unavailable"
        assert not isinstance(caught.value, RetryLater)
        server.start()  # empty: a loss, noticed at the first check that reaches it
        await refused(ledger, "c", "j", time.time() - 1)


async def test_a_marker_that_cannot_be_read_fails_its_checks_only(servers: Servers) -> None:
    server = servers.start()
    async with ledger_on(server) as ledger:
        async with Redis.from_url(server.url) as direct:  # SET ... GET on a list: WRONGTYPE
            await direct.rpush(marker_key("broken"), "x")
        results = await asyncio.gather(
            check(ledger, "broken", "j", time.time()), check(ledger, "fine", "j", time.time()),
            return_exceptions=True)
        assert isinstance(results[0], TemporarilyUnavailable)
        assert results[0].reason == "replay_store_unavailable" and results[1] is True


# --- Cluster: one marker per slot in use ----------------------------------------------------


@pytest.mark.slow
async def test_a_cluster_node_that_lost_its_data_is_a_loss_for_its_slots_only(
    cluster: list[Server],
) -> None:
    prefix = f"slot-{secrets.token_hex(4)}-"
    clients = [f"{prefix}{index}" for index in range(30)]  # tags on every node
    resets = Resets()
    issued = time.time() - 5
    async with ledger_on(cluster, subjects=tuple(clients), on_reset=resets) as ledger:
        assert await redis_of(ledger).ping() is True
        assert await asyncio.gather(*(check(ledger, c, "j", issued) for c in clients)) == (
            [True] * 30)
        # One node forgets (as if restarted empty; the cluster keeps its slots).
        lost = cluster[0]
        with redis.Redis(port=lost.port, socket_timeout=2) as direct:
            on_lost = {key.decode() for key in direct.keys(f"{MARKER_PREFIX}{{{prefix}*")}
            direct.flushall()
        assert on_lost and len(on_lost) < 30
        results = await asyncio.gather(*(check(ledger, c, "j", issued) for c in clients),
                                       return_exceptions=True)
        for client_id, result in zip(clients, results, strict=True):
            if marker_key(hash_tag(client_id)) in on_lost:
                assert isinstance(result, RetryLater), (client_id, result)
            else:
                assert result is False, (client_id, result)  # the replay, refused as usual
        # An unknown marker on one slot goes through the script, in that slot.
        survivor = next(c for c in clients if marker_key(hash_tag(c)) not in on_lost)
        await redis_of(ledger).client.set(marker_key(hash_tag(survivor)), b"newcomer|0")
        await refused(ledger, survivor, "k", issued)
        stored = await redis_of(ledger).client.get(marker_key(hash_tag(survivor)))
        assert isinstance(stored, bytes) and loss_time_of(stored) > 0
    assert resets.count == 1


# --- Sentinel: a promoted replica that missed the marker -----------------------------------


@pytest.mark.slow
async def test_a_failover_to_a_replica_that_missed_the_marker_is_a_loss(
    servers: Servers,
) -> None:
    master = servers.start("--repl-diskless-sync-delay", "0")
    replica = servers.start("--replicaof", "127.0.0.1", str(master.port))
    wait_until(lambda: "master_link_status:up" in cli(replica.port, "info", "replication"),
               "the replica to sync")
    watcher = servers.start(sentinel_of=master.port)
    wait_until(lambda: str(replica.port) in cli(watcher.port, "sentinel", "replicas",
                                                 SENTINEL_MASTER), "the sentinel to see it")
    resets = Resets()
    ledger = build_redis_ledger(sentinels=[("127.0.0.1", watcher.port)],
                                sentinel_master=SENTINEL_MASTER, tiered=False, timeout=0.5,
                                subjects=("c",), on_reset=resets)
    accepted: list[tuple[str, float]] = []
    outcomes: list[object] = []
    stop = asyncio.Event()

    async def load() -> None:  # fresh assertions, ten at a time, through it all
        while not stop.is_set():
            issued = time.time()
            jtis = [secrets.token_hex(8) for _ in range(10)]
            results = await asyncio.gather(*(check(ledger, "c", jti, issued) for jti in jtis),
                                           return_exceptions=True)
            accepted.extend((jti, issued) for jti, r in zip(jtis, results, strict=True)
                            if r is True)
            outcomes.extend(results)
            await asyncio.sleep(0.02)

    try:
        # The replica falls behind: frozen, its link cut by the master (whatever was sent
        # would still wait in its socket), so the marker and the jtis below reach the master
        # only.
        replica.pause()
        try:
            cli(master.port, "client", "kill", "type", "replica")
            assert await redis_of(ledger).ping() is True
            running = asyncio.ensure_future(load())
            await asyncio.sleep(0.5)
            assert accepted, outcomes
            master.kill()
        finally:
            replica.resume()
        cli(watcher.port, "sentinel", "failover", SENTINEL_MASTER)
        wait_until(lambda: cli(watcher.port, "sentinel", "get-master-addr-by-name",
                               SENTINEL_MASTER).split() == ["127.0.0.1", str(replica.port)],
                   "the replica to be promoted", seconds=10)
        deadline = time.monotonic() + 10
        while redis_of(ledger).markers.loss_time("c") is None:
            assert time.monotonic() < deadline, outcomes[-10:]
            await asyncio.sleep(0.05)
        stop.set()
        await running
        # Under load, every check had one of three answers; none was an accepted replay.
        assert all(r is True or isinstance(r, TemporarilyUnavailable) for r in outcomes)
        # Every jti the old master accepted and the new one never heard of is refused.
        before_loss = [(jti, issued) for jti, issued in accepted
                       if issued < (redis_of(ledger).markers.loss_time("c") or 0)]
        assert before_loss
        for jti, issued in before_loss:
            await refused(ledger, "c", jti, issued)
        assert resets.count == 1
    finally:
        stop.set()
        await ledger.close()
