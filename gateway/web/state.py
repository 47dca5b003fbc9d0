"""Typed keys of the application state shared by the app factory and the handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.adapters.assemble import RuntimeSlot
from gateway.adapters.audit import AuditLog
from gateway.adapters.metrics import GatewayMetrics
from gateway.adapters.upstream import Upstream
from gateway.config.settings import LimitSettings
from gateway.core.brakes import FailureLimiter
from gateway.core.replay import ReplayLedger


@dataclass(slots=True)
class Guards:
    """The request limits and failure brakes, prepared once from ``limits``."""

    limits: LimitSettings
    client_failures: FailureLimiter
    address_failures: FailureLimiter
    in_flight: int = 0

    @classmethod
    def from_settings(cls, limits: LimitSettings) -> Guards:
        per_client, per_address = limits.failures_per_client, limits.failures_per_address
        return cls(limits,
                   FailureLimiter(per_client.rate, per_client.burst, limits.max_tracked),
                   FailureLimiter(per_address.rate, per_address.burst, limits.max_tracked))


RUNTIME = web.AppKey("runtime", RuntimeSlot)
GUARDS = web.AppKey("guards", Guards)
LEDGER = web.AppKey("ledger", ReplayLedger)
METRICS = web.AppKey("metrics", GatewayMetrics)
AUDIT = web.AppKey("audit", AuditLog)
UPSTREAM = web.AppKey("upstream", Upstream)
