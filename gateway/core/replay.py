"""Replay ledgers: remember every accepted jti until its assertion can no longer be used."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from typing import Protocol

from gateway.core.errors import TemporarilyUnavailable
from gateway.core.reasons import Reason


def ledger_key(client_id: str, jti: str) -> bytes:
    """A fixed-size key for (client, jti): attacker-sized jtis never sit in memory as they came.

    The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
    """
    material = f"{len(client_id)}:{client_id}:{jti}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(material).digest()


class ReplayLedger(Protocol):
    """Set-if-absent store of used assertions; implementations must be atomic."""

    name: str

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        """Remember (client_id, jti) until ``expires_at``.

        Returns True when the pair was fresh, False when it was already recorded (a replay).
        With ``fingerprint`` (a digest of the whole assertion, for clients allowed to re-send
        one), a pair recorded with the same fingerprint is accepted again.
        ``issued_at`` and ``clock_skew`` say when the assertion could first have been
        accepted: a shared ledger that has seen its store lose data refuses an assertion
        issued before the loss plus the skew (RetryLater, ``replay_store_reset``), since it
        may have been accepted before; a fingerprinted one is exempt. Ledgers that cannot
        lose data behind the gateway's back ignore them.
        Raises TemporarilyUnavailable when the ledger cannot answer: callers fail closed.
        """
        ...

    def ready(self) -> bool:
        """Whether the ledger answered its last check (cheap, no I/O)."""
        ...

    async def ping(self) -> bool:
        """Ask the store now whether it answers (for readiness while no traffic flows)."""
        ...

    async def close(self) -> None: ...


class ExpiringKeys:
    """Keys that each live until a time; expired ones are dropped lazily, oldest first.

    A heap ordered by expiry makes each purge cost only what it removes. ``on_expire`` is
    told of every key dropped, so a caller can drop what it keeps beside it.
    """

    def __init__(self, on_expire: Callable[[bytes], None] | None = None) -> None:
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._on_expire = on_expire

    def __len__(self) -> int:
        return len(self._expiry)

    def live(self, key: bytes, now: float) -> bool:
        """Whether ``key`` is held past ``now`` (after dropping everything expired)."""
        self.purge(now)
        return key in self._expiry

    def add(self, key: bytes, expires_at: float) -> None:
        """Hold ``key`` until ``expires_at``, or longer if it is already held longer."""
        expires_at = max(expires_at, self._expiry.get(key, expires_at))
        self._expiry[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))

    def purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires_at:  # not superseded by a later add
                del self._expiry[key]
                if self._on_expire is not None:
                    self._on_expire(key)

    def clear(self) -> None:
        self._expiry.clear()
        self._heap.clear()


class MemoryReplayLedger:
    """A bounded in-process ledger.

    A live entry is never evicted to make room: when ``max_entries`` live entries are held,
    new assertions are refused (503) until some expire. Forgetting a live jti would let a
    replay through, which is worse than a refusal. It lives and dies with its process: a
    restarted process has forgotten every jti it accepted before.
    """

    name = "memory"

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._fingerprints: dict[bytes, str] = {}  # only for entries recorded with one
        self._keys = ExpiringKeys(on_expire=self._forget_fingerprint)

    def __len__(self) -> int:
        return len(self._keys)

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None, issued_at: float | None = None,
                     clock_skew: float = 0.0) -> bool:
        # issued_at is not needed: this ledger and its process forget together.
        return self.record_now(ledger_key(client_id, jti), expires_at, now, fingerprint)

    def _forget_fingerprint(self, key: bytes) -> None:
        self._fingerprints.pop(key, None)

    def record_now(self, key: bytes, expires_at: float, now: float,
                   fingerprint: str | None = None) -> bool:
        """The synchronous core of ``record``, over an already derived key."""
        if self._keys.live(key, now):
            return fingerprint is not None and self._fingerprints.get(key) == fingerprint
        if len(self._keys) >= self._max_entries:
            raise TemporarilyUnavailable(Reason.REPLAY_STORE_FULL,
                                         f"{self._max_entries} live entries")
        self._keys.add(key, expires_at)
        if fingerprint is not None:
            self._fingerprints[key] = fingerprint
        return True

    def ready(self) -> bool:
        return True

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._fingerprints.clear()
        self._keys.clear()
