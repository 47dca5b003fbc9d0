"""The usage book shared in Redis: every process's changes merged per client, the sum read back.

Each client has one hash, ``pkjwt:usage:{<hash tag>}``, with three fields per credential
reference: ``u:<ref>`` (uses, summed with HINCRBY), ``f:<ref>`` (first seen, the earliest)
and ``l:<ref>`` (last used, the latest). A background task sends what the local book learnt
every ``usage.flush_interval`` (one script per client, all in one pipeline), then reads the
hashes back so the book shows what every replica saw. The request path never waits for it.

Exactly once: each client's batch carries a number, and the script skips a batch whose
number its process already applied (``pkjwt:usage:{<tag>}:sent:<process>``, one day). A
batch without an answer (timeout, Redis down) is kept as it was and sent again, alone, until
Redis acknowledges it; what is learnt meanwhile waits in the book, merged into one change
per credential, so memory stays bounded by the credentials known, however long Redis is away.

Timestamps are written as Python's shortest round-trip form and compared as numbers by the
script, so nothing is lost to Lua's number printing. Usage survives a restart of the gateway
as long as Redis keeps its data (persistence on; ``maxmemory-policy noeviction``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.adapters.replay_redis import hash_tag
from gateway.core.usage import Usage, UsageBook, UsageDelta

log = logging.getLogger("gateway")

KEY_PREFIX = "pkjwt:usage:"
DEFAULT_FLUSH_INTERVAL = 5.0
DEFAULT_TIMEOUT = 2.0  # per pipeline: the flush is in the background, it can wait longer
MAX_COMMANDS = 256  # per pipeline; more clients go out as several pipelines
SENT_TTL_S = 86_400  # how long a process's last applied batch number is remembered

# KEYS[1]: the client's hash; KEYS[2]: this process's last applied batch number for it.
# ARGV[1]: the batch number; then per reference: ref, first seen, last used ('' for none), uses.
MERGE_SCRIPT = f"""
local seq = tonumber(ARGV[1])
local done = redis.call('GET', KEYS[2])
if done and tonumber(done) >= seq then return 0 end
for i = 2, #ARGV, 4 do
  local ref, first, last, uses = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if uses > 0 then redis.call('HINCRBY', KEYS[1], 'u:' .. ref, uses) end
  if first ~= '' then
    local old = redis.call('HGET', KEYS[1], 'f:' .. ref)
    if not old or tonumber(first) < tonumber(old) then
      redis.call('HSET', KEYS[1], 'f:' .. ref, first)
    end
  end
  if last ~= '' then
    local old = redis.call('HGET', KEYS[1], 'l:' .. ref)
    if not old or tonumber(last) > tonumber(old) then
      redis.call('HSET', KEYS[1], 'l:' .. ref, last)
    end
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', {SENT_TTL_S})
return 1
"""


def usage_key(client_id: str) -> str:
    """The hash of one client's usage; hash-tagged so a Cluster keeps it in one slot."""
    return f"{KEY_PREFIX}{{{hash_tag(client_id)}}}"


def parse_usage_hash(fields: dict[Any, Any]) -> dict[str, Usage]:
    """A client's hash as the book takes it; fields it does not know are ignored."""
    merged: dict[str, Usage] = {}
    for name, value in fields.items():
        field = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
        kind, _, ref = field.partition(":")
        if kind not in ("u", "f", "l") or not ref:
            continue
        usage = merged.setdefault(ref, Usage(None, None, 0))
        try:
            if kind == "u":
                usage.uses = int(value)
            elif kind == "f":
                usage.first_seen = float(value)
            else:
                usage.last_used = float(value)
        except ValueError:
            continue
    return merged


class _Batch:
    __slots__ = ("args", "deltas", "seq")

    def __init__(self, seq: int, deltas: list[UsageDelta]) -> None:
        self.seq, self.deltas = seq, deltas
        self.args: list[str] = [str(seq)]
        for d in deltas:
            self.args += [d.ref, "" if d.first_seen is None else repr(d.first_seen),
                          "" if d.last_used is None else repr(d.last_used), str(d.uses)]


