"""Usage shared in real Redis: books of several processes merged (sum, earliest, latest),
kept across restarts, and nothing lost or counted twice while Redis is away.

Every test has a redis-server of its own (``servers``), so no key is shared between tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import pytest
from redis.crc import key_slot

from gateway.adapters.redis_topology import connect_redis
from gateway.adapters.usage_store import RedisUsageStore, parse_usage_hash, usage_key
from gateway.core.usage import Usage, UsageBook
from tests.support.redis_servers import SENTINEL_MASTER, Server, Servers, cli, wait_until

ROOMY = 2.0  # where a test checks what is merged, not how fast
SHORT = 0.3  # where a test makes Redis miss its answers

StoreFactory = Callable[..., Awaitable[RedisUsageStore]]


@pytest.fixture
def redis(servers: Servers) -> Server:
    return servers.start()


@pytest.fixture
async def new_store(redis: Server) -> AsyncIterator[StoreFactory]:
    """Stores over ``redis`` (or the topology given), each with its own book and client;
    they never sync by themselves: the tests call ``sync``. Closed at teardown."""
    made: list[RedisUsageStore] = []

    async def make(book: UsageBook | None = None, *, timeout: float = ROOMY,
                   client_ids: Iterable[str] = (), **topology: object) -> RedisUsageStore:
        where = topology or {"url": redis.url}
        client, sentinels = connect_redis(**where,  # type: ignore[arg-type]
                                          timeout=timeout, socket_timeout=timeout,
                                          max_connections=2)
        ids = tuple(client_ids)
        store = RedisUsageStore(book or UsageBook(), client, client_ids=lambda: ids,
                                flush_interval=3600, timeout=timeout, sentinels=sentinels)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()  # once only, whatever the test did


def test_one_clients_keys_share_a_cluster_slot_and_odd_ids_stay_apart() -> None:
    key = usage_key("a{b}")
    assert key_slot(key.encode()) == key_slot(f"{key}:sent:0123".encode())
    assert len({usage_key(c) for c in ["a", "~61", "61", "a{", "{a}", "a b"]}) == 6


def test_parse_takes_the_three_fields_per_reference_and_ignores_the_rest() -> None:
    fields = {b"u:key:a": b"3", b"f:key:a": b"100.25", b"l:key:a": b"200.5",
              b"l:trust:ci": b"7", b"x:key:a": b"1", b"u:": b"1", b"u:key:b": b"nope"}
    assert parse_usage_hash(fields) == {"key:a": Usage(100.25, 200.5, 3),
                                        "trust:ci": Usage(None, 7.0, 0),
                                        "key:b": Usage(None, None, 0)}


async def test_two_processes_see_the_sum_the_earliest_and_the_latest(
    new_store: StoreFactory,
) -> None:
    a, b = await new_store(), await new_store()
    a.book.record("svc", "key:one", 1000.5)
    a.book.record("svc", "key:one", 1300.25)
    b.book.record("svc", "key:one", 900.125)
    b.book.record("svc", "key:one", 1200.0)
    b.book.record("svc", "key:two", 1100.0)
    b.book.observe("svc", ["key:three"], 800.0)
    assert await a.sync() and await b.sync() and await a.sync()
    expected = {"key:one": Usage(900.125, 1300.25, 4), "key:two": Usage(1100.0, 1100.0, 1),
                "key:three": Usage(800.0, None, 0)}
    assert a.book.of_client("svc") == b.book.of_client("svc") == expected
    assert a.book.last_success("svc") == b.book.last_success("svc") == 1300.25
    assert await a.read("svc") == expected
    # Syncing again sends nothing twice.
    assert await a.sync() and await b.sync()
    assert await a.read("svc") == expected


async def test_a_configured_client_used_only_elsewhere_is_read_back(
    new_store: StoreFactory,
) -> None:
    elsewhere = await new_store()
    here = await new_store(client_ids=["svc"])
    elsewhere.book.record("svc", "key:one", 500.0)
    assert await elsewhere.sync() and await here.sync()
    assert here.book.usage("svc", "key:one") == Usage(500.0, 500.0, 1)


async def test_concurrent_flushes_of_many_processes_merge_exactly(
    new_store: StoreFactory,
) -> None:
    stores = [await new_store() for _ in range(6)]
    rng = random.Random(15)
    times: dict[str, list[float]] = {}
    for round_ in range(5):  # every process records, then all flush at once
        start = 1e9 + round_ * 1e6
        for store in stores:  # each process's clock runs forward; the processes' interleave
            whens = sorted(round(rng.uniform(start, start + 1e6), 6)
                           for _ in range(rng.randint(1, 40)))
            for when in whens:
                ref = f"key:{rng.randint(1, 4)}"
                store.book.record("svc", ref, when)
                times.setdefault(ref, []).append(when)
        assert all(await asyncio.gather(*(store.sync() for store in stores)))
    assert all(await asyncio.gather(*(store.sync() for store in stores)))
    expected = {ref: Usage(min(seen), max(seen), len(seen)) for ref, seen in times.items()}
    assert await stores[0].read("svc") == expected
    for store in stores:
        assert store.book.of_client("svc") == expected


async def test_usage_survives_a_restart_of_every_process(new_store: StoreFactory) -> None:
    first = await new_store()
    await first.start()
    first.book.record("svc", "key:one", 1000.0)
    first.book.record("svc", "certificate:ab", 1001.0)
    await first.close()  # the shutdown flush sends what the last requests used

    later = await new_store(client_ids=["svc"])
    await later.start()  # reads the shared view before serving
    later.book.observe("svc", ["key:one"], 5000.0)  # the configured key, seen anew
    later.book.record("svc", "key:one", 6000.0)
    assert later.book.usage("svc", "key:one") == Usage(1000.0, 6000.0, 2)
    assert later.book.usage("svc", "certificate:ab") == Usage(1001.0, 1001.0, 1)
    await later.close()
    assert await (await new_store()).read("svc") == {"key:one": Usage(1000.0, 6000.0, 2),
                                       "certificate:ab": Usage(1001.0, 1001.0, 1)}


async def test_redis_paused_then_back_loses_nothing_and_counts_nothing_twice(
    new_store: StoreFactory, redis: Server, caplog: pytest.LogCaptureFixture,
) -> None:
    """A paused Redis takes the pipeline into its socket, misses the deadline, then applies
    it on resuming: the batch sent again must then be recognised, not added twice."""
    store = await new_store(timeout=SHORT)
    store.book.record("svc", "key:one", 100.0)
    assert await store.sync()
    redis.pause()
    try:
        for n in range(5):
            store.book.record("svc", "key:one", 200.0 + n)  # the request path never waits
            store.book.record("svc", "key:two", 300.0 + n)
            with caplog.at_level(logging.WARNING, logger="gateway"):
                assert await store.sync() is False
    finally:
        redis.resume()
    # One warning when the trouble starts, not one per attempt.
    assert len([r for r in caplog.records if "did not answer" in r.message]) == 1
    store.book.record("svc", "key:one", 400.0)
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert await store.sync()  # the batch sent again, then what waited behind it
    assert any("answers again" in r.message for r in caplog.records)
    expected = {"key:one": Usage(100.0, 400.0, 7), "key:two": Usage(300.0, 304.0, 5)}
    assert await store.read("svc") == expected
    assert store.book.of_client("svc") == expected


async def test_redis_down_at_start_then_back(new_store: StoreFactory, redis: Server) -> None:
    redis.kill()
    store = await new_store(timeout=SHORT)
    await store.start()  # does not fail; the book works alone meanwhile
    store.book.record("svc", "key:one", 100.0)
    assert await store.sync() is False
    assert store.book.usage("svc", "key:one") == Usage(100.0, 100.0, 1)
    redis.start()
    store.book.record("svc", "key:one", 200.0)
    assert await store.sync()
    assert await store.read("svc") == {"key:one": Usage(100.0, 200.0, 2)}
    await store.close()


async def test_the_background_task_flushes_by_itself(redis: Server) -> None:
    client, _ = connect_redis(url=redis.url, timeout=ROOMY, socket_timeout=ROOMY)
    store = RedisUsageStore(UsageBook(), client, flush_interval=0.05, timeout=ROOMY)
    await store.start()
    try:
        store.book.record("svc", "key:one", 100.0)
        for _ in range(200):
            if await store.read("svc"):
                break
            await asyncio.sleep(0.05)
        assert await store.read("svc") == {"key:one": Usage(100.0, 100.0, 1)}
    finally:
        await store.close()


@pytest.mark.slow
async def test_cluster_keeps_each_client_in_one_slot_and_merges(
    new_store: StoreFactory, cluster: list[Server],
) -> None:
    nodes = [("127.0.0.1", node.port) for node in cluster]
    a, b = await new_store(cluster_nodes=nodes), await new_store(cluster_nodes=nodes)
    clients = [f"svc-{n}" for n in range(12)]  # spread over every node
    for client_id in clients:
        a.book.record(client_id, "key:one", 100.0)
        b.book.record(client_id, "key:one", 200.0)
    assert await a.sync() and await b.sync() and await a.sync()
    for client_id in clients:
        assert a.book.usage(client_id, "key:one") == Usage(100.0, 200.0, 2)


@pytest.mark.slow
async def test_sentinel_merges_on_the_master(new_store: StoreFactory, servers: Servers) -> None:
    master = servers.start()
    watcher = servers.start(sentinel_of=master.port)
    wait_until(lambda: cli(watcher.port, "sentinel", "get-master-addr-by-name",
                           SENTINEL_MASTER).split() == ["127.0.0.1", str(master.port)],
               "the sentinel to know the master")
    topology = {"sentinels": [("127.0.0.1", watcher.port)], "sentinel_master": SENTINEL_MASTER}
    a, b = await new_store(**topology), await new_store(**topology)
    a.book.record("svc", "trust:ci", 100.0)
    b.book.record("svc", "trust:ci", 50.0)
    assert await a.sync() and await b.sync() and await a.sync()
    assert a.book.usage("svc", "trust:ci") == Usage(50.0, 100.0, 2)
    assert "u:trust:ci" in cli(master.port, "hkeys", usage_key("svc"))
