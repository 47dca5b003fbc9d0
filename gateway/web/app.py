"""The gateway process: both listeners' lifecycles, the state they share, reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.adapters.assemble import (
    RemoteKeys,
    Runtime,
    RuntimeSlot,
    build_ledger,
    build_runtime,
    build_usage_store,
    close_sources,
    start_sources,
)
from gateway.adapters.audit import AuditLog, AuditSink
from gateway.adapters.certificate_expiry import registered_certificate_expiry
from gateway.adapters.jwks_fetch import new_jwks_session
from gateway.adapters.key_watch import CHECK_INTERVAL, KeyWatch
from gateway.adapters.lifecycle_gauges import LifecycleGauges, keep_updated
from gateway.adapters.metrics import GatewayMetrics
from gateway.adapters.upstream import new_upstream
from gateway.config.errors import ConfigError
from gateway.config.loading import load_settings
from gateway.config.settings import JwksFetchSettings, Settings
from gateway.core.client_address import TrustedProxies
from gateway.core.replay import ReplayLedger
from gateway.core.usage import UsageBook
from gateway.web.admin import create_admin_app
from gateway.web.handlers import PublicHandler
from gateway.web.state import Guards, new_authenticator
from gateway.web.tls import load_certificate, new_server_context

log = logging.getLogger("gateway")

# Settings a running process cannot change: a reload applies the rest and says so.
RESTART_ONLY = ("listen", "admin", "backend", "replay", "audit", "log", "limits", "usage")


class Gateway:
    """The two applications of one gateway process, the state they share, and reload."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: ReplayLedger | None = None,
        metrics: GatewayMetrics | None = None,
        audit_stream: AuditSink | None = sys.stdout,
        config_path: Path | None = None,
        worker: int | None = None,
        clock: Callable[[], float] = time.time,
        key_check_interval: float = CHECK_INTERVAL,
    ) -> None:
        """Build both listeners' handlers; resources are opened by start() and closed by stop().

        ``clock`` is the wall clock of key dates and certificate warnings (tests move it);
        ``key_check_interval`` the seconds between two looks at what time alone changes.

        Raises ConfigError when a key set or the TLS files cannot be loaded, ValueError for
        an inconsistent replay store.
        """
        # Validate every key set before anything starts; remote sets are created on startup,
        # inside the running loop that their HTTP session needs.
        self.slot = RuntimeSlot(build_runtime(settings))
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.ledger = ledger if ledger is not None else build_ledger(
            settings, on_reset=self.metrics.replay_ledger_resets.inc)
        # Usage per credential; with replay.store: redis, merged with every other process's.
        self.usage = UsageBook()
        self.clock = clock  # wall time of usage, key dates and the inventory (tests move it)
        self.usage_store = build_usage_store(
            settings, self.usage, lambda: self.slot.current.settings.clients.keys())
        self.config_path = config_path
        self.worker = worker  # this process's slot under `serve --workers N`
        self.supervised = worker is not None
        # Every worker reloads on the supervisor's SIGHUP; one reload is counted once, by
        # worker 0.
        self.counts_reloads = worker in (None, 0)
        self.draining = False  # set on SIGTERM: /readyz answers 503 while requests finish
        # One context for the listener's life; a reload loads new files into it.
        tls = settings.listen.tls
        self.tls_context = new_server_context(tls) if tls is not None else None
        self._reload_lock = asyncio.Lock()
        self._jwks: tuple[JwksFetchSettings, aiohttp.ClientSession] | None = None
        limits = settings.limits
        guards = Guards(limits)
        self.metrics.in_flight_source = lambda: guards.in_flight
        self.handler = PublicHandler(self.slot, guards, new_authenticator(limits, self.ledger),
                                     self.metrics, AuditLog(audit_stream),
                                     TrustedProxies(settings.listen.trusted_proxies))
        if settings.usage.enabled:
            self.handler.usage = self.usage
            self.handler.usage_clock = clock
        # Key-change events go to the audit log, written by one worker of several (each
        # worker sees the same configuration and fetches the same sets); every worker tells
        # its usage book which keys and trusts it holds (their first sighting).
        self.key_watch = KeyWatch(
            self.handler.audit.write_event if self.counts_reloads else None,
            observe=self.usage.observe if settings.usage.enabled else None,
            clock=clock, interval=key_check_interval)
        # Per-client key lifecycle gauges: every scrape and every 15 s, off the request path.
        self.lifecycle_gauges = LifecycleGauges(self.metrics)
        self._lifecycle_task: asyncio.Task[None] | None = None
        # The public listener's HTTP/1.1 server settings: request framing and limits.
        self.server_args: dict[str, Any] = {
            "auto_decompress": False, "max_line_size": limits.max_line_size,
            "max_field_size": limits.max_header_size, "max_headers": limits.max_headers,
            "keepalive_timeout": limits.keepalive_timeout}
        self.admin = create_admin_app(self)

    @property
    def runtime(self) -> Runtime:
        return self.slot.current

    async def start(self) -> None:
        """Open what serving needs: the backend pool, key sources, the ledger, metrics flushes.

        Called by PublicRunner inside the running loop, before the listener accepts.
        """
        self.handler.upstream = new_upstream(self.slot.current.settings.backend, self.metrics)
        await self._install(self.slot.current.settings)
        await self.key_watch.start()
        if self.usage_store is not None:
            await self.usage_store.start()  # the shared view first (bounded), then every flush
        self._lifecycle_task = asyncio.create_task(keep_updated(self.update_lifecycle_gauges))
        if not await self.ledger.ping():
            log.warning("replay ledger (%s) not reachable at start-up: requests get 503 "
                        "until it is", self.ledger.name)

    async def stop(self) -> None:
        """Close what start() opened, in reverse, once requests in flight have finished."""
        self.metrics.flush()  # what the last requests counted
        if self._lifecycle_task is not None:
            self._lifecycle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle_task
            self._lifecycle_task = None
        if self.usage_store is not None:
            await self.usage_store.close()  # what the last requests used goes to Redis
        await self.ledger.close()
        await self.key_watch.close()
        await self._close()
        if self.handler.upstream is not None:
            await self.handler.upstream.close()

    def update_lifecycle_gauges(self) -> None:
        """The per-client key lifecycle gauges from the usage book and the keys held now."""
        self.lifecycle_gauges.update(self.slot.current, self.handler.usage, self.clock())

    def public_runner(self, **kwargs: Any) -> PublicRunner:
        """A runner for the public listener (aiohttp's low-level server, this gateway's handler).

        ``kwargs`` go to aiohttp's runner and server (access_log, shutdown_timeout, ...).
        """
        return PublicRunner(self, **kwargs)

    def _hooks(self, session: aiohttp.ClientSession) -> RemoteKeys:
        metrics, watch = self.metrics, self.key_watch

        def fetched(name: str, result: str) -> None:
            metrics.count_fetch(name, result)
            watch.seen(name)

        def keys(name: str, count: int) -> None:
            metrics.jwks_keys.labels(name).set(count)
            watch.seen(name)

        return RemoteKeys(session, on_fetch=fetched, on_keys=keys,
                          on_certificates=metrics.set_certificate_expiry)

    async def _install(self, settings: Settings) -> None:
        """Build and start a runtime for ``settings`` and put it in force.

        Raises ConfigError when a key set cannot be imported; the old runtime stays.
        """
        old, fetch = self.slot.current, settings.jwks_fetch
        # The JWKS session carries the fetch rules (TLS anchors, address guard): new rules,
        # new session, committed only once the new runtime is in force.
        renew = self._jwks is None or self._jwks[0] != fetch
        session = new_jwks_session(fetch) if renew or self._jwks is None else self._jwks[1]
        try:
            new = build_runtime(settings, remote=self._hooks(session), previous=old)
        except ConfigError:
            if renew:
                await session.close()
            raise
        await start_sources(new, previous=old)
        self.slot.current = new
        self.key_watch.install(new)
        await close_sources(old, keep=new)
        if renew:
            if self._jwks is not None:
                await self._jwks[1].close()
            self._jwks = (fetch, session)
        self._update_key_gauges(old, new)

    def _update_key_gauges(self, old: Runtime, new: Runtime) -> None:
        """Each client's key count and certificate expiry as ``new`` holds them; the series
        of clients that no longer have them go."""
        # A client's own keys; an issuer's keys are counted under the issuer's name.
        # A CA-anchored client's key comes with each assertion: it has no key set to count.
        own = {client_id: sources for client_id, client in new.clients.items()
               if (sources := [source for credential in client.credentials
                               for source in credential.key_sources()])}
        for client_id, sources in own.items():
            held = (source.current() for source in sources)
            count = sum(len(keys.keys) for keys in held if keys is not None)
            self.metrics.jwks_keys.labels(client_id).set(count)
        for client_id in old.clients.keys() - own.keys():
            with contextlib.suppress(KeyError):  # a client without own keys has no series
                self.metrics.jwks_keys.remove(client_id)
        for client_id, not_after in registered_certificate_expiry(new).items():
            self.metrics.set_certificate_expiry(client_id, not_after)
        for client_id in self.metrics.certificate_clients() - new.clients.keys():
            self.metrics.set_certificate_expiry(client_id, None)

    async def _close(self) -> None:
        await close_sources(self.slot.current)
        if self._jwks is not None:
            await self._jwks[1].close()
            self._jwks = None

    def reopen_audit(self) -> None:
        """Reopen ``audit.output`` by its path (after log rotation): SIGUSR1 and every reload."""
        try:
            path = self.handler.audit.reopen()
        except OSError as exc:
            log.error("audit.output: cannot reopen %s (%s): lines keep going to the file "
                      "already open", exc.filename, (exc.strerror or str(exc)).lower())
            return
        if path is not None:
            log.info("audit.output: reopened %s", path)

    def _count_reload(self, result: str) -> None:
        if self.counts_reloads:
            self.metrics.config_reloads.labels(result).inc()

    async def check_reload(self) -> None:
        """Check the config file as a reload would, without putting anything in force.

        For a worker of several, before it asks the supervisor to reload them all. Raises
        ConfigError listing every problem, and counts that refused reload.
        """
        def check(path: Path) -> None:
            settings = load_settings(path)
            build_runtime(settings)  # every key set imported; nothing fetched or started
            if settings.listen.tls is not None:
                new_server_context(settings.listen.tls)

        try:
            if self.config_path is None:
                raise ConfigError([("", "no configuration file to reload")])
            await asyncio.to_thread(check, self.config_path)
        except ConfigError:
            # No worker reloads after this refusal: this one counts it, whatever its slot.
            self.metrics.config_reloads.labels("refused").inc()
            raise

    async def reload(self, settings: Settings | None = None) -> None:
        """Put new settings in force for new requests (in-flight ones finish on the old).

        Without ``settings``, re-reads the config file (and its jwks_files). Reopens
        ``audit.output`` first, whatever the outcome.
        Raises ConfigError listing every problem; the running configuration then stays.
        """
        self.reopen_audit()
        async with self._reload_lock:
            try:
                if settings is None:
                    if self.config_path is None:
                        raise ConfigError([("", "no configuration file to reload")])
                    settings = await asyncio.to_thread(load_settings, self.config_path)
                before = self.slot.current.settings
                if self.tls_context is not None and settings.listen.tls is not None:
                    load_certificate(self.tls_context, settings.listen.tls)
                await self._install(settings)
            except ConfigError:
                self._count_reload("refused")
                raise
            self._count_reload("ok")
        ignored = [key for key in RESTART_ONLY if getattr(before, key) != getattr(settings, key)]
        if ignored:
            log.warning("reload: changes to %s take effect after a restart", ", ".join(ignored))
        log.info("reload: %d client(s) in force", len(self.slot.current.clients))


class PublicRunner(web.BaseRunner):
    """Runs the public listener on aiohttp's low-level server (no router, no middlewares).

    Setting up starts the gateway (pool, key sources, ledger); cleaning up stops accepting,
    gives requests in flight ``shutdown_timeout`` to finish, then stops the gateway.
    """

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gateway = gateway

    async def shutdown(self) -> None:
        return None

    async def _make_server(self) -> web.Server:
        await self._gateway.start()
        return web.Server(self._gateway.handler, **self._gateway.server_args, **self._kwargs)

    async def _cleanup_server(self) -> None:
        await self._gateway.stop()


# The factory the CLI, the demo and the tests call.
create_gateway = Gateway