class RedisUsageStore:
    """Merges one ``UsageBook`` with every other process's in Redis; see the module docstring.

    The store owns ``client`` (and ``sentinels``): ``close`` closes them.
    """

    def __init__(self, book: UsageBook, client: Redis | RedisCluster, *,
                 client_ids: Callable[[], Iterable[str]] = tuple,
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 timeout: float = DEFAULT_TIMEOUT, sentinels: Iterable[Redis] = ()) -> None:
        """``client_ids``: the configured clients, read back even before this process saw
        them (another replica may have)."""
        if flush_interval <= 0 or timeout <= 0:
            raise ValueError("flush_interval and timeout must be positive")
        self.book, self.client = book, client
        self._client_ids = client_ids
        self._interval, self._timeout = flush_interval, timeout
        self._sentinels = tuple(sentinels)
        self._cluster = isinstance(client, RedisCluster)
        self._process = secrets.token_hex(8)
        self._seq = itertools.count(1)
        self._unsent: dict[str, _Batch] = {}  # per client, the batch Redis has not acknowledged
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closed = False

    async def start(self) -> None:
        """Read the shared view once (bounded; a failure is logged), then sync in the background."""
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop syncing, send what is left (bounded), close the client; once."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sync()
        await self.client.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sync()

    async def sync(self) -> bool:
        """Send every change, then read the merged view into the book; True when both went
        through. Never raises for a store problem: it is logged and the changes are kept."""
        try:
            if self._cluster:
                async with asyncio.timeout(self._timeout):
                    await self.client.initialize()
            if self._take():
                await self._send()  # the batches Redis had not acknowledged, as they were
                self._take()  # then what their clients did meanwhile
            await self._send()
            await self._read_back()
        except Exception as exc:  # any failure leaves the changes for the next try
            if not self._failing:
                self._failing = True
                log.warning("usage store: Redis did not answer (%s: %s): %d client(s) with "
                            "changes kept, retried every %gs", type(exc).__name__,
                            str(exc)[:200], len(self._unsent), self._interval)
            return False
        if self._failing:
            self._failing = False
            log.info("usage store: Redis answers again; usage is shared once more")
        return True

    async def read(self, client_id: str) -> dict[str, Usage]:
        """What Redis holds for ``client_id`` (for tools and tests).

        Raises what redis-py raises, or TimeoutError.
        """
        async with asyncio.timeout(self._timeout):
            return parse_usage_hash(await self.client.hgetall(usage_key(client_id)))

    def _take(self) -> bool:
        """Batch the book's changes; a client whose last batch is unacknowledged waits.

        Returns whether one did.
        """
        deltas = self.book.take_pending()
        waiting = [d for d in deltas if d.client_id in self._unsent]
        self.book.restore(waiting)
        by_client: dict[str, list[UsageDelta]] = {}
        for delta in deltas:
            if delta.client_id not in self._unsent:
                by_client.setdefault(delta.client_id, []).append(delta)
        for client_id, batch in by_client.items():
            self._unsent[client_id] = _Batch(next(self._seq), batch)
        return bool(waiting)

    async def _send(self) -> None:
        """Raises on a pipeline without an answer; an error reply keeps only its own batch."""
        pending = list(self._unsent.items())
        for start in range(0, len(pending), MAX_COMMANDS):
            chunk = pending[start:start + MAX_COMMANDS]
            async with asyncio.timeout(self._timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    for client_id, batch in chunk:
                        key = usage_key(client_id)
                        pipe.eval(MERGE_SCRIPT, 2, key, f"{key}:sent:{self._process}",
                                  *batch.args)
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
            failed = [r for r in replies if isinstance(r, Exception)]
            for (client_id, batch), reply in zip(chunk, replies, strict=True):
                if not isinstance(reply, Exception) and self._unsent.get(client_id) is batch:
                    del self._unsent[client_id]
            if failed:
                raise failed[0]

    async def _read_back(self) -> None:
        clients = list(dict.fromkeys([*self.book.clients(), *self._client_ids()]))
        for start in range(0, len(clients), MAX_COMMANDS):
            chunk = clients[start:start + MAX_COMMANDS]
            async with asyncio.timeout(self._timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    for client_id in chunk:
                        pipe.hgetall(usage_key(client_id))
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
            for client_id, reply in zip(chunk, replies, strict=True):
                # The book's view would miss a batch Redis has not acknowledged: keep it.
                if isinstance(reply, dict) and client_id not in self._unsent:
                    self.book.absorb(client_id, parse_usage_hash(reply))
