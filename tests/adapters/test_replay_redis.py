"""The Redis and tiered replay ledgers against real Redis: standalone, Cluster and Sentinel.

The shared server is REDIS_URL (default redis://127.0.0.1:6379/0): tests there use a unique
client-id prefix and delete their own keys (never FLUSHDB). Fault and topology tests start
their own ``redis-server`` processes on free loopback ports and kill them in teardown.
Outside CI, a missing Redis skips with the reason; with CI=true it fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot

from gateway.adapters.redis_topology import build_redis_ledger
from gateway.adapters.replay_marker import MARKER_PREFIX
from gateway.adapters.replay_redis import (
    KEY_PREFIX,
    MAX_BATCH,
    RedisReplayLedger,
    redis_key,
    ttl_ms,
)
from gateway.adapters.replay_tiered import TieredReplayLedger
from gateway.core.errors import TemporarilyUnavailable
from gateway.core.replay import ReplayLedger
from tests.core.test_replay import LedgerContract
from tests.support.redis_servers import (
    SENTINEL_MASTER,
    Server,
    Servers,
    cli,
    unavailable,
    wait_until,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BUDGET = 0.25  # the ledger's per-check timeout where a test measures failing within it
# Where a test checks what is decided, not how fast: room for a loaded machine (a cold
# cluster client loads its topology first), so a slow moment is not a false failure.
ROOMY = 2.0
SLACK = 0.5  # allowed on top of the budget on a noisy machine


# --- the shared server ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    target = url or DEFAULT_REDIS_URL
    try:
        with redis.Redis.from_url(target, socket_connect_timeout=1, socket_timeout=1) as client:
            version = str(client.info("server")["redis_version"])
    except (redis.RedisError, OSError) as exc:
        message = f"no Redis at {target} ({exc}); set REDIS_URL or start redis-server"
        if url:  # asked for explicitly: never skip
            pytest.fail(message)
        unavailable(message)
    if int(version.split(".")[0]) < 7:
        pytest.fail(f"Redis {version} at {target}: SET NX GET needs Redis >= 7")
    return target


def delete_namespace(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        for pattern in (f"{KEY_PREFIX}{{{prefix}*", f"{MARKER_PREFIX}{{{prefix}*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)


@pytest.fixture
def namespace(shared_redis_url: str) -> Iterator[str]:
    """A client-id prefix of this test's own; its keys on the shared server go at teardown."""
    prefix = f"t{secrets.token_hex(6)}-"
    yield prefix
    delete_namespace(shared_redis_url, prefix)


