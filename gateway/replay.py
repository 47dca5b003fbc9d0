"""Replay ledgers: remember every accepted jti until its assertion can no longer be used."""

from __future__ import annotations

import hashlib
import heapq
from typing import Protocol

from .errors import TemporarilyUnavailable


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
                     fingerprint: str | None = None) -> bool:
        """Remember (client_id, jti) until ``expires_at``.

        Returns True when the pair was fresh, False when it was already recorded (a replay).
        With ``fingerprint`` (a digest of the whole assertion, for clients allowed to re-send
        one), a pair recorded with the same fingerprint is accepted again.
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


class MemoryReplayLedger:
    """A bounded in-process ledger.

    A live entry is never evicted to make room: when ``max_entries`` live entries are held,
    new assertions are refused (503) until some expire. Forgetting a live jti would let a
    replay through, which is worse than a refusal.
    """

    name = "memory"

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._fingerprints: dict[bytes, str] = {}  # only for entries recorded with one

    def __len__(self) -> int:
        return len(self._expiry)

    async def record(self, client_id: str, jti: str, expires_at: float, now: float, *,
                     fingerprint: str | None = None) -> bool:
        return self.record_now(ledger_key(client_id, jti), expires_at, now, fingerprint)

    def record_now(self, key: bytes, expires_at: float, now: float,
                   fingerprint: str | None = None) -> bool:
        """The synchronous core of ``record``, over an already derived key."""
        self._purge(now)
        known = self._expiry.get(key)
        if known is not None and known > now:
            return fingerprint is not None and self._fingerprints.get(key) == fingerprint
        if len(self._expiry) >= self._max_entries:
            raise TemporarilyUnavailable("replay_store_full", f"{self._max_entries} live entries")
        self._expiry[key] = expires_at
        if fingerprint is not None:
            self._fingerprints[key] = fingerprint
        heapq.heappush(self._heap, (expires_at, key))
        return True

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]
                self._fingerprints.pop(key, None)

    def ready(self) -> bool:
        return True

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._fingerprints.clear()
        self._expiry.clear()
        self._heap.clear()
