"""Prometheus metrics of the gateway, in a registry the app owns (labels from bounded sets only)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__
from gateway.adapters.tally import RequestTally

# Verification takes tens to hundreds of µs; the default buckets start at 5 ms.
VERIFICATION_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01,
                        0.02, 0.05, 0.1)
# A replay check is a dict lookup (memory) or a loopback round trip (Redis, ~150 µs) up to
# the 250 ms default budget.
REPLAY_CHECK_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01,
                        0.025, 0.05, 0.1, 0.25)
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_CLIENT = "unknown"
# Where worker processes keep their metric files (prometheus-client multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FETCH_SUCCESS = frozenset({"ok", "not_modified"})


def status_class(status: int) -> str:
    """'2xx' .. '5xx'; anything else is 'other'."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class GatewayMetrics:
    """Every metric the gateway exports; one instance per app, with its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.client_auth = Counter(
            "pkjwt_client_auth_total", "Client authentication decisions.",
            ("client", "endpoint", "result", "reason", "method"), registry=r)
        self.verification_seconds = Histogram(
            "pkjwt_verification_seconds", "Time to parse and verify one client assertion.",
            buckets=VERIFICATION_BUCKETS, registry=r)
        self.replay_checks = Counter(
            "pkjwt_replay_checks_total", "Replay ledger checks.", ("store", "result"), registry=r)
        self.replay_check_seconds = Histogram(
            "pkjwt_replay_check_seconds", "Time of one replay ledger check, failures included.",
            ("store",), buckets=REPLAY_CHECK_BUCKETS, registry=r)
        # Counted off the request path, by the ledger, when it learns of a loss (no labels:
        # present at 0 from the start).
        self.replay_ledger_resets = Counter(
            "pkjwt_replay_ledger_resets_total",
            "Losses of the shared replay ledger's data (restart, flush, failover) learnt of.",
            registry=r)
        self.federation_decisions = Counter(
            "pkjwt_federation_decisions_total",
            "Federated trusts' verdicts on verified platform tokens (match or mismatch).",
            ("client", "trust", "mode", "result"), registry=r)
        self.jwks_fetch = Counter(
            "pkjwt_jwks_fetch_total", "Remote JWKS fetches.", ("client", "result"), registry=r)
        # Gauges say how worker processes combine under multiprocess mode.
        self.jwks_keys = Gauge(
            "pkjwt_jwks_keys", "Usable verification keys per client.", ("client",), registry=r,
            multiprocess_mode="max")
        self.jwks_last_success = Gauge(
            "pkjwt_jwks_last_success_timestamp_seconds",
            "Unix time of the last good fetch of a client's remote key set.", ("client",),
            registry=r, multiprocess_mode="max")
        # Registered keys: the soonest x5c leaf's notAfter; a CA-anchored client: the leaf it
        # presented last. Worker processes agree on the former; the latter is the most
        # recently seen by any of them.
        self.certificate_expiry = Gauge(
            "pkjwt_client_certificate_expiry_timestamp_seconds",
            "Unix time the client's certificate expires (the soonest of its registered keys' "
            "x5c leaves, or the leaf a CA-anchored client presented last).", ("client",),
            registry=r, multiprocess_mode="mostrecent")
        self._certificate_expiry: dict[str, float] = {}  # what the gauge holds, per client
        # Key lifecycle per client, written off the request path (adapters.lifecycle_gauges)
        # from the usage book and the key sets held. The last success only grows: the
        # latest any live worker knows. The others are computed at each update: the freshest.
        self.client_last_success = Gauge(
            "pkjwt_client_last_success_timestamp_seconds",
            "Unix time of the client's last successful authentication, with any credential.",
            ("client",), registry=r, multiprocess_mode="livemax")
        self.client_oldest_key_age = Gauge(
            "pkjwt_client_oldest_key_age_seconds",
            "Age of the client's oldest registered key, since the gateway first saw it.",
            ("client",), registry=r, multiprocess_mode="livemostrecent")
        self.client_unused_keys = Gauge(
            "pkjwt_client_unused_keys",
            "Registered keys of the client not used within policy.key_unused_after (0 while "
            "that rule is off).", ("client",), registry=r, multiprocess_mode="livemostrecent")
        self.client_keys = Gauge(
            "pkjwt_client_keys", "Registered keys the client holds now.", ("client",),
            registry=r, multiprocess_mode="livemostrecent")
        self.config_reloads = Counter(
            "pkjwt_config_reloads_total", "Configuration reloads.", ("result",), registry=r)
        for result in ("ok", "refused"):  # present at 0, so increase() sees the first one
            self.config_reloads.labels(result)
        self.in_flight = Gauge(
            "pkjwt_in_flight_requests", "Requests being handled.", registry=r,
            multiprocess_mode="livesum")
        self.backend_requests = Counter(
            "pkjwt_backend_requests_total", "Requests forwarded to the backend.",
            ("endpoint", "status_class"), registry=r)
        self.backend_seconds = Histogram(
            "pkjwt_backend_seconds", "Backend answer time (to the response headers).",
            ("endpoint",), buckets=BACKEND_BUCKETS, registry=r)
        self.build_info = Gauge(
            "pkjwt_build_info", "Build information.", ("version",), registry=r,
            multiprocess_mode="max")
        self.build_info.labels(version=__version__).set(1)
        # labels() validates and locks on every call; the label sets are bounded, so the
        # children are looked up once and kept.
        self._children: dict[tuple[object, ...], Any] = {}
        self.tally = RequestTally()
        self._flush_pending = False
        # Requests being handled now, read at each flush (the shell sets it).
        self.in_flight_source: Callable[[], int] | None = None

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child

    def count_fetch(self, client: str, result: str) -> None:
        self._child(self.jwks_fetch, client, result).inc()
        if result in FETCH_SUCCESS:
            self._child(self.jwks_last_success, client).set(time.time())

    def set_certificate_expiry(self, client: str, not_after: float | None) -> None:
        """The client's certificate expiry (epoch seconds); None drops the client's series.

        Cheap when nothing changed (the request path calls it for every CA-anchored
        assertion): the gauge is only written when the value differs.
        """
        if not_after is not None:
            if self._certificate_expiry.get(client) != not_after:
                self._certificate_expiry[client] = not_after
                self.certificate_expiry.labels(client).set(not_after)
        elif self._certificate_expiry.pop(client, None) is not None:
            if os.environ.get(MULTIPROC_ENV):
                # Worker processes cannot remove a series: NaN is never below a threshold,
                # and the most recent value is the one shown.
                self.certificate_expiry.labels(client).set(math.nan)
            else:
                self.certificate_expiry.remove(client)

    def certificate_clients(self) -> frozenset[str]:
        """The clients with a certificate expiry series."""
        return frozenset(self._certificate_expiry)

    # The request path: plain counts in the tally, moved into the metrics at the end of the
    # event-loop iteration (one flush for a whole burst of requests), before every scrape
    # and at shutdown. With worker processes, a scrape of any of them then sees them all.

    def count_auth(self, client: str, endpoint: str, result: str, reason: str,
                   method: str = "private_key_jwt") -> None:
        self.tally.count((self.client_auth, client, endpoint, result, reason, method))
        if not self._flush_pending:
            self._flush_soon()

    def count_federation_decision(self, client: str, trust: str, mode: str, result: str) -> None:
        """One trust's verdict: ``mode`` enforce or shadow, ``result`` match or mismatch."""
        self.tally.count((self.federation_decisions, client, trust, mode, result))

    def observe_verification(self, seconds: float) -> None:
        self.tally.observe((self.verification_seconds,), VERIFICATION_BUCKETS, seconds)

    def count_replay_check(self, store: str, result: str, seconds: float) -> None:
        """One ledger check: ``result`` is fresh, replayed or error."""
        tally = self.tally
        tally.count((self.replay_checks, store, result))
        tally.observe((self.replay_check_seconds, store), REPLAY_CHECK_BUCKETS, seconds)

    def observe_backend(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One backend exchange: ``outcome`` is a status class or ``error``."""
        tally = self.tally
        tally.count((self.backend_requests, endpoint, outcome))
        tally.observe((self.backend_seconds, endpoint), BACKEND_BUCKETS, seconds)
        if not self._flush_pending:
            self._flush_soon()

    def touch(self) -> None:
        """Something the next flush reports has changed (the in-flight count): flush soon."""
        if not self._flush_pending:
            self._flush_soon()

    def _flush_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside a loop (a CLI verb, a test): flushed when read
            return
        self._flush_pending = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand what the request path counted to prometheus_client (and the in-flight gauge)."""
        self._flush_pending = False
        counts, histograms = self.tally.drain()
        for (metric, *labels), count in counts.items():
            self._child(metric, *labels).inc(count)
        for (metric, *labels), buckets in histograms.items():
            buckets.drain_into(self._child(metric, *labels))
        if self.in_flight_source is not None:
            self.in_flight.set(self.in_flight_source())
