"""Key sources: where a client's verification keys come from (inline or file, prepared at load)."""

from __future__ import annotations

from typing import Protocol

from .keyset import KeySet


class KeySource(Protocol):
    """The verification keys of one client."""

    kind: str

    def current(self) -> KeySet | None:
        """The keys to verify with now, or None while none are available (answered with 503)."""
        ...

    def ready(self) -> bool:
        """Whether the source has keys to serve."""
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
