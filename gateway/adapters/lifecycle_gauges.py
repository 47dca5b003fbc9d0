"""The key lifecycle gauges per client, computed off the request path from the usage book
and the key sets the runtime holds: at every /metrics scrape and every UPDATE_INTERVAL.

A client id is the only label: no kid, thumbprint or subject ever becomes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from gateway.adapters.assemble import Runtime, registered_keys
from gateway.adapters.key_lifecycle import lifecycle_policy
from gateway.adapters.metrics import MULTIPROC_ENV, GatewayMetrics
from gateway.core.lifecycle import UNUSED, credential_flags
from gateway.core.usage import UsageBook, key_ref

log = logging.getLogger("gateway.metrics")

UPDATE_INTERVAL = 15.0  # seconds between two updates besides the scrapes


@dataclass(frozen=True, slots=True)
class ClientGauges:
    """One client's lifecycle values; None: no series (nothing known, or not applicable)."""

    last_success: float | None  # epoch seconds
    oldest_key_age: float | None  # seconds since the oldest held key was first seen
    unused_keys: int | None  # held keys flagged unused (0 while key_unused_after is off)
    keys: int | None  # registered keys held; None for a client without a key set held


def client_gauges(runtime: Runtime, usage: UsageBook | None,
                  now: float) -> dict[str, ClientGauges]:
    """Every served client's lifecycle values at ``now``; ``usage`` None: tracking is off,
    so only the key counts are known."""
    values: dict[str, ClientGauges] = {}
    for client_id, client in runtime.clients.items():
        last_success = usage.last_success(client_id) if usage is not None else None
        registered = registered_keys(client)
        held = registered.source.current() if registered is not None else None
        if held is None:
            values[client_id] = ClientGauges(last_success, None, None, None)
            continue
        keys = held.keys
        if usage is None:
            values[client_id] = ClientGauges(None, None, None, len(keys))
            continue
        policy = lifecycle_policy(runtime.settings, client_id)
        usages = [usage.usage(client_id, key_ref(key.thumbprint)) for key in keys]
        ages = [now - used.first_seen for used in usages
                if used is not None and used.first_seen is not None]
        unused = sum(UNUSED in credential_flags(used, now, policy) for used in usages)
        values[client_id] = ClientGauges(last_success, max(ages, default=None), unused,
                                         len(keys))
    return values


class LifecycleGauges:
    """Writes ``client_gauges`` into the metrics, dropping the series of clients gone."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self._gauges = (metrics.client_last_success, metrics.client_oldest_key_age,
                        metrics.client_unused_keys, metrics.client_keys)
        self._held: dict[str, list[bool]] = {}  # per client: which gauges hold a series

    def update(self, runtime: Runtime, usage: UsageBook | None, now: float) -> None:
        values = client_gauges(runtime, usage, now)
        for client_id, client in values.items():
            held = self._held.setdefault(client_id, [False] * len(self._gauges))
            fields = (client.last_success, client.oldest_key_age, client.unused_keys,
                      client.keys)
            for index, (gauge, value) in enumerate(zip(self._gauges, fields, strict=True)):
                if value is not None:
                    gauge.labels(client_id).set(value)
                    held[index] = True
                elif held[index]:
                    self._drop(gauge, client_id)
                    held[index] = False
        for client_id in self._held.keys() - values.keys():
            for gauge, holds in zip(self._gauges, self._held.pop(client_id), strict=True):
                if holds:
                    self._drop(gauge, client_id)

    @staticmethod
    def _drop(gauge: Gauge, client_id: str) -> None:
        if os.environ.get(MULTIPROC_ENV):
            # Worker processes cannot remove a series: NaN is never past a threshold.
            gauge.labels(client_id).set(math.nan)
        else:
            with contextlib.suppress(KeyError):
                gauge.remove(client_id)


async def keep_updated(update: Callable[[], None], interval: float = UPDATE_INTERVAL) -> None:
    """Call ``update`` now and every ``interval`` seconds until cancelled; a failure is
    logged and the next round tried."""
    while True:
        try:
            update()
        except Exception:  # a gauge must never take the process down
            log.exception("key lifecycle gauges: update failed")
        await asyncio.sleep(interval)
