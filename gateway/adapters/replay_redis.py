"""Redis replay ledgers: one atomic SET NX per check, a local tier in front, fail closed.

Redis is the authority shared by every gateway process. Deploy it with
``maxmemory-policy noeviction``: every replay key carries a TTL, so any ``volatile-*`` or
``allkeys-*`` policy may evict a live jti and let its replay through.

Failover window (Sentinel and Cluster): replication is asynchronous, so a write the old
primary acknowledged just before it failed may never reach the promoted replica; a jti used
in the last moments before a failover may then be accepted once more. ``WAIT 1`` after each
SET would close most of that window at the cost of a replica round trip per check; we do
not pay it. A check that times out may still land later: the jti is then burnt, and a client
that re-sends the same assertion after the 503 is refused (fail closed).

Checks made in the same event-loop iteration travel together in one pipeline (no MULTI:
each SET stays atomic on its own). A pipeline costs one connection, one write and one
read however many checks it carries, where redis-py spends ~100-150 µs of CPU on each
lone command. A batch that cannot be sent fails every check in it; an error reply fails
only its own check; each caller keeps its own budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    ChildDeadlockedError,
    IncorrectPolicyType,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.core.errors import TemporarilyUnavailable
from gateway.core.reasons import Reason
from gateway.core.replay import ExpiringKeys, ReplayLedger, ledger_key

KEY_PREFIX = "pkjwt:jti:"
MIN_TTL_MS = 1000
DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_LOCAL_MAX_ENTRIES = 100_000
SOCKET_TIMEOUT = 0.2
MAX_BATCH = 128  # checks per pipeline; a larger burst goes out as several pipelines
_PLAIN_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]+")
# Every way the store fails to answer: each class redis-py defines (RedisClusterException,
# ChildDeadlockedError and IncorrectPolicyType are not RedisErrors), our budget's TimeoutError
# and the socket's OSError.
STORE_FAILURES: tuple[type[Exception], ...] = (
    RedisError, RedisClusterException, ChildDeadlockedError, IncorrectPolicyType, TimeoutError,
    OSError,
)


def redis_key(client_id: str, jti: str) -> str:
    """``pkjwt:jti:{<client>}:<sha256(jti) hex>``: one client's keys share a cluster slot.

    A client id outside a plain character set (braces would break the hash tag) is written
    as ``~`` + hex of its UTF-8; plain ids never contain ``~``, so the mapping stays one to one.
    """
    tag = client_id if _PLAIN_CLIENT_ID.fullmatch(client_id) else (
        "~" + client_id.encode("utf-8", "surrogatepass").hex())
    digest = hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_PREFIX}{{{tag}}}:{digest}"


def ttl_ms(expires_at: float, now: float) -> int:
    """Milliseconds the key must live: until ``expires_at`` (exp + skew), at least 1 s."""
    return max(MIN_TTL_MS, math.ceil((expires_at - now) * 1000))


@dataclass(frozen=True, slots=True)
class _Failed:
    """A check's reply when its batch or its command failed.

    A value, not a raised exception: one error shared by a whole batch is then never
    re-raised in many tasks at once (each caller raises its own, chained to it).
    """

    error: BaseException


@dataclass(slots=True)
class _Claim:
    """One check waiting for the next pipeline; ``reply`` gets the previous value or _Failed."""

    key: str
    token: str
    ttl: int
    reply: asyncio.Future[Any]


class RedisReplayLedger:
    """The authoritative ledger: ``SET key token NX PX ttl GET`` in Redis >= 7.

    The random per-check token makes a retried SET recognisable: when a reply is lost and
    redis-py sends the command (or the whole pipeline) again, GET returns our own token and
    the check is fresh.
    """

    name = "redis"

    def __init__(self, client: Redis | RedisCluster, *, timeout: float = DEFAULT_TIMEOUT,
                 sentinels: Sequence[Redis] = (), batch: bool = True) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._batch = batch
        self._queue: list[_Claim] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self.client = client
        # redis-py's cluster client races when many commands arrive before its topology is
        # loaded (connections torn down under other commands): load it first, under its lock.
        self._cluster = isinstance(client, RedisCluster)
        self._timeout = timeout
        self._sentinels = tuple(sentinels)  # closed with the client
        # Optimistic until a check or ping says otherwise; await ping() at start-up for an
        # honest answer before serving.
        self._healthy = True

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None) -> bool:
        """True when fresh, False for a replay; raises TemporarilyUnavailable on any store
        problem (refused, timeout, pool exhausted, cluster error, Redis < 7).

        With ``fingerprint`` the stored value is the assertion's digest instead of a random
        token, so the same assertion finds its own value and is accepted again.
        """
        token = fingerprint if fingerprint is not None else secrets.token_hex(8)
        return await self.claim(redis_key(client_id, jti), token, ttl_ms(expires_at, now))

    async def claim(self, key: str, token: str, ttl: int) -> bool:
        """Set ``key`` to ``token`` unless present; True when absent or already ours.

        Raises TemporarilyUnavailable as ``record`` does.
        """
        previous: Any
        try:
            async with asyncio.timeout(self._timeout):
                if self._batch:
                    previous = await self._enqueue(key, token, ttl)
                else:
                    if self._cluster:
                        await self.client.initialize()  # a no-op once loaded
                    previous = await self.client.set(key, token, nx=True, px=ttl, get=True)
        except Exception as exc:
            # Broad on purpose, as translate_redis_error says: no answer means fail closed.
            self._healthy = False
            raise translate_redis_error(exc) from exc
        if isinstance(previous, _Failed):
            self._healthy = False
            raise translate_redis_error(previous.error) from previous.error
        self._healthy = True
        if isinstance(previous, bytes):
            previous = previous.decode("utf-8", "replace")
        return previous is None or previous == token

    def _enqueue(self, key: str, token: str, ttl: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Claim(key, token, ttl, reply))
        if not self._flush_scheduled:
            # Runs after every callback already due in this iteration: the requests that
            # became ready together reach this point before the batch leaves.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return reply

    def _flush(self) -> None:
        self._flush_scheduled = False
        # A caller whose budget ran out has cancelled its reply: nothing to send for it.
        due = [claim for claim in self._queue if not claim.reply.done()]
        self._queue = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(due), MAX_BATCH):
            task = loop.create_task(self._send(due[start:start + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Claim]) -> None:
        """One pipeline for ``batch``; every reply future is settled whatever happens."""
        try:
            # Bounded on its own too: a pipeline nobody waits for any more must not hold a
            # pooled connection on a hung server.
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    await self.client.initialize()
                async with self.client.pipeline(transaction=False) as pipe:
                    for claim in batch:
                        pipe.set(claim.key, claim.token, nx=True, px=claim.ttl, get=True)
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
            if len(replies) != len(batch):
                raise RedisConnectionError(f"{len(replies)} replies to {len(batch)} commands")
        except asyncio.CancelledError:
            _settle(batch, RedisConnectionError("replay ledger closed"))
            raise
        except Exception as exc:  # the whole batch had no answer: every check in it fails
            _settle(batch, exc)
            return
        for claim, reply in zip(batch, replies, strict=True):
            if claim.reply.done():
                continue
            # An error reply fails this check only.
            claim.reply.set_result(_Failed(reply) if isinstance(reply, Exception) else reply)

    async def ping(self) -> bool:
        """Ask the store now and update ``ready()``; never raises for a store problem."""
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    await self.client.initialize()
                await self.client.ping()
        except Exception:  # as in claim
            self._healthy = False
        else:
            self._healthy = True
        return self._healthy

    def ready(self) -> bool:
        return self._healthy

    async def close(self) -> None:
        _settle(self._queue, RedisConnectionError("replay ledger closed"))
        self._queue = []
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self.client.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()


def _settle(batch: list[_Claim], error: BaseException) -> None:
    failed = _Failed(error)
    for claim in batch:
        if not claim.reply.done():
            claim.reply.set_result(failed)


def translate_redis_error(exc: BaseException) -> TemporarilyUnavailable:
    """The ledger's answer when the store gave none: always 503 ``replay_store_unavailable``.

    An exception outside STORE_FAILURES is refused all the same, because redis-py also slips
    (an AttributeError or KeyError from a cluster client whose topology is loading or
    changing); its detail starts with ``unexpected`` so the log tells it from an outage.
    """
    detail = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, STORE_FAILURES):
        detail = f"unexpected {detail}"
    return TemporarilyUnavailable(Reason.REPLAY_STORE_UNAVAILABLE, detail[:200])


class _RecentJtis:
    """Keys this process saw recently, until their expiry; bounded, a cache only.

    When full it simply stops remembering: Redis still holds every entry, so forgetting
    here costs a round trip, never a replay.
    """

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._keys = ExpiringKeys()

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, key: bytes, now: float) -> bool:
        return self._keys.live(key, now)

    def remember(self, key: bytes, expires_at: float, now: float) -> None:
        self._keys.purge(now)
        if expires_at > now and len(self._keys) < self._max_entries:
            self._keys.add(key, expires_at)

    def clear(self) -> None:
        self._keys.clear()


class TieredReplayLedger:
    """A local tier answers replays this process already knows; Redis decides the rest.

    The local tier is only written after Redis answered, so a Redis failure never leaves an
    entry that would later refuse a legitimate retry. Replays Redis reports are remembered
    too: a flood of one captured assertion costs no round trips.
    """

    name = "tiered"

    def __init__(self, redis: RedisReplayLedger,
                 local_max_entries: int = DEFAULT_LOCAL_MAX_ENTRIES) -> None:
        if local_max_entries < 1:
            raise ValueError("local_max_entries must be positive")
        self.redis = redis
        self.local = _RecentJtis(local_max_entries)

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None) -> bool:
        """True when fresh, False for a replay; raises TemporarilyUnavailable when Redis
        cannot answer (and then remembers nothing)."""
        if fingerprint is not None:
            # A re-sent assertion may be legitimate: only Redis, holding its digest, can tell.
            return await self.redis.record(client_id, jti, expires_at, now,
                                           fingerprint=fingerprint)
        key = ledger_key(client_id, jti)
        if self.local.seen(key, now):
            return False
        fresh = await self.redis.record(client_id, jti, expires_at, now)
        self.local.remember(key, expires_at, now)
        return fresh

    async def ping(self) -> bool:
        """As RedisReplayLedger.ping."""
        return await self.redis.ping()

    def ready(self) -> bool:
        return self.redis.ready()

    async def close(self) -> None:
        self.local.clear()
        await self.redis.close()


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel master discovery with a pool that queues (bounded) instead of failing at once."""


