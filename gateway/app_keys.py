"""Typed keys of the application state shared by the app factory and the handlers."""

from __future__ import annotations

from aiohttp import web

from .audit import AuditLog
from .metrics import GatewayMetrics
from .replay import ReplayLedger
from .runtime import RuntimeSlot
from .upstream import Upstream

RUNTIME = web.AppKey("runtime", RuntimeSlot)
LEDGER = web.AppKey("ledger", ReplayLedger)
METRICS = web.AppKey("metrics", GatewayMetrics)
AUDIT = web.AppKey("audit", AuditLog)
UPSTREAM = web.AppKey("upstream", Upstream)
