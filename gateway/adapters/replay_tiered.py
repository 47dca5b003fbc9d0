"""The tiered ledger: this process's recent jtis in front of the shared Redis ledger."""

from __future__ import annotations

from gateway.adapters.replay_redis import RedisReplayLedger
from gateway.core.replay import ExpiringKeys, ledger_key

DEFAULT_LOCAL_MAX_ENTRIES = 100_000


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
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        """True when fresh, False for a replay; raises as RedisReplayLedger.record (and then
        remembers nothing)."""
        if fingerprint is not None:
            # A re-sent assertion may be legitimate: only Redis, holding its digest, can tell.
            return await self.redis.record(client_id, jti, expires_at, now,
                                           fingerprint=fingerprint)
        key = ledger_key(client_id, jti)
        if self.local.seen(key, now):
            return False
        fresh = await self.redis.record(client_id, jti, expires_at, now, issued_at=issued_at,
                                        clock_skew=clock_skew)
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
