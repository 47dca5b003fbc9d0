"""``pkjwt-gateway serve``: one process serving both listeners, or a supervisor of several."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from gateway.adapters.audit import AuditFile, AuditSink
from gateway.cli.logs import configure_logging
from gateway.cli.supervisor import HELD_SIGNALS, supervise
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


def audit_output_problem(settings: Settings) -> list[tuple[str, str]]:
    """Whether ``audit.output`` can be appended to, found without creating or changing it."""
    output = settings.audit.output
    if output in ("stdout", "off"):
        return []
    try:
        problem = _unwritable(Path(output))
    except OSError as exc:
        problem = (exc.strerror or str(exc)).lower()
    return [("audit.output", f"cannot append to {output}: {problem}")] if problem else []


def _unwritable(path: Path) -> str | None:
    if path.is_dir():
        return "it is a directory"
    if path.is_file():
        # Opening for appending changes nothing; unlike access(2) it also fails for root
        # on a read-only filesystem.
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        return None
    if path.exists():  # a device or a pipe: opening it might block or have effects
        return None if os.access(path, os.W_OK) else "it is not writable"
    parent = path.parent
    if not parent.is_dir():
        return f"the directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no file can be created in {parent}"
    return None


def serve(path: Path, workers: int, *, worker: int | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; exit 0 after a clean drain, 2 on bad settings.

    ``worker`` is this process's slot under ``serve --workers N`` (None otherwise).
    """
    try:
        settings = load_settings(path)
        configure_logging(settings.log, worker=worker)
        problems = memory_store_problem(settings, workers) + audit_output_problem(settings)
        if problems:
            raise ConfigError(problems)
        if workers > 1 and worker is None:
            return supervise(path, workers, settings.listen.shutdown_grace)
        audit = open_audit_sink(settings)
        gateway = create_gateway(settings, config_path=path, worker=worker,
                                 audit_stream=audit)
    except ConfigError as exc:
        for where, message in exc.problems:
            log.error("config: %s: %s", where, message)
        return EXIT_ERRORS
    except (ValueError, OSError) as exc:
        log.error("config: %s", exc)
        return EXIT_ERRORS
    reuse_port = worker is not None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return asyncio.run(_serve(gateway, settings, reuse_port=reuse_port))
    return uvloop.run(_serve(gateway, settings, reuse_port=reuse_port))


def open_audit_sink(settings: Settings) -> AuditSink | None:
    """Where audit lines go: stdout, nowhere, or a file appended to (reopened on rotation).

    Raises ConfigError naming ``audit.output`` when the file cannot be opened.
    """
    output = settings.audit.output
    if output == "off":
        return None
    if output == "stdout":
        return sys.stdout
    try:
        return AuditFile(output)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError([("audit.output", f"cannot append to {output}: {reason}")]) from exc


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
    # SIGUSR1: only reopen audit.output (after log rotation), without a reload.
    loop.add_signal_handler(signal.SIGUSR1, gateway.reopen_audit)
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
        # A worker starts with these held by the supervisor: one relayed while it was
        # starting is delivered now, to its handler, once starting is over.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
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
