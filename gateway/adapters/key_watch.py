"""Watching the usable keys of every client and issuer: key-change events and first sightings.

The runtime in force is looked at when it is installed (start-up, reload), when a key
source reports a fetch or a set gone stale, and once a minute for what time alone changes
(a key_expiry or retire date passing, a certificate coming within its warning window).
Each look diffs every owner's keys against the last record (``core.key_events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from gateway.adapters.assemble import Runtime, registered_keys
from gateway.config.settings import Settings
from gateway.core.clients import ClientRuntime
from gateway.core.credentials import RegisteredKeys
from gateway.core.key_events import (
    CHECK,
    CLIENT,
    DISABLED,
    FETCH,
    ISSUER,
    NO_LIMITS,
    RELOAD,
    REMOVED,
    START,
    HeldKeys,
    KeyEvent,
    KeyLimits,
    KeyRecord,
    held_thumbprints,
    key_events,
)
from gateway.core.keysource import KeySource
from gateway.core.usage import key_ref, trust_ref

log = logging.getLogger("gateway.keys")

CHECK_INTERVAL = 60.0  # seconds between two looks for what time alone changes

Owner = tuple[str, str]  # (CLIENT or ISSUER, name)
# UsageBook.observe: the credentials of a client present now (first seen if unknown).
Observe = Callable[[str, Iterable[str], float], None]
WriteEvent = Callable[[KeyEvent], None]


def client_limits(settings: Settings, keys: RegisteredKeys) -> KeyLimits:
    """The dates and certificate rules that make a client's keys unusable or expiring."""
    policy = settings.effective_policy(keys.client_id)
    return KeyLimits(
        deadlines=keys.deadlines,  # key_expiry and retire, as the request path applies them
        certificate_warning=policy.certificate_expiry_warning,
        refuse_expired_certificates=policy.refuse_expired_certificates,
        clock_skew=policy.clock_skew,
    )


def _registered_source(client: ClientRuntime | None) -> KeySource | None:
    registered = registered_keys(client)
    return registered.source if registered is not None else None


def _pending(source: KeySource) -> bool:
    # A remote set whose first fetch is under way: nothing is known of it yet, so the last
    # record (the keys before a reload changed its address) stands until the fetch ends.
    return source.current() is None and source.status().last_fetch is None


class KeyWatch:
    """Records each owner's usable keys and writes an event for each change.

    ``write`` gets the events (None: this process records but does not write them, as
    every worker but one of ``serve --workers N``); ``observe`` gets each client's held
    keys and trusts whenever they are installed or fetched.
    """

    def __init__(self, write: WriteEvent | None, *, observe: Observe | None = None,
                 clock: Callable[[], float] = time.time,
                 interval: float = CHECK_INTERVAL) -> None:
        self._write = write
        self._observe = observe
        self._clock = clock
        self._interval = interval
        self._runtime: Runtime | None = None
        self._records: dict[Owner, KeyRecord] = {}
        self._looking = False
        self._task: asyncio.Task[None] | None = None

    def install(self, runtime: Runtime) -> None:
        """Put ``runtime`` under watch: its keys against the last one's (cause start/reload)."""
        cause = START if self._runtime is None else RELOAD
        self._runtime = runtime
        clients = [(CLIENT, client_id) for client_id in runtime.clients]
        owners = dict.fromkeys([*clients, *self._owners(runtime), *self._records])
        self._look(owners, cause, observe=True)

    def seen(self, name: str, _: object = None) -> None:
        """A key source named ``name`` fetched or lost its keys (a RemoteKeys callback)."""
        if self._runtime is not None:
            self._look([(CLIENT, name), (ISSUER, name)], FETCH, observe=True)

    def check(self) -> None:
        """Look at every owner for what time alone changes."""
        if self._runtime is not None:
            self._look(dict.fromkeys([*self._owners(self._runtime), *self._records]), CHECK)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="key-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:  # the watch must outlive a bug in one look
                log.exception("key watch: the periodic check failed")

    def _owners(self, runtime: Runtime) -> Iterator[Owner]:
        for client_id, client in runtime.clients.items():
            if _registered_source(client) is not None:
                yield CLIENT, client_id
        for issuer in (*runtime.federation.by_iss.values(),
                       *runtime.federation.by_trust_domain.values()):
            yield ISSUER, issuer.name

    def _look(self, owners: Iterable[Owner], cause: str, *, observe: bool = False) -> None:
        # A source reports a stale set from inside current(), which a look calls: that
        # report comes back here while this look already sees it.
        if self._looking or self._runtime is None:
            return
        self._looking = True
        try:
            now = self._clock()
            runtime = self._runtime
            for owner in owners:
                self._look_at(runtime, owner, cause, now)
                kind, name = owner
                if observe and kind == CLIENT and name in runtime.clients:
                    self._observe_client(runtime.clients[name], now)
        finally:
            self._looking = False

    def _look_at(self, runtime: Runtime, owner: Owner, cause: str, now: float) -> None:
        kind, name = owner
        source = self._source(runtime, owner)
        if source is not None and _pending(source):
            return
        held = None
        if source is not None:
            keys = source.current()
            registered = registered_keys(runtime.clients[name]) if kind == CLIENT else None
            limits = (client_limits(runtime.settings, registered) if registered is not None
                      else NO_LIMITS)
            held = HeldKeys(source.kind, keys.keys if keys is not None else None, limits)
        else:
            cause = self._gone(runtime.settings, owner, cause)
        record, events = key_events(kind, name, self._records.get(owner), held, now, cause)
        if record is None:
            self._records.pop(owner, None)
        else:
            self._records[owner] = record
        if self._write is not None:
            for event in events:
                self._write(event)

    def _observe_client(self, client: ClientRuntime, now: float) -> None:
        """Hand the usage book the client's credentials present now: held keys, trusts."""
        if self._observe is None:
            return
        source = _registered_source(client)
        keys = source.current() if source is not None else None
        refs = [key_ref(thumbprint) for thumbprint in held_thumbprints(keys.keys if keys else ())]
        refs += [trust_ref(trust.name) for trusts in client.federated.values()
                 for trust in (*trusts.enforced, *trusts.shadows)]
        if refs:
            self._observe(client.client_id, refs, now)

    @staticmethod
    def _source(runtime: Runtime, owner: Owner) -> KeySource | None:
        kind, name = owner
        if kind == CLIENT:
            return _registered_source(runtime.clients.get(name))
        federation = runtime.federation
        for issuer in (*federation.by_iss.values(), *federation.by_trust_domain.values()):
            if issuer.name == name:
                return issuer.source
        return None

    @staticmethod
    def _gone(settings: Settings, owner: Owner, cause: str) -> str:
        kind, name = owner
        if kind == ISSUER:
            return REMOVED if name not in settings.federation.issuers else cause
        client = settings.clients.get(name)
        if client is None:
            return REMOVED
        return DISABLED if not client.enabled else cause
