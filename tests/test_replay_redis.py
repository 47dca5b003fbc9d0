"""The Redis and tiered replay ledgers against real Redis: standalone, Cluster and Sentinel.

The shared server is REDIS_URL (default redis://127.0.0.1:6379/0): tests there use a unique
client-id prefix and delete their own keys (never FLUSHDB). Fault and topology tests start
their own ``redis-server`` processes on free loopback ports and kill them in teardown.
Outside CI, a missing Redis skips with the reason; with CI=true it fails.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot

from gateway.errors import TemporarilyUnavailable
from gateway.replay import ReplayLedger
from gateway.replay_redis import (
    KEY_PREFIX,
    RedisReplayLedger,
    TieredReplayLedger,
    build_redis_ledger,
    redis_key,
    ttl_ms,
)
from tests.test_replay import LedgerContract

IN_CI = os.environ.get("CI", "").lower() == "true"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BUDGET = 0.25  # the ledger's per-check timeout in these tests
SLACK = 0.5  # allowed on top of the budget on a noisy machine
SENTINEL_MASTER = "gwmaster"


def unavailable(reason: str) -> None:
    """Skip outside CI (visibly); fail in CI, where Redis must be there."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


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
        for key in client.scan_iter(match=f"{KEY_PREFIX}{{{prefix}*", count=500):
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

    async def record(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        return await self.inner.record(self.prefix + client_id, jti, expires_at, now)

    def ready(self) -> bool:
        return self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()


# --- our own redis-server processes ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cli(port: int, *args: str) -> str:
    result = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                            text=True, timeout=10, check=True)
    return result.stdout


class Server:
    """One redis-server on a loopback port; restartable on the same port."""

    def __init__(self, port: int, args: list[str], workdir: Path) -> None:
        self.port = port
        self.args = args
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "server.log").open("ab")
        with log:
            self.proc = subprocess.Popen(["redis-server", *self.args], cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = (self.workdir / "server.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"redis-server on {self.port} did not start: {tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a SIGSTOPped server too
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class Servers:
    """Starts servers in a temp dir and owns them: ``stop_all`` kills every one it started."""

    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            unavailable("redis-server and redis-cli are not on PATH")
        self.root = root
        self.started: list[Server] = []

    def start(self, *extra: str, sentinel_of: int | None = None) -> Server:
        """A plain server with ``extra`` arguments, or a sentinel watching ``sentinel_of``."""
        for _ in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            workdir = self.root / str(port)
            workdir.mkdir()
            args: list[str] = []
            if sentinel_of is not None:  # sentinel rewrites its config: a file of its own
                (workdir / "sentinel.conf").write_text(
                    f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {sentinel_of} 1\n"
                    f"sentinel down-after-milliseconds {SENTINEL_MASTER} 5000\n")
                args = ["sentinel.conf", "--sentinel"]
            args += ["--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(workdir), *extra]
            server = Server(port, args, workdir)
            self.started.append(server)
            try:
                server.start()
            except RuntimeError:
                continue
            return server
        raise RuntimeError("could not start redis-server on a free port")

    def stop_all(self) -> list[int]:
        """Kill every server; returns the pids still alive afterwards (should be none)."""
        for server in self.started:
            server.kill()
        return [s.proc.pid for s in self.started if s.proc is not None and s.proc.poll() is None]


def wait_until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    owned = Servers(tmp_path)
    yield owned
    assert owned.stop_all() == [], "redis-server processes left behind"


def cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in cli(port, "cluster", "info")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    owned = Servers(tmp_path_factory.mktemp("cluster"))
    try:
        nodes = [owned.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", "5000") for _ in range(3)]
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{node.port}" for node in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, timeout=30, check=True)
        for node in nodes:
            wait_until(functools.partial(cluster_ok, node.port), f"cluster_state:ok on {node.port}")
        yield nodes
    finally:
        assert owned.stop_all() == [], "redis-server processes left behind"


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
            instance = build_redis_ledger(url=shared_url, tiered=tiered, timeout=BUDGET)
        elif topology == "cluster":
            nodes = request.getfixturevalue("cluster")
            instance = build_redis_ledger(cluster_nodes=[("127.0.0.1", n.port) for n in nodes],
                                          tiered=tiered, timeout=BUDGET)
        else:
            watcher = request.getfixturevalue("sentinel")[1]
            instance = build_redis_ledger(sentinels=[("127.0.0.1", watcher.port)],
                                          sentinel_master=SENTINEL_MASTER, tiered=tiered,
                                          timeout=BUDGET)
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
        assert isinstance(token, bytes) and re.fullmatch(rb"[0-9a-f]{16}", token)
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
    first = build_redis_ledger(url=shared_redis_url, tiered=tiered)
    second = build_redis_ledger(url=shared_redis_url, tiered=tiered)
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
    ledgers = [build_redis_ledger(cluster_nodes=nodes, tiered=False) for _ in range(2)]
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
