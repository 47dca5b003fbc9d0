"""``pkjwt-gateway serve``: one process serving both listeners, or a supervisor of several."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TextIO

from aiohttp import web

from gateway.cli.supervisor import supervise
from gateway.config.errors import ConfigError
from gateway.config.loading import load_settings
from gateway.config.settings import Settings
from gateway.web.app import Gateway, create_gateway
from gateway.web.listener import CappedSite

EXIT_OK, EXIT_ERRORS = 0, 2
GC_FIRST_GENERATION = 7_000  # allocations between young collections (CPython: 700)
log = logging.getLogger("gateway")


def memory_store_problem(settings: Settings, workers: int) -> list[tuple[str, str]]:
    """A memory ledger cannot see replays sent to another process: refuse that pairing."""
    if workers > 1 and settings.replay.store == "memory":
        return [("replay.store", f"memory cannot be shared by {workers} worker processes "
                 "(a replay sent to another worker would be accepted); use store: redis")]
    return []


def serve(path: Path, workers: int, *, worker: bool = False) -> int:
    """Run the gateway until SIGTERM/SIGINT; exit 0 after a clean drain, 2 on bad settings."""
    try:
        settings = load_settings(path)
        problems = memory_store_problem(settings, workers)
        if problems:
            raise ConfigError(problems)
        if workers > 1 and not worker:
            return supervise(path, workers, settings.listen.shutdown_grace)
        audit = open_audit_sink(settings)
        gateway = create_gateway(settings, config_path=path, supervised=worker,
                                 audit_stream=audit)
    except ConfigError as exc:
        for where, message in exc.problems:
            log.error("config: %s: %s", where, message)
        return EXIT_ERRORS
    except (ValueError, OSError) as exc:
        log.error("config: %s", exc)
        return EXIT_ERRORS
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return asyncio.run(_serve(gateway, settings, reuse_port=worker))
    return uvloop.run(_serve(gateway, settings, reuse_port=worker))


def open_audit_sink(settings: Settings) -> TextIO | None:
    """Where audit lines go: stdout, nowhere, or a file opened for appending.

    Raises OSError when the file cannot be opened.
    """
    output = settings.audit.output
    if output == "off":
        return None
    if output == "stdout":
        return sys.stdout
    # O_APPEND: several worker processes can share one file; each flush is one write.
    # The file lives as long as the process.
    return open(output, "a", encoding="utf-8")


async def _reload(gateway: Gateway) -> None:
    """SIGHUP: re-read the config file; a refused one is logged and the old one stays."""
    try:
        await gateway.reload()
    except ConfigError as exc:
        for where, message in exc.problems:
            log.error("reload refused: %s: %s", where, message)


async def _serve(gateway: Gateway, settings: Settings, *, reuse_port: bool) -> int:
    grace = settings.listen.shutdown_grace
    public = gateway.public_runner(access_log=None, shutdown_timeout=grace)
    admin = web.AppRunner(gateway.admin, access_log=None, shutdown_timeout=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload(gateway))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        for runner in (public, admin):
            await runner.setup()
        # Workers share each port through SO_REUSEPORT: the kernel spreads connections.
        await CappedSite(public, settings.listen.host, settings.listen.port,
                         max_connections=settings.limits.max_connections,
                         ssl_context=gateway.tls_context, reuse_port=reuse_port or None).start()
        await web.TCPSite(admin, settings.admin.host, settings.admin.port,
                          reuse_port=reuse_port or None).start()
        log.info("listening on %s:%d (admin %s:%d)", settings.listen.host, settings.listen.port,
                 settings.admin.host, settings.admin.port)
        # Everything loaded so far (settings, keys, libraries) lives as long as the process:
        # keep it out of the collector's full passes.
        gc.freeze()
        # Neither a served nor a refused request leaves cyclic garbage (a test keeps refusals
        # so), so young collections find nothing: run them ten times less often.
        gc.set_threshold(GC_FIRST_GENERATION, *gc.get_threshold()[1:])
        await stop.wait()
        gateway.draining = True
        log.info("draining: no new connections, up to %gs for requests in flight", grace)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return EXIT_ERRORS
    finally:
        # The public runner stops accepting at once, waits for handlers up to the grace
        # period, then closes the backend pool, key sources and ledger (cleanup_ctx).
        for runner in (public, admin):
            with contextlib.suppress(Exception):
                await runner.cleanup()
    log.info("stopped")
    return EXIT_OK