class PrefixedLedger:
    """Namespaces client ids, so tests sharing one Redis never see each other's keys."""

    def __init__(self, inner: ReplayLedger, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self.name = inner.name

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        return await self.inner.record(self.prefix + client_id, jti, expires_at, now,
                                       fingerprint=fingerprint, issued_at=issued_at,
                                       clock_skew=clock_skew)

    def ready(self) -> bool:
        return self.inner.ready()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """(master, sentinel); a replica follows the master."""
    owned = Servers(tmp_path_factory.mktemp("sentinel"))
    try:
        master = owned.start("--repl-diskless-sync-delay", "0")
        replica = owned.start("--replicaof", "127.0.0.1", str(master.port))
        watcher = owned.start(sentinel_of=master.port)
        wait_until(lambda: "master_link_status:up" in cli(replica.port, "info", "replication"),
                   "the replica to sync")
        wait_until(lambda: cli(watcher.port, "sentinel", "get-master-addr-by-name",
                               SENTINEL_MASTER).split() == ["127.0.0.1", str(master.port)],
                   "the sentinel to know the master")
        yield master, watcher
    finally:
        assert owned.stop_all() == [], "redis-server processes left behind"


# --- the contract, over every topology ------------------------------------------------------


@pytest.mark.slow
class TestRedisLedgerContract(LedgerContract):
    @pytest.fixture(params=["standalone", "standalone-tiered", "cluster", "cluster-tiered",
                            "sentinel-tiered"])
    async def ledger(self, request: pytest.FixtureRequest) -> AsyncIterator[ReplayLedger]:
        topology, _, tier = str(request.param).partition("-")
        tiered = tier == "tiered"
        prefix = f"t{secrets.token_hex(6)}-"
        shared_url = None
        if topology == "standalone":
            shared_url = request.getfixturevalue("shared_redis_url")
            instance = build_redis_ledger(url=shared_url, tiered=tiered, timeout=ROOMY)
        elif topology == "cluster":
            nodes = request.getfixturevalue("cluster")
            instance = build_redis_ledger(cluster_nodes=[("127.0.0.1", n.port) for n in nodes],
                                          tiered=tiered, timeout=ROOMY)
        else:
            watcher = request.getfixturevalue("sentinel")[1]
            instance = build_redis_ledger(sentinels=[("127.0.0.1", watcher.port)],
                                          sentinel_master=SENTINEL_MASTER, tiered=tiered,
                                          timeout=ROOMY)
        yield PrefixedLedger(instance, prefix)
        await instance.close()
        if shared_url is not None:
            delete_namespace(shared_url, prefix)

    async def test_entry_expires_by_the_store_clock(self, ledger: ReplayLedger) -> None:
        start = time.time()
        assert await ledger.record("c", "short", expires_at=start + 1.0, now=start) is True
        assert await ledger.record("c", "short", expires_at=start + 1.0, now=time.time()) is False
        await asyncio.sleep(1.1)
        now = time.time()
        assert await ledger.record("c", "short", expires_at=now + 1.0, now=now) is True


# --- keys and TTLs --------------------------------------------------------------------------

KEY_SHAPE = re.compile(r"pkjwt:jti:\{([^{}]+)\}:([0-9a-f]{64})")


@pytest.mark.parametrize(
    ("client_id", "tag"),
    [("ci-pipeline", "ci-pipeline"), ("urn:acme:svc/1", "urn:acme:svc/1"),
     ("a{b}", "~" + b"a{b}".hex()), ("}", "~7d"), ("~61", "~" + b"~61".hex()),
     ("caf\u00e9", "~" + "caf\u00e9".encode().hex()), ("a b", "~612062")],
    ids=["plain", "urn", "braces", "closing-brace", "tilde", "non-ascii", "space"],
)
def test_key_tags_the_client_and_hashes_the_jti(client_id: str, tag: str) -> None:
    key = redis_key(client_id, "jti-\ud800-lone-surrogate")
    match = KEY_SHAPE.fullmatch(key)
    assert match is not None and match.group(1) == tag


def test_distinct_client_ids_and_jtis_never_share_a_key() -> None:
    ids = ["a", "~61", "61", "a{", "a}", "{a}", "A", "a:b", "a\x7f"]
    keys = {redis_key(client_id, jti) for client_id in ids for jti in ("x", "y")}
    assert len(keys) == len(ids) * 2


def test_one_clients_keys_share_a_cluster_slot() -> None:
    assert key_slot(redis_key("a{b}", "one").encode()) == key_slot(
        redis_key("a{b}", "two").encode())


@pytest.mark.parametrize(
    ("expires_at", "now", "expected"),
    [(145.0, 100.0, 45_000), (100.0005, 100.0, 1000), (99.0, 100.0, 1000),
     (101.2345, 100.0, 1235)],
    ids=["exp-plus-skew", "floor-1s", "already-expired", "rounds-up"],
)
def test_ttl_is_expiry_minus_now_in_ms_at_least_one_second(
    expires_at: float, now: float, expected: int
) -> None:
    assert ttl_ms(expires_at, now) == expected


async def test_redis_keeps_the_key_until_exp_plus_skew(
    shared_redis_url: str, namespace: str
) -> None:
    ledger = build_redis_ledger(url=shared_redis_url, tiered=False)
    assert isinstance(ledger, RedisReplayLedger)
    now = time.time()
    exp, skew = now + 30.0, 15.0
    client_id = namespace + "ttl"
    try:
        assert await ledger.record(client_id, "j", expires_at=exp + skew, now=now)
        assert await ledger.record(client_id, "short", expires_at=now + 0.2, now=now)
        key = redis_key(client_id, "j")
        assert ttl_ms(exp + skew, now) in (45_000, 45_001)  # rounded up: float noise
        assert 44_000 < await ledger.client.pttl(key) <= 45_001
        assert 900 < await ledger.client.pttl(redis_key(client_id, "short")) <= 1000
        token = await ledger.client.get(key)
        assert isinstance(token, bytes) and re.fullmatch(rb"[0-9a-f]{13,28}", token)
    finally:
        await ledger.close()


# --- a lost reply: the retried SET is recognised as ours -----------------------------------


async def test_a_repeated_set_with_our_token_is_fresh_and_any_other_a_replay(
    shared_redis_url: str, namespace: str
) -> None:
    ledger = build_redis_ledger(url=shared_redis_url, tiered=False)
    assert isinstance(ledger, RedisReplayLedger)
    key = redis_key(namespace + "lost", "j")
    try:
        assert await ledger.claim(key, "our-token", 5000) is True
        assert await ledger.claim(key, "our-token", 5000) is True  # the retry after a lost reply
        assert await ledger.claim(key, "their-token", 5000) is False
    finally:
        await ledger.close()


class ReplyDroppingProxy:
    """Forwards to Redis, but swallows the reply to the first SET and hangs up on the client."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sets_forwarded = 0
        self.connections = 0
        self._dropped = False
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        for task in self._handlers:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 5)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._handlers.add(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        doomed = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if b"$3\r\nSET\r\n" in data:  # RESP for the SET command, not CLIENT SETINFO
                    self.sets_forwarded += 1
                    if not self._dropped:
                        self._dropped = True
                        doomed.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if doomed.is_set():
                    return  # Redis executed the SET; its reply never reaches the client
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for stream in (client_w, server_w):
                stream.close()
                await asyncio.gather(stream.wait_closed(), return_exceptions=True)


async def test_a_lost_reply_is_retried_and_recognised_as_our_own_write(servers: Servers) -> None:
    redis_server = servers.start()
    proxy = ReplyDroppingProxy(redis_server.port)
    async with proxy as port:
        ledger = build_redis_ledger(url=f"redis://127.0.0.1:{port}/0", tiered=False, timeout=2.0)
        try:
            assert await ledger.record("c", "j", expires_at=200.0, now=100.0) is True
            assert await ledger.record("c", "j", expires_at=200.0, now=100.0) is False
        finally:
            await ledger.close()
    # The SET, its retry on a new connection, then the replay's SET on that connection.
    assert (proxy.sets_forwarded, proxy.connections) == (3, 2)


# --- two processes, one Redis ---------------------------------------------------------------


@pytest.mark.parametrize("tiered", [False, True], ids=["redis", "tiered"])
async def test_two_processes_racing_one_jti_admit_exactly_one(
    shared_redis_url: str, namespace: str, tiered: bool
) -> None:
    first = build_redis_ledger(url=shared_redis_url, tiered=tiered, timeout=ROOMY)
    second = build_redis_ledger(url=shared_redis_url, tiered=tiered, timeout=ROOMY)
    try:
        results = await asyncio.gather(*(
            (first if i % 2 else second).record(namespace + "c", "race", 200.0, 100.0)
            for i in range(50)))
        assert results.count(True) == 1
    finally:
        await first.close()
        await second.close()


@pytest.mark.slow
async def test_two_processes_racing_on_a_cluster_admit_exactly_one(
    cluster: list[Server],
) -> None:
    nodes = [("127.0.0.1", node.port) for node in cluster]
    ledgers = [build_redis_ledger(cluster_nodes=nodes, tiered=False, timeout=ROOMY)
               for _ in range(2)]
    client_id = f"race-{secrets.token_hex(4)}"
    try:
        results = await asyncio.gather(*(
            ledgers[i % 2].record(client_id, "race", 200.0, 100.0) for i in range(50)))
        assert results.count(True) == 1
    finally:
        for ledger in ledgers:
            await ledger.close()


# --- the local tier -------------------------------------------------------------------------


async def test_tiered_refuses_a_jti_it_saw_without_asking_redis(
    shared_redis_url: str, namespace: str
) -> None:
    ledger = build_redis_ledger(url=shared_redis_url)
    assert isinstance(ledger, TieredReplayLedger)
    try:
        assert await ledger.record(namespace + "c", "j", 200.0, 100.0) is True
        await ledger.redis.client.delete(redis_key(namespace + "c", "j"))
        assert await ledger.record(namespace + "c", "j", 200.0, 150.0) is False
        assert await ledger.redis.record(namespace + "c", "j", 200.0, 150.0) is True
    finally:
        await ledger.close()


async def test_tiered_remembers_replays_that_redis_reported(
    shared_redis_url: str, namespace: str
) -> None:
    other = build_redis_ledger(url=shared_redis_url, tiered=False)
    ledger = build_redis_ledger(url=shared_redis_url)
    assert isinstance(ledger, TieredReplayLedger)
    try:
        assert await other.record(namespace + "c", "j", 200.0, 100.0) is True
        assert await ledger.record(namespace + "c", "j", 200.0, 100.0) is False
        assert len(ledger.local) == 1
    finally:
        await other.close()
        await ledger.close()


async def test_a_full_local_tier_stops_remembering_and_redis_still_decides(
    shared_redis_url: str, namespace: str
) -> None:
    ledger = build_redis_ledger(url=shared_redis_url, local_max_entries=2)
    assert isinstance(ledger, TieredReplayLedger)
    try:
        for jti in ("1", "2", "3"):
            assert await ledger.record(namespace + "c", jti, 200.0, 100.0) is True
        assert len(ledger.local) == 2
        assert await ledger.record(namespace + "c", "3", 200.0, 100.0) is False
    finally:
        await ledger.close()


# --- faults: fail closed within the budget, recover by themselves --------------------------


async def expect_unavailable(ledger: ReplayLedger, jti: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        await ledger.record("c", jti, 200.0, 100.0)
    assert time.monotonic() - started < BUDGET + SLACK
    assert caught.value.reason == "replay_store_unavailable"
    assert caught.value.status == 503
    assert ledger.ready() is False


async def test_a_refused_connection_is_a_503_and_recovery_is_automatic(servers: Servers) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=BUDGET)
    try:
        assert await ledger.record("c", "before", 200.0, 100.0) is True
        server.kill()
        await expect_unavailable(ledger, "while-down")
        server.start()
        assert await ledger.record("c", "after", 200.0, 100.0) is True
        assert ledger.ready() is True
    finally:
        await ledger.close()


async def test_a_hung_redis_is_a_503_within_the_budget_and_recovers(servers: Servers) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=BUDGET)
    assert isinstance(ledger, RedisReplayLedger)
    try:
        assert await ledger.record("c", "before", 200.0, 100.0) is True
        server.pause()
        try:
            await expect_unavailable(ledger, "while-hung")
            assert await ledger.ping() is False
        finally:
            server.resume()
        assert await ledger.ping() is True
        assert await ledger.record("c", "after", 200.0, 100.0) is True
    finally:
        await ledger.close()


async def test_an_exhausted_pool_is_a_503_not_a_hang(servers: Servers) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=BUDGET, max_connections=1)
    assert isinstance(ledger, RedisReplayLedger) and isinstance(ledger.client, Redis)
    pool = ledger.client.connection_pool
    try:
        held = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await expect_unavailable(ledger, "queued")
        finally:
            await pool.release(held)
        assert await ledger.record("c", "queued", 200.0, 100.0) is True
    finally:
        await ledger.close()


async def test_a_redis_failure_leaves_no_local_entry(servers: Servers) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, timeout=BUDGET)
    assert isinstance(ledger, TieredReplayLedger)
    try:
        server.kill()
        await expect_unavailable(ledger, "retried")
        assert len(ledger.local) == 0
        server.start()  # empty: the failed check never reached Redis
        assert await ledger.record("c", "retried", 200.0, 100.0) is True
        assert await ledger.record("c", "retried", 200.0, 100.0) is False
    finally:
        await ledger.close()


@pytest.mark.slow
async def test_a_hung_cluster_is_a_503_within_the_budget_and_recovers(
    cluster: list[Server],
) -> None:
    ledger = build_redis_ledger(cluster_nodes=[("127.0.0.1", n.port) for n in cluster],
                                tiered=False, timeout=BUDGET)
    client_id = f"hang-{secrets.token_hex(4)}"
    try:
        assert await ledger.record(client_id, "before", 200.0, 100.0) is True
        for node in cluster:
            node.pause()
        try:
            await expect_unavailable(ledger, "while-hung")
        finally:
            for node in cluster:
                node.resume()
        assert await ledger.record(client_id, "after", 200.0, 100.0) is True
    finally:
        await ledger.close()


# --- batching: concurrent checks share a pipeline ------------------------------------------


class ConnectionCount:
    """Counts pool checkouts: one per pipeline (or per lone command)."""

    def __init__(self, ledger: ReplayLedger, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(ledger, RedisReplayLedger) and isinstance(ledger.client, Redis)
        pool = ledger.client.connection_pool
        original = pool.get_connection
        self.checkouts = 0

        async def counted(*args: object, **kwargs: object) -> object:
            self.checkouts += 1
            return await original(*args, **kwargs)  # type: ignore[no-untyped-call]

        monkeypatch.setattr(pool, "get_connection", counted)


async def record_all(ledger: ReplayLedger, jtis: list[str]) -> list[bool | BaseException]:
    return await asyncio.gather(*(ledger.record("c", jti, 200.0, 100.0) for jti in jtis),
                                return_exceptions=True)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
async def test_concurrent_checks_travel_in_one_pipeline(
    servers: Servers, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, batch=batch, timeout=ROOMY)
    count = ConnectionCount(ledger, monkeypatch)
    jtis = [f"j{index}" for index in range(50)]
    try:
        results = await record_all(ledger, [*jtis, "j0"])
        # Unbatched, the two j0 checks race on separate connections: exactly one wins.
        assert results[1:50] == [True] * 49 and {results[0], results[50]} == {True, False}
        assert await record_all(ledger, jtis) == [False] * 50
    finally:
        await ledger.close()
    # Unbatched, every concurrent check takes a connection of its own.
    assert count.checkouts == (2 if batch else 101)


async def test_a_burst_larger_than_a_batch_goes_out_as_several_pipelines(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False)
    count = ConnectionCount(ledger, monkeypatch)
    try:
        results = await record_all(ledger, [f"j{index}" for index in range(MAX_BATCH + 1)])
        assert results == [True] * (MAX_BATCH + 1)
    finally:
        await ledger.close()
    assert count.checkouts == 2


async def test_an_error_reply_fails_only_its_own_check(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=BUDGET)
    count = ConnectionCount(ledger, monkeypatch)
    try:
        async with Redis.from_url(server.url) as direct:  # SET ... GET on a list: WRONGTYPE
            await direct.rpush(redis_key("c", "wrongtype"), "x")
        results = await record_all(ledger, ["a", "wrongtype", "b"])
        assert results[0] is True and results[2] is True
        assert isinstance(results[1], TemporarilyUnavailable)
        assert results[1].reason == "replay_store_unavailable"
        assert "WRONGTYPE" in results[1].detail
        assert count.checkouts == 1  # the three were one pipeline
    finally:
        await ledger.close()


async def test_a_batch_without_an_answer_fails_every_check_in_it_and_no_more(
    servers: Servers
) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=BUDGET)
    jtis = [f"j{index}" for index in range(20)]
    try:
        assert await ledger.record("c", "before", 200.0, 100.0) is True
        server.kill()
        started = time.monotonic()
        results = await record_all(ledger, jtis)
        assert time.monotonic() - started < BUDGET + SLACK
        assert all(isinstance(result, TemporarilyUnavailable) for result in results), results
        assert ledger.ready() is False
        server.start()  # empty: the failed batch never reached Redis
        assert await record_all(ledger, jtis) == [True] * 20
        assert ledger.ready() is True
    finally:
        await ledger.close()


async def test_a_frozen_redis_fails_a_whole_batch_within_the_budget(servers: Servers) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=BUDGET)
    try:
        assert await ledger.record("c", "before", 200.0, 100.0) is True
        server.pause()
        try:
            for attempt in range(2):  # the pipeline in flight, then one on a new connection
                started = time.monotonic()
                results = await record_all(ledger, [f"hung{attempt}-{i}" for i in range(30)])
                assert time.monotonic() - started < BUDGET + SLACK
                assert all(isinstance(r, TemporarilyUnavailable) for r in results), results
        finally:
            server.resume()
        assert await ledger.ping() is True
        assert await record_all(ledger, ["after-1", "after-2"]) == [True, True]
    finally:
        await ledger.close()


async def test_closing_settles_checks_in_flight(servers: Servers) -> None:
    server = servers.start()
    ledger = build_redis_ledger(url=server.url, tiered=False, timeout=2.0)
    assert await ledger.record("c", "before", 200.0, 100.0) is True
    server.pause()
    try:
        pending = asyncio.ensure_future(record_all(ledger, ["x", "y"]))
        await asyncio.sleep(0.05)  # the pipeline is out, waiting on the frozen server
        started = time.monotonic()
        await ledger.close()
        results = await asyncio.wait_for(pending, 1.0)
        assert time.monotonic() - started < 1.0
        assert all(isinstance(r, TemporarilyUnavailable) for r in results), results
    finally:
        server.resume()


@pytest.mark.slow
async def test_a_cluster_batch_spanning_every_node_is_answered_per_key(
    cluster: list[Server],
) -> None:
    ledger = build_redis_ledger(cluster_nodes=[("127.0.0.1", n.port) for n in cluster],
                                tiered=False, timeout=BUDGET)
    prefix = f"batch-{secrets.token_hex(4)}-"
    clients = [f"{prefix}{index}" for index in range(60)]  # tags in many slots
    try:
        first = await asyncio.gather(*(ledger.record(c, "j", 200.0, 100.0) for c in clients))
        again = await asyncio.gather(*(ledger.record(c, "j", 200.0, 100.0) for c in clients))
        assert (first, again) == ([True] * 60, [False] * 60)
    finally:
        await ledger.close()
    per_node = []
    for node in cluster:  # KEYS on a cluster node lists that node's keys only
        with redis.Redis(port=node.port, socket_timeout=2) as direct:
            per_node.append(len(direct.keys(f"{KEY_PREFIX}{{{prefix}*")))
    assert sum(per_node) == 60 and all(per_node), per_node


# --- Sentinel: writes go to the master ------------------------------------------------------


@pytest.mark.slow
async def test_sentinel_writes_land_on_the_master(sentinel: tuple[Server, Server]) -> None:
    master, watcher = sentinel
    ledger = build_redis_ledger(sentinels=[("127.0.0.1", watcher.port)],
                                sentinel_master=SENTINEL_MASTER, tiered=False)
    client_id = f"sentinel-{secrets.token_hex(4)}"
    try:
        assert await ledger.record(client_id, "j", 200.0, 100.0) is True
        assert await ledger.record(client_id, "j", 200.0, 100.0) is False
    finally:
        await ledger.close()
    async with Redis.from_url(master.url) as direct:
        assert await direct.exists(redis_key(client_id, "j")) == 1


# --- the factory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topology",
    [{}, {"url": DEFAULT_REDIS_URL, "cluster_nodes": [("127.0.0.1", 7000)]},
     {"sentinels": [("127.0.0.1", 26379)]}, {"sentinels": [], "sentinel_master": "m"},
     {"cluster_nodes": []}, {"url": DEFAULT_REDIS_URL, "timeout": 0},
     {"url": DEFAULT_REDIS_URL, "max_connections": 0}, {"url": "http://nope"}],
    ids=["none", "two", "sentinel-without-master", "no-sentinels", "no-nodes", "zero-timeout",
         "zero-pool", "bad-scheme"],
)
def test_the_factory_refuses_a_missing_or_ambiguous_topology(topology: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_redis_ledger(**topology)  # type: ignore[arg-type]


async def test_the_factory_bounds_the_pool_timeouts_and_retries() -> None:
    ledger = build_redis_ledger(url="rediss://user@127.0.0.1:6390/2", password="pw",
                                max_connections=7)
    assert isinstance(ledger, TieredReplayLedger) and ledger.name == "tiered"
    assert isinstance(ledger.redis.client, Redis)
    pool = ledger.redis.client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (7, BUDGET)
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.2, 0.2)
    assert kwargs["retry"].get_retries() == 1
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "pw", 2)
    assert pool.connection_class.__name__ == "SSLConnection"
    await ledger.close()


async def test_the_factory_builds_sentinel_and_cluster_clients_lazily() -> None:
    via_sentinel = build_redis_ledger(sentinels=[("127.0.0.1", 1)], sentinel_master="m",
                                      tiered=False)
    via_cluster = build_redis_ledger(cluster_nodes=[("127.0.0.1", 1)], tiered=False)
    assert isinstance(via_sentinel, RedisReplayLedger)
    assert isinstance(via_cluster, RedisReplayLedger)
    assert isinstance(via_sentinel.client, Redis)
    pool = via_sentinel.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master
    assert isinstance(pool, BlockingConnectionPool) and pool.max_connections == 64
    assert isinstance(via_cluster.client, RedisCluster)
    # Nothing listens on port 1: both fail closed, fast.
    for ledger in (via_sentinel, via_cluster):
        await expect_unavailable(ledger, "nowhere")
        await ledger.close()
