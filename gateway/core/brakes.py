"""Failure rate limiting: token buckets that slow down repeated failed authentications (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """Per-key token buckets, spent by failures only, refilled at ``rate`` per second.

    A key whose bucket is empty is refused until a token comes back, so guessing or flooding
    with bad assertions cannot turn verification into a CPU sink. Memory is bounded by
    ``max_keys``: full buckets carry no information and are dropped first; when every
    tracked key is still limited, new keys are not tracked (the limiter is a brake, not an
    authentication check, so it then lets them through).
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate and max_keys must be positive, burst at least 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until ``key`` may try again, or None when it may now."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        tokens = self._refill(bucket, now)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, key: str, now: float) -> None:
        """Spend one token of ``key`` for a failure."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys and not self._sweep(now):
                return
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = max(0.0, self._refill(bucket, now) - 1)

    def _refill(self, bucket: _Bucket, now: float) -> float:
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket.tokens

    def _sweep(self, now: float) -> bool:
        """Drop buckets that have refilled; True when there is room afterwards."""
        full = [key for key, bucket in self._buckets.items()
                if self._refill(bucket, now) >= self.burst]
        for key in full:
            del self._buckets[key]
        return len(self._buckets) < self.max_keys