def build_redis_ledger(
    *, url: str | None = None, sentinels: list[tuple[str, int]] | None = None,
    sentinel_master: str | None = None, cluster_nodes: list[tuple[str, int]] | None = None,
    password: str | None = None, username: str | None = None,
    timeout: float = DEFAULT_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
    tiered: bool = True, local_max_entries: int = DEFAULT_LOCAL_MAX_ENTRIES,
    batch: bool = True,
) -> ReplayLedger:
    """A Redis ledger for exactly one topology: ``url`` (redis://, rediss://, unix://),
    ``sentinels`` + ``sentinel_master``, or ``cluster_nodes``. Connects lazily; credentials
    in a URL win over ``username``/``password``. ``batch`` pipelines concurrent checks.

    Raises ValueError for a missing, ambiguous or malformed topology; RedisClusterException
    for cluster arguments redis-py refuses.
    """
    if [url is not None, sentinels is not None, cluster_nodes is not None].count(True) != 1:
        raise ValueError("give exactly one of url, sentinels, cluster_nodes")
    if max_connections < 1 or timeout <= 0:
        raise ValueError("max_connections and timeout must be positive")
    # redis-py defaults (5 s socket timeouts, 10 retries) would hold a request for up to a
    # minute on a hung Redis; one immediate retry is enough to survive a dropped connection.
    common: dict[str, Any] = {
        "socket_connect_timeout": min(SOCKET_TIMEOUT, timeout),
        "socket_timeout": min(SOCKET_TIMEOUT, timeout), "retry": Retry(NoBackoff(), 1)}
    if username is not None:
        common["username"] = username
    if password is not None:
        common["password"] = password
    client: Redis | RedisCluster
    sentinel_clients: list[Redis] = []
    if url is not None:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **common)
        client = Redis.from_pool(pool)
    elif sentinels is not None:
        if not sentinels or not sentinel_master:
            raise ValueError("sentinels need at least one address and sentinel_master")
        sentinel_kwargs = {k: v for k, v in common.items() if k not in ("username", "password")}
        # redis-py leaves Sentinel unannotated.
        manager = Sentinel(  # type: ignore[no-untyped-call]
            sentinels, sentinel_kwargs=sentinel_kwargs, **common)
        sentinel_clients = list(manager.sentinels)
        # master_for only: replay keys are never read from a replica, which may lag.
        client = manager.master_for(
            sentinel_master, connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections, timeout=timeout)
    else:
        if not cluster_nodes:
            raise ValueError("cluster_nodes needs at least one address")
        # Per-node pools fail at once when full (MaxConnectionsError): fail closed, fast.
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes],
            max_connections=max_connections, **common)
    ledger = RedisReplayLedger(client, timeout=timeout, sentinels=sentinel_clients,
                               batch=batch)
    return TieredReplayLedger(ledger, local_max_entries) if tiered else ledger
