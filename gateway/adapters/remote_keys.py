"""Remote key sources: fetched keys cached, refreshed and kept stale; a client's jwks_uri."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway.adapters.jwks_fetch import FetchResult, JwksFetchError, fetch_jwks, loggable_uri
from gateway.config.settings import JwksFetchSettings
from gateway.core.keyset import KeySet
from gateway.core.keysource import KeySourceStatus

log = logging.getLogger("gateway.keys")

# A set is refetched after this fraction of its lifetime, jittered so that clients sharing
# a key server, or gateway replicas, do not all ask at the same moment.
REFRESH_AT = (0.75, 0.85)
FIRST_RETRY = 1.0   # seconds after a first failed fetch; doubled per further failure
MAX_RETRY = 60.0    # and never more than this (nor more than min_ttl)
MIN_DELAY = 0.05    # floor of every background wait, whatever the settings: no tight loop
# Failures that are no passing outage: a key server publishing secret key material has
# been compromised or misconfigured, and someone must look at it now.
ALARMING_RESULTS = frozenset({"secret_key_material"})

# Callbacks get the source's name: a client id, or a federation issuer's name.
FetchCallback = Callable[[str, str], None]  # (name, result in jwks_fetch.FETCH_RESULTS)
KeysCallback = Callable[[str, int], None]   # (name, usable key count)
# (name, the soonest notAfter of the held keys' x5c leaves; None: no certificate, no keys)
CertificatesCallback = Callable[[str, float | None], None]


class CachingKeySource:
    """Keys fetched by a subclass's `_fetch`: cached, refreshed in the background, kept stale.

    Serves the last good set until ``max_stale`` past its expiry while fetches fail; a key
    miss may force one refetch per ``unknown_kid_refresh``, shared by all concurrent callers.
    """

    kind = "remote"
    owner = "client"  # what `name` names, in logs

    def __init__(
        self, name: str, uri: str, settings: JwksFetchSettings, *,
        clock: Callable[[], float] = time.time, on_fetch: FetchCallback | None = None,
        on_keys: KeysCallback | None = None,
        on_certificates: CertificatesCallback | None = None,
    ) -> None:
        self.name = name
        self.uri = uri
        self.settings = settings
        self._who = f"{self.owner} {name}"
        self._clock = clock
        self._on_fetch = on_fetch
        self._on_keys = on_keys
        self._on_certificates = on_certificates
        self._where = loggable_uri(uri)
        self._keyset: KeySet | None = None
        self._etag: str | None = None
        self._expires_at: float | None = None
        self._last_fetch: float | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._last_forced: float | None = None
        self._failures = 0
        self._dropped = False  # the held set went past max_stale and was reported as gone
        self._closed = False
        self._settled = False
        self._settled_or_closed = asyncio.Event()  # what wait_settled() waits for
        self._wake = asyncio.Event()  # the background schedule changed
        self._due = 0.0               # loop time of the next background fetch
        self._runner: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None

    def current(self) -> KeySet | None:
        if self._keyset is None or self._expires_at is None:
            return None
        if self._clock() > self._expires_at + self.settings.max_stale:
            if not self._dropped:
                self._dropped = True
                log.warning("%s: keys from %s are past max_stale; refusing until a fetch "
                            "succeeds", self._who, self._where)
                self._emit(self._on_keys, 0)
                self._emit(self._on_certificates, None)
            return None
        return self._keyset

    def ready(self) -> bool:
        return self.current() is not None

    def settled(self) -> bool:
        return self._settled

    async def wait_settled(self) -> None:
        """Return once settled() is True or the source is closed."""
        await self._settled_or_closed.wait()

    @property
    def closed(self) -> bool:
        """Whether close() was called: the source fetches no more."""
        return self._closed

    async def start(self) -> None:
        if self._runner is None and not self._closed:
            self._runner = asyncio.create_task(self._run(), name=f"jwks:{self.name}")

    async def close(self) -> None:
        self._closed = True
        self._settled_or_closed.set()
        tasks = [task for task in (self._runner, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._inflight = None

    async def refresh_for_unknown_kid(self) -> KeySet | None:
        """Join the fetch in flight, or start one unless one was forced within the interval.

        Concurrent callers share one fetch; a caller cancelled while waiting leaves it running.
        """
        if self._inflight is None and not self._closed:
            now = self._clock()
            last = self._last_forced
            if last is not None and now - last < self.settings.unknown_kid_refresh:
                return self.current()
            self._last_forced = now
            self._start_fetch()
        if self._inflight is not None:
            await asyncio.wait({self._inflight})
        return self.current()

    def status(self) -> KeySourceStatus:
        current = self.current()
        stale = self._expires_at is not None and self._clock() > self._expires_at
        return KeySourceStatus(
            kind=self.kind, uri=self._where, key_count=len(current.keys) if current else 0,
            last_fetch=self._last_fetch, last_success=self._last_success,
            expires_at=self._expires_at, stale=stale and current is not None,
            last_error=self._last_error, has_etag=self._etag is not None,
            ready=current is not None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time()
        while True:
            delay = self._due - loop.time()
            if delay <= 0:
                await asyncio.wait({self._start_fetch()})
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None:
            task = asyncio.create_task(self._fetch_once(), name=f"jwks-fetch:{self.name}")
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self, etag: str | None) -> FetchResult:
        """One fetch of the keys, conditional on `etag`. Raises JwksFetchError."""
        raise NotImplementedError

    async def _fetch_once(self) -> None:
        etag = self._etag if self._keyset is not None else None
        try:
            result = await self._fetch(etag)
        except JwksFetchError as exc:
            self._record_failure(exc)
        except Exception:  # a bug here must not end the refresh loop; it is still a failure
            log.exception("%s: unexpected error fetching %s", self._who, self._where)
            self._record_failure(JwksFetchError("connect_error", "unexpected error"))
        else:
            self._record_success(result)
        # Only a completed attempt settles the source: a cancelled one (close) does not.
        self._settled = True
        self._settled_or_closed.set()

    def _record_success(self, result: FetchResult) -> None:
        now = self._clock()
        self._last_fetch = self._last_success = now
        self._last_error = None
        self._failures = 0
        self._expires_at = now + result.lifetime
        self._etag = result.etag
        if result.not_modified:
            log.debug("%s: keys from %s unchanged, valid %.0fs", self._who, self._where,
                      result.lifetime)
            self._emit(self._on_fetch, "not_modified")
        else:
            assert result.keyset is not None  # a 200 always carries an imported set
            self._keyset = result.keyset
            for problem in result.problems:
                log.warning("%s: %s: skipped %s", self._who, self._where, problem)
            log.info("%s: %d key(s) from %s, valid %.0fs", self._who, len(result.keyset.keys),
                     self._where, result.lifetime)
            self._emit(self._on_fetch, "ok")
        if self._dropped or not result.not_modified:
            self._dropped = False
            self._emit(self._on_keys, len(self._keyset.keys) if self._keyset else 0)
            self._emit(self._on_certificates,
                       self._keyset.certificate_not_after if self._keyset else None)
        self._schedule(result.lifetime * random.uniform(*REFRESH_AT))

    def _record_failure(self, error: JwksFetchError) -> None:
        self._last_fetch = self._clock()
        self._last_error = error.reason
        self._failures += 1
        held = "serving the last good keys" if self.current() is not None else "no keys to serve"
        level = logging.ERROR if error.reason in ALARMING_RESULTS else logging.WARNING
        log.log(level, "%s: fetching keys from %s failed (%s: %s); %s", self._who,
                self._where, error.reason, error.detail, held)
        self._emit(self._on_fetch, error.reason)
        backoff = FIRST_RETRY * 2 ** min(self._failures - 1, 16)
        self._schedule(min(backoff, MAX_RETRY, self.settings.min_ttl))

    def _schedule(self, delay: float) -> None:
        self._due = asyncio.get_running_loop().time() + max(delay, MIN_DELAY)
        self._wake.set()

    def _emit(self, callback: Callable[[str, Any], None] | None,
              value: str | int | float | None) -> None:
        if callback is not None:
            try:
                callback(self.name, value)
            except Exception:  # metrics must never break key refresh
                log.exception("%s: metrics callback failed", self._who)


class RemoteKeySource(CachingKeySource):
    """A client's keys fetched from its jwks_uri over the shared JWKS session."""

    kind = "jwks_uri"

    def __init__(
        self, client_id: str, uri: str, settings: JwksFetchSettings,
        session: aiohttp.ClientSession, *, clock: Callable[[], float] = time.time,
        on_fetch: FetchCallback | None = None, on_keys: KeysCallback | None = None,
        on_certificates: CertificatesCallback | None = None,
    ) -> None:
        super().__init__(client_id, uri, settings, clock=clock, on_fetch=on_fetch,
                         on_keys=on_keys, on_certificates=on_certificates)
        self.client_id = client_id
        self._session = session

    async def _fetch(self, etag: str | None) -> FetchResult:
        return await fetch_jwks(self._session, self.uri, self.settings, etag, clock=self._clock)
