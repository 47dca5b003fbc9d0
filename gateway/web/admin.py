"""The admin listener's app: /metrics, /healthz, /readyz, /inventory and POST /reload."""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.adapters.inventory import build_inventory
from gateway.adapters.metrics import MULTIPROC_ENV, GatewayMetrics
from gateway.config.errors import ConfigError

if TYPE_CHECKING:
    from gateway.web.app import Gateway

log = logging.getLogger("gateway")


def exposition_registry(metrics: GatewayMetrics) -> CollectorRegistry:
    """What /metrics shows: this process's registry, or with worker processes the sum of all.

    prometheus-client switches to multiprocess values when PROMETHEUS_MULTIPROC_DIR is set
    before it is imported; the supervisor sets it for its workers.
    """
    if not os.environ.get(MULTIPROC_ENV):
        return metrics.registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    return registry


def create_admin_app(gateway: Gateway) -> web.Application:
    """/metrics, /healthz, /readyz, /inventory and POST /reload, on the admin listener only."""
    admin = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        runtime = gateway.slot.current
        parts = {
            "config": True,
            "keys": runtime.settings.jwks_fetch.ready_without_keys or runtime.keys_settled(),
            # Without traffic nothing else would notice a store that came back.
            "ledger": gateway.ledger.ready() or await gateway.ledger.ping(),
            "serving": not gateway.draining,
        }
        ready = all(parts.values())
        body = {"status": "ready" if ready else "not_ready", "checks": parts}
        return web.Response(status=200 if ready else 503, text=json.dumps(body),
                            content_type="application/json")

    async def reload(_: web.Request) -> web.Response:
        try:
            if gateway.supervised:
                # This connection reached one worker of several: it checks the file first,
                # so a refusal is answered here; then the supervisor reloads them all.
                await gateway.check_reload()
                os.kill(os.getppid(), signal.SIGHUP)
                return web.json_response({"status": "requested", "detail": "every worker "
                                          "re-reads the file"}, status=202)
            await gateway.reload()
        except ConfigError as exc:
            for where, message in exc.problems:
                log.error("reload refused: %s: %s", where, message)
            problems = [{"path": where, "message": message} for where, message in exc.problems]
            return web.json_response({"status": "refused", "problems": problems}, status=400)
        return web.json_response({"status": "reloaded",
                                  "clients": sorted(gateway.slot.current.clients)})

    async def inventory(_: web.Request) -> web.Response:
        # The usage book as it stands: with Redis, merged at the last flush.
        scope = ("off" if gateway.handler.usage is None
                 else "shared" if gateway.usage_store is not None else "process")
        document = build_inventory(gateway.slot.current, gateway.usage, gateway.clock(),
                                   usage_scope=scope)
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_post("/reload", reload)
    admin.router.add_get("/inventory", inventory)
    exposition = make_aiohttp_handler(exposition_registry(gateway.metrics))

    async def metrics(request: web.Request) -> web.StreamResponse:
        gateway.metrics.flush()  # this process's share is exact at every scrape
        gateway.update_lifecycle_gauges()
        return await exposition(request)

    admin.router.add_get("/metrics", metrics)
    return admin
