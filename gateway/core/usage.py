"""Usage per credential: first seen, last used and use count, by client and credential reference.

The request path calls ``UsageBook.record`` once per accepted authentication: two dict
lookups and a few attribute stores, no I/O and no allocation once a credential is known.
Each entry also keeps what changed since the last ``take_pending``, so a shared store can
merge every process's changes (``uses`` summed, ``first_seen`` the earliest, ``last_used``
the latest) and hand the merged view back through ``absorb``. All three merges are
commutative, so changes that could not be written are simply given back (``restore``) and
sent again with the next ones.

A credential reference is never a metric label: it names a key, certificate or trust.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.core.attempt import Attempt

# Distinct credentials remembered per client; past it, the least recently seen is dropped.
# A CA-anchored client may present a new leaf certificate at each renewal, so the number of
# references a client accumulates is not bounded by its configuration alone.
MAX_REFS_PER_CLIENT = 1024
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})


def key_ref(thumbprint: str) -> str:
    """The reference of a key: ``key:`` + its RFC 7638 thumbprint."""
    return f"key:{thumbprint}"


def certificate_ref(sha256_hex: str) -> str:
    """The reference of a certificate: ``certificate:`` + the SHA-256 of its DER, in hex."""
    return f"certificate:{sha256_hex}"


@functools.lru_cache(maxsize=1024)  # a client re-uses its certificate: decode it once
def certificate_ref_of_x5t(x5t_s256: str) -> str:
    """The reference of a certificate known by its x5t#S256 (base64url of the same digest).

    Raises ValueError when ``x5t_s256`` is not base64url.
    """
    digest = base64.urlsafe_b64decode(x5t_s256 + "=" * (-len(x5t_s256) % 4))
    return certificate_ref(digest.hex())


def trust_ref(name: str) -> str:
    """The reference of a federated trust: ``trust:`` + its configured name."""
    return f"trust:{name}"


def secret_ref(method: str) -> str:
    """The reference of a migration-mode shared secret: ``secret:`` + the method used."""
    return f"secret:{method}"


def credential_ref(attempt: Attempt) -> str | None:
    """The reference of the credential an accepted authentication used, None if unknown.

    A federated token names its trust (not the issuer's key), a CA-anchored client its
    certificate (not the key inside), a client with keys of its own the key; a shared secret
    in migration mode its method.
    """
    if attempt.trust is not None:
        return trust_ref(attempt.trust)
    if attempt.certificate_thumbprint is not None:
        return certificate_ref_of_x5t(attempt.certificate_thumbprint)
    if attempt.key_thumbprint is not None:
        return key_ref(attempt.key_thumbprint)
    if attempt.method in SECRET_METHODS:
        return secret_ref(attempt.method)
    return None


@dataclass(slots=True)
class Usage:
    """What is known of one credential of one client."""

    first_seen: float | None  # epoch s: when the gateway first saw the credential
    last_used: float | None  # epoch s of the last accepted authentication with it
    uses: int  # accepted authentications with it


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What one process learnt of one credential since its last flush."""

    client_id: str
    ref: str
    first_seen: float | None
    last_used: float | None
    uses: int


class _Entry:
    """The merged view of one credential plus what this process has not yet handed over."""

    __slots__ = ("first_seen", "last_used", "pending_first", "pending_last", "pending_uses",
                 "uses")

    def __init__(self, first_seen: float | None) -> None:
        self.first_seen = first_seen
        self.last_used: float | None = None
        self.uses = 0
        self.pending_first = first_seen
        self.pending_last: float | None = None
        self.pending_uses = 0

    def recency(self) -> float:
        return max(self.last_used or 0.0, self.first_seen or 0.0)


class _Client:
    __slots__ = ("last_success", "refs")

    def __init__(self) -> None:
        self.refs: dict[str, _Entry] = {}
        self.last_success: float | None = None


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class UsageBook:
    """Usage of every credential by client, kept in memory; see the module docstring."""

    def __init__(self, max_refs_per_client: int = MAX_REFS_PER_CLIENT) -> None:
        self._clients: dict[str, _Client] = {}
        self._max_refs = max_refs_per_client

    def record(self, client_id: str, ref: str, now: float) -> None:
        """Count one accepted authentication of ``client_id`` with ``ref`` at ``now``."""
        client = self._clients.get(client_id)
        entry = client.refs.get(ref) if client is not None else None
        if client is None or entry is None:
            client, entry = self._add(client_id, ref, now)
        entry.uses += 1
        entry.pending_uses += 1
        if entry.last_used is None or now > entry.last_used:
            entry.last_used = now
        if entry.pending_last is None or now > entry.pending_last:
            entry.pending_last = now
        if client.last_success is None or now > client.last_success:
            client.last_success = now

    def observe(self, client_id: str, refs: Iterable[str], now: float) -> None:
        """Note credentials of ``client_id`` present now: unknown ones are first seen ``now``."""
        client = self._clients.get(client_id)
        for ref in refs:
            if client is None or ref not in client.refs:
                client, _ = self._add(client_id, ref, now)

    def usage(self, client_id: str, ref: str) -> Usage | None:
        """The usage of one credential, or None when it was never seen."""
        client = self._clients.get(client_id)
        entry = client.refs.get(ref) if client is not None else None
        if entry is None:
            return None
        return Usage(entry.first_seen, entry.last_used, entry.uses)

    def of_client(self, client_id: str) -> dict[str, Usage]:
        """Every credential seen for ``client_id``, by reference (a copy)."""
        client = self._clients.get(client_id)
        if client is None:
            return {}
        return {ref: Usage(e.first_seen, e.last_used, e.uses) for ref, e in client.refs.items()}

    def last_success(self, client_id: str) -> float | None:
        """When ``client_id`` last authenticated successfully, with any credential."""
        client = self._clients.get(client_id)
        return client.last_success if client is not None else None

    def clients(self) -> list[str]:
        """Every client with at least one credential in the book."""
        return list(self._clients)

    def take_pending(self) -> list[UsageDelta]:
        """Hand over (and forget) every change not yet handed over, for a shared store."""
        deltas: list[UsageDelta] = []
        for client_id, client in self._clients.items():
            for ref, entry in client.refs.items():
                if entry.pending_uses or entry.pending_first is not None \
                        or entry.pending_last is not None:
                    deltas.append(UsageDelta(client_id, ref, entry.pending_first,
                                             entry.pending_last, entry.pending_uses))
                    entry.pending_first = entry.pending_last = None
                    entry.pending_uses = 0
        return deltas

    def restore(self, deltas: Iterable[UsageDelta]) -> None:
        """Take back changes a store could not keep: they go out again with the next ones."""
        for delta in deltas:
            client = self._clients.get(delta.client_id)
            entry = client.refs.get(delta.ref) if client is not None else None
            if entry is None:  # dropped meanwhile to stay within bounds
                continue
            entry.pending_uses += delta.uses
            entry.pending_first = _earliest(entry.pending_first, delta.first_seen)
            entry.pending_last = _latest(entry.pending_last, delta.last_used)

    def absorb(self, client_id: str, merged: Mapping[str, Usage]) -> None:
        """Adopt a store's merged view of ``client_id``, on top of what is still pending here.

        ``merged`` must already contain every change taken from this book before it was read.
        """
        for ref, stored in merged.items():
            client = self._clients.get(client_id)
            entry = client.refs.get(ref) if client is not None else None
            if client is None or entry is None:
                client, entry = self._add(client_id, ref, None)
                entry.pending_first = None
            entry.uses = stored.uses + entry.pending_uses
            entry.first_seen = _earliest(stored.first_seen, entry.pending_first)
            entry.last_used = _latest(stored.last_used, entry.pending_last)
            client.last_success = _latest(client.last_success, entry.last_used)

    def _add(self, client_id: str, ref: str, now: float | None) -> tuple[_Client, _Entry]:
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client()
        refs = client.refs
        if len(refs) >= self._max_refs:
            del refs[min(refs, key=lambda r: refs[r].recency())]
        entry = refs[ref] = _Entry(now)
        return client, entry
