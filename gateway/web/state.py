"""Typed keys of the application state shared by the app factory and the handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.adapters.assemble import RuntimeSlot
from gateway.adapters.audit import AuditLog
from gateway.adapters.metrics import GatewayMetrics
from gateway.adapters.upstream import Upstream
from gateway.config.settings import LimitSettings
from gateway.core.authenticator import Authenticator, Brakes
from gateway.core.brakes import FailureLimiter
from gateway.core.replay import ReplayLedger


@dataclass(slots=True)
class Guards:
    """The request limits, and how many requests are being handled now."""

    limits: LimitSettings
    in_flight: int = 0


def brakes_for(limits: LimitSettings) -> Brakes:
    """The failure brakes ``limits`` asks for."""
    per_client, per_address = limits.failures_per_client, limits.failures_per_address
    return Brakes(FailureLimiter(per_client.rate, per_client.burst, limits.max_tracked),
                  FailureLimiter(per_address.rate, per_address.burst, limits.max_tracked))


def new_authenticator(limits: LimitSettings, ledger: ReplayLedger) -> Authenticator:
    return Authenticator(ledger, brakes_for(limits), max_body=limits.max_body_bytes)


RUNTIME = web.AppKey("runtime", RuntimeSlot)
GUARDS = web.AppKey("guards", Guards)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
LEDGER = web.AppKey("ledger", ReplayLedger)
METRICS = web.AppKey("metrics", GatewayMetrics)
AUDIT = web.AppKey("audit", AuditLog)
UPSTREAM = web.AppKey("upstream", Upstream)
