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
only its own check. One deadline bounds each batch (replay.timeout from when it leaves,
one loop iteration after its checks were made) and settles every check it carries.

Data loss (restart without persistence, FLUSHALL, failover to a replica that missed writes):
each batch also checks the epoch marker of its tags (``replay_marker``). Once a loss is
known, an assertion issued before it plus the clock skew is refused with 503
``replay_store_reset`` and a Retry-After: it may have been accepted before the loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ChildDeadlockedError,
    IncorrectPolicyType,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.adapters.replay_marker import RESOLVE_SCRIPT, EpochMarkers, Offer, marker_key
from gateway.core.errors import RetryLater, TemporarilyUnavailable
from gateway.core.reasons import Reason

KEY_PREFIX = "pkjwt:jti:"
MIN_TTL_MS = 1000
DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CONNECTIONS = 64
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


def hash_tag(client_id: str) -> str:
    """The hash tag of a client's keys: the id itself when plain, else ``~`` + hex of its UTF-8.

    Braces would break the hash tag; plain ids never contain ``~``, so the mapping stays one
    to one.
    """
    if _PLAIN_CLIENT_ID.fullmatch(client_id):
        return client_id
    return "~" + client_id.encode("utf-8", "surrogatepass").hex()


def redis_key(client_id: str, jti: str) -> str:
    """``pkjwt:jti:{<tag>}:<sha256(jti) hex>``: one client's keys share a cluster slot."""
    digest = hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_PREFIX}{{{hash_tag(client_id)}}}:{digest}"


