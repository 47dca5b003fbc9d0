"""What the public handler keeps between requests: the limits, the load, the brakes."""

from __future__ import annotations

from dataclasses import dataclass

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
