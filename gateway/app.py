"""The aiohttp applications (public and admin), their resources and their lifecycles."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TextIO

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .app_keys import AUDIT, LEDGER, METRICS, RUNTIME, UPSTREAM
from .audit import AuditLog
from .config import Settings
from .handlers import dispatch
from .metrics import GatewayMetrics
from .replay import MemoryReplayLedger, ReplayLedger
from .runtime import Runtime, build_runtime
from .upstream import new_upstream


@dataclass(slots=True)
class Gateway:
    """The two applications of one gateway process and the state they share."""

    public: web.Application
    admin: web.Application
    runtime: Runtime
    metrics: GatewayMetrics
    ledger: ReplayLedger


def build_ledger(settings: Settings) -> ReplayLedger:
    """The replay ledger the settings ask for.

    Raises ValueError for a store this version cannot provide.
    """
    if settings.replay.store == "memory":
        return MemoryReplayLedger(settings.replay.max_entries)
    raise ValueError(f"replay store {settings.replay.store!r} is not available in this version")


def create_gateway(
    settings: Settings,
    *,
    ledger: ReplayLedger | None = None,
    metrics: GatewayMetrics | None = None,
    audit_stream: TextIO | None = sys.stdout,
) -> Gateway:
    """Build both applications; resources are opened on startup and closed on cleanup.

    Raises ConfigError when the settings name something this version cannot serve.
    """
    runtime = build_runtime(settings)
    ledger = ledger if ledger is not None else build_ledger(settings)
    metrics = metrics if metrics is not None else GatewayMetrics()
    for client_id, client in runtime.clients.items():
        current = client.keys.current()
        metrics.jwks_keys.labels(client_id).set(len(current.keys) if current else 0)

    public = web.Application(client_max_size=1024 * 1024, handler_args={"auto_decompress": False})
    public[RUNTIME] = runtime
    public[LEDGER] = ledger
    public[METRICS] = metrics
    public[AUDIT] = AuditLog(audit_stream)

    async def backend_pool(app: web.Application) -> AsyncIterator[None]:
        upstream = new_upstream(settings.backend)
        app[UPSTREAM] = upstream
        yield
        await upstream.close()

    async def close_ledger(app: web.Application) -> AsyncIterator[None]:
        yield
        await ledger.close()

    public.cleanup_ctx.append(backend_pool)
    public.cleanup_ctx.append(close_ledger)
    public.router.add_route("*", "/{tail:.*}", dispatch)
    admin = create_admin_app(runtime, ledger, metrics)
    return Gateway(public=public, admin=admin, runtime=runtime, metrics=metrics, ledger=ledger)


def create_admin_app(
    runtime: Runtime, ledger: ReplayLedger, metrics: GatewayMetrics
) -> web.Application:
    """/metrics, /healthz and /readyz, served on the admin listener only."""
    admin = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        parts = {
            "config": True,
            "keys": all(c.keys.ready() for c in runtime.clients.values()),
            "ledger": ledger.ready(),
        }
        ready = all(parts.values())
        body = {"status": "ready" if ready else "not_ready", "checks": parts}
        return web.Response(status=200 if ready else 503, text=json.dumps(body),
                            content_type="application/json")

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return admin