def _tag_of(key: str) -> str:
    return key[len(KEY_PREFIX) + 1:key.index("}", len(KEY_PREFIX))]


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
    tag: str
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
                 sentinels: Sequence[Redis] = (), batch: bool = True,
                 subjects: Iterable[str] = (), on_reset: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``subjects``: the client ids whose markers are read at first contact, so that a
        loss before this process first checks one of them is noticed all the same.
        ``on_reset`` is called once per loss of the store's data this process learns of;
        ``clock`` dates the losses it notices."""
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
        self.markers = EpochMarkers((hash_tag(subject) for subject in subjects), on_reset)
        # Per-check tokens: a random prefix per ledger and a counter, no random draw a check.
        self._token_prefix = secrets.token_hex(6)
        self._token_counter = itertools.count()
        self._clock = clock
        # Optimistic until a check or ping says otherwise; await ping() at start-up for an
        # honest answer before serving.
        self._healthy = True

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        """True when fresh, False for a replay; raises TemporarilyUnavailable on any store
        problem (refused, timeout, pool exhausted, cluster error, Redis < 7), RetryLater
        (``replay_store_reset``) for an assertion issued before a loss of the store's data
        plus ``clock_skew``.

        With ``fingerprint`` the stored value is the assertion's digest instead of a random
        token, so the same assertion finds its own value and is accepted again; it is never
        refused for a loss.
        """
        token = fingerprint if fingerprint is not None else self._new_token()
        key = redis_key(client_id, jti)
        tag = _tag_of(key)
        # The earliest moment it could have passed the time checks (iat may run skew ahead).
        since = None if issued_at is None or fingerprint is not None else issued_at - clock_skew
        self._refuse_if_reset(tag, since, clock_skew, now)  # a loss known already
        fresh = await self._claim(key, tag, token, ttl_ms(expires_at, now))
        self._refuse_if_reset(tag, since, clock_skew, now)  # one this very check revealed
        return fresh

    def _new_token(self) -> str:
        """Unique to this check, so a retried SET finds its own value (and only its own)."""
        return f"{self._token_prefix}{next(self._token_counter):x}"

    def _refuse_if_reset(self, tag: str, since: float | None, clock_skew: float,
                         now: float) -> None:
        loss = self.markers.loss_time(tag)
        if since is None or loss is None or since >= loss:
            return
        # A fresh assertion passes once its iat is past the loss plus the skew.
        raise RetryLater(Reason.REPLAY_STORE_RESET, loss + clock_skew - now,
                         f"usable from {since:.0f}, store data lost by {loss:.3f}")

    async def claim(self, key: str, token: str, ttl: int) -> bool:
        """Set ``key`` (a ``redis_key``) to ``token`` unless present; True when absent or
        already ours.

        Raises TemporarilyUnavailable as ``record`` does.
        """
        return await self._claim(key, _tag_of(key), token, ttl)

    async def _claim(self, key: str, tag: str, token: str, ttl: int) -> bool:
        previous: Any
        try:
            if self._batch:
                # No timeout object per check: the batch's one deadline (in _send) settles
                # every reply it carries, answered or not.
                previous = await self._enqueue(key, tag, token, ttl)
            else:
                async with asyncio.timeout(self._timeout):
                    previous = await self._alone(key, tag, token, ttl)
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

    def _enqueue(self, key: str, tag: str, token: str, ttl: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Claim(key, tag, token, ttl, reply))
        if not self._flush_scheduled:
            # Runs after every callback already due in this iteration: the requests that
            # became ready together reach this point before the batch leaves.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return reply

    async def _alone(self, key: str, tag: str, token: str, ttl: int) -> Any:
        claim = _Claim(key, tag, token, ttl, asyncio.get_running_loop().create_future())
        await self._send([claim])
        return claim.reply.result()

    def _flush(self) -> None:
        self._flush_scheduled = False
        # A caller cancelled meanwhile (its request went away): nothing to send for it.
        due = [claim for claim in self._queue if not claim.reply.done()]
        self._queue = []
        for start in range(0, len(due), MAX_BATCH):
            self._spawn(self._send(due[start:start + MAX_BATCH]))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Claim]) -> None:
        """One pipeline for ``batch`` and its markers; every reply future is settled whatever
        happens."""
        learnt = self.markers.learnt
        offer = self.markers.offer(self._clock())
        try:
            # Bounded on its own too: a pipeline nobody waits for any more must not hold a
            # pooled connection on a hung server.
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    await self.client.initialize()
                replies, unchecked = await self._write(batch, offer, self.markers.unread)
        except asyncio.CancelledError:
            _settle(batch, RedisConnectionError("replay ledger closed"))
            raise
        except Exception as exc:  # the whole batch had no answer: every check in it fails
            _settle(batch, exc)
            return
        for claim, reply in zip(batch, replies, strict=True):
            if claim.reply.done():
                continue
            # An error reply, or a marker that could not be checked, fails this check only.
            error = reply if isinstance(reply, Exception) else unchecked.get(claim.tag)
            claim.reply.set_result(reply if error is None else _Failed(error))
        if self.markers.learnt != learnt:
            self._spawn(self._sweep({claim.tag for claim in batch}, offer))

    async def _write(self, batch: list[_Claim], offer: Offer, more_tags: Iterable[str] = ()
                     ) -> tuple[list[Any], dict[str, BaseException]]:
        """The batch's SETs, then ``SET marker offer NX GET`` for its tags and ``more_tags``,
        in one pipeline; returns the SET replies and the tags whose marker went unchecked."""
        tags = list(dict.fromkeys([*(claim.tag for claim in batch), *more_tags]))
        offered = [self.markers.offered(tag, offer) for tag in tags]
        commands: list[tuple[Any, ...]] = [
            ("SET", claim.key, claim.token, "NX", "PX", claim.ttl, "GET") for claim in batch]
        # After the writes: a loss that strikes between them and this is still seen.
        commands += [("SET", marker_key(tag), value, "NX", "GET")
                     for tag, value in zip(tags, offered, strict=True)]
        replies: list[Any]
        if self._cluster:  # the cluster client routes each command to its slot's node
            async with self.client.pipeline(transaction=False) as pipe:
                for claim in batch:
                    pipe.set(claim.key, claim.token, nx=True, px=claim.ttl, get=True)
                for tag, value in zip(tags, offered, strict=True):
                    pipe.set(marker_key(tag), value, nx=True, get=True)
                replies = await pipe.execute(raise_on_error=False)
        else:
            replies = await self._exchange(commands)
        if len(replies) != len(batch) + len(tags):
            raise RedisConnectionError(
                f"{len(replies)} replies to {len(batch) + len(tags)} commands")
        unchecked = await self._observe(tags, offered, replies[len(batch):], offer)
        return replies[:len(batch)], unchecked

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``commands`` written at once on one pooled connection, their replies read in order
        (an error reply in its place). redis-py's pipeline object cost more CPU per batch than
        the round trip; this is what it sends and reads, without it. A connection that failed
        is dropped and the batch sent once more on a fresh one (every command in it may be
        repeated: a claim finds its own token, a marker its own offer); a second failure, or
        the batch's deadline, fails the batch."""
        pool = cast(Redis, self.client).connection_pool  # not a cluster client: see _write
        for attempt in (1, 2):
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await connection.send_packed_command(connection.pack_commands(commands))
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as error:
                        replies.append(error)
                return replies
            except (RedisConnectionError, OSError):
                await connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                # Cancelled or failed half way: what the connection holds is unknown.
                await connection.disconnect()
                raise
            finally:
                await pool.release(connection)
        raise AssertionError("not reached")

    async def _observe(self, tags: list[str], offered: list[bytes], replies: list[Any],
                       offer: Offer) -> dict[str, BaseException]:
        """Take the markers found; a conflict costs one more round trip (RESOLVE_SCRIPT), only
        after a loss. Returns the tags whose marker could not be checked, with the error."""
        unchecked: dict[str, BaseException] = {}
        conflicts = []
        for tag, value, reply in zip(tags, offered, replies, strict=True):
            if isinstance(reply, Exception):
                unchecked[tag] = reply
            elif not self.markers.observe(tag, value, reply):
                conflicts.append(tag)
        if not conflicts:
            return unchecked
        async with self.client.pipeline(transaction=False) as pipe:
            for tag in conflicts:
                pipe.eval(RESOLVE_SCRIPT, 1, marker_key(tag), self.markers.known(tag) or b"",
                          offer.loss)
            resolved: list[Any] = await pipe.execute(raise_on_error=False)
        for tag, reply in zip(conflicts, resolved, strict=True):
            if isinstance(reply, bytes):
                self.markers.resolved(tag, reply)
            else:
                unchecked[tag] = reply if isinstance(reply, Exception) else RedisConnectionError(
                    f"unexpected marker reply {reply!r}")
        return unchecked

    async def _sweep(self, done: set[str], offer: Offer) -> None:
        """After learning a loss, check every other marker this process knows with the same
        ``offer``, so the tags lost together share one loss time. Best effort: each tag's next
        batch checks it anyway."""
        tags = [tag for tag in self.markers.known_tags() if tag not in done]
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await self._write([], offer, tags)

    async def ping(self) -> bool:
        """Ask the store now and update ``ready()``; never raises for a store problem.

        Until the markers of ``subjects`` have been read, reading them is the question.
        """
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    await self.client.initialize()
                if self.markers.unread:
                    offer = self.markers.offer(self._clock())
                    _, unchecked = await self._write([], offer, sorted(self.markers.unread))
                    healthy = not unchecked
                else:
                    await self.client.ping()
                    healthy = True
        except Exception:  # as in claim
            healthy = False
        self._healthy = healthy
        return healthy

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
