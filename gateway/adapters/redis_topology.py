"""Redis clients for one topology (a URL, Sentinel, or Cluster) and the replay ledger over them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from gateway.adapters.replay_redis import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    SOCKET_TIMEOUT,
    RedisReplayLedger,
)
from gateway.adapters.replay_tiered import DEFAULT_LOCAL_MAX_ENTRIES, TieredReplayLedger
from gateway.core.replay import ReplayLedger


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel master discovery with a pool that queues (bounded) instead of failing at once."""


def build_redis_ledger(
    *, url: str | None = None, sentinels: list[tuple[str, int]] | None = None,
    sentinel_master: str | None = None, cluster_nodes: list[tuple[str, int]] | None = None,
    password: str | None = None, username: str | None = None,
    timeout: float = DEFAULT_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
    tiered: bool = True, local_max_entries: int = DEFAULT_LOCAL_MAX_ENTRIES,
    batch: bool = True, subjects: Iterable[str] = (),
    on_reset: Callable[[], None] | None = None,
) -> ReplayLedger:
    """A Redis ledger for exactly one topology: ``url`` (redis://, rediss://, unix://),
    ``sentinels`` + ``sentinel_master``, or ``cluster_nodes``. Connects lazily; credentials
    in a URL win over ``username``/``password``. ``batch`` pipelines concurrent checks;
    ``subjects`` and ``on_reset`` are RedisReplayLedger's.

    Raises ValueError for a missing, ambiguous or malformed topology; RedisClusterException
    for cluster arguments redis-py refuses.
    """
    client, sentinel_clients = connect_redis(
        url=url, sentinels=sentinels, sentinel_master=sentinel_master,
        cluster_nodes=cluster_nodes, password=password, username=username, timeout=timeout,
        max_connections=max_connections)
    ledger = RedisReplayLedger(client, timeout=timeout, sentinels=sentinel_clients,
                               batch=batch, subjects=subjects, on_reset=on_reset)
    return TieredReplayLedger(ledger, local_max_entries) if tiered else ledger


def connect_redis(
    *, url: str | None = None, sentinels: list[tuple[str, int]] | None = None,
    sentinel_master: str | None = None, cluster_nodes: list[tuple[str, int]] | None = None,
    password: str | None = None, username: str | None = None,
    timeout: float = DEFAULT_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
    socket_timeout: float = SOCKET_TIMEOUT,
) -> tuple[Redis | RedisCluster, list[Redis]]:
    """A lazily connecting client of the primary for one topology (as ``build_redis_ledger``
    takes it), and the Sentinel clients to close with it. Socket operations wait at most
    ``socket_timeout`` (and never longer than ``timeout``).

    Raises ValueError and RedisClusterException as ``build_redis_ledger`` does.
    """
    if [url is not None, sentinels is not None, cluster_nodes is not None].count(True) != 1:
        raise ValueError("give exactly one of url, sentinels, cluster_nodes")
    if max_connections < 1 or timeout <= 0:
        raise ValueError("max_connections and timeout must be positive")
    # redis-py defaults (5 s socket timeouts, 10 retries) would hold a request for up to a
    # minute on a hung Redis; one immediate retry is enough to survive a dropped connection.
    common: dict[str, Any] = {
        "socket_connect_timeout": min(socket_timeout, timeout),
        "socket_timeout": min(socket_timeout, timeout), "retry": Retry(NoBackoff(), 1)}
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
    return client, sentinel_clients
