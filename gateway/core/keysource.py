"""The key source port: where a client's verification keys come from, and static keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.core.keyset import KeySet


@dataclass(frozen=True, slots=True)
class KeySourceStatus:
    """What a key source holds, for the inventory and readiness; never key material."""

    kind: str
    uri: str | None            # scheme://host:port/path only: query strings can carry tokens
    key_count: int             # keys usable now
    last_fetch: float | None   # epoch seconds of the last completed attempt
    last_success: float | None
    expires_at: float | None   # when the held set stops being fresh (stale keys serve on)
    stale: bool                # serving keys past expires_at, within max_stale
    last_error: str | None     # reason word of the last attempt if it failed
    has_etag: bool
    ready: bool


class KeySource(Protocol):
    """The verification keys of one client."""

    kind: str

    def current(self) -> KeySet | None:
        """The keys to verify with now, or None while none are available (answered with 503)."""
        ...

    def ready(self) -> bool:
        """Whether the source has keys to serve."""
        ...

    def settled(self) -> bool:
        """Whether the source has keys or its first attempt to get them has failed."""
        ...

    async def refresh_for_unknown_kid(self) -> KeySet | None:
        """After a key miss: the keys again, refetched when the source may do so now."""
        ...

    async def start(self) -> None:
        """Begin background work; returns without waiting for keys."""
        ...

    async def close(self) -> None:
        """Stop background work; the source serves what it holds and fetches no more."""
        ...

    def status(self) -> KeySourceStatus:
        """A snapshot for the inventory."""
        ...


class StaticKeySource:
    """Keys given in the configuration (inline ``jwks`` or a ``jwks_file``), imported once."""

    def __init__(self, keyset: KeySet, kind: str) -> None:
        self._keyset = keyset
        self.kind = kind

    def current(self) -> KeySet:
        return self._keyset

    def ready(self) -> bool:
        return True

    def settled(self) -> bool:
        return True

    async def refresh_for_unknown_kid(self) -> KeySet:
        return self._keyset

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> KeySourceStatus:
        return KeySourceStatus(kind=self.kind, uri=None, key_count=len(self._keyset.keys),
                               last_fetch=None, last_success=None, expires_at=None, stale=False,
                               last_error=None, has_etag=False, ready=True)
