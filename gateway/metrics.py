"""Prometheus metrics of the gateway, in a registry the app owns (labels from bounded sets only)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import __version__

# Verification takes tens to hundreds of µs; the default buckets start at 5 ms.
VERIFICATION_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01,
                        0.02, 0.05, 0.1)
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_CLIENT = "unknown"


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
            ("client", "endpoint", "result", "reason"), registry=r)
        self.verification_seconds = Histogram(
            "pkjwt_verification_seconds", "Time to parse and verify one client assertion.",
            buckets=VERIFICATION_BUCKETS, registry=r)
        self.replay_checks = Counter(
            "pkjwt_replay_checks_total", "Replay ledger checks.", ("store", "result"), registry=r)
        self.jwks_fetch = Counter(
            "pkjwt_jwks_fetch_total", "Remote JWKS fetches.", ("client", "result"), registry=r)
        self.jwks_keys = Gauge(
            "pkjwt_jwks_keys", "Usable verification keys per client.", ("client",), registry=r)
        self.backend_requests = Counter(
            "pkjwt_backend_requests_total", "Requests forwarded to the backend.",
            ("endpoint", "status_class"), registry=r)
        self.backend_seconds = Histogram(
            "pkjwt_backend_seconds", "Backend answer time (to the response headers).",
            ("endpoint",), buckets=BACKEND_BUCKETS, registry=r)
        self.build_info = Gauge(
            "pkjwt_build_info", "Build information.", ("version",), registry=r)
        self.build_info.labels(version=__version__).set(1)
        # labels() validates and locks on every call; the label sets are bounded, so the
        # children are looked up once and kept.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_auth(self, client: str, endpoint: str, result: str, reason: str) -> None:
        self._child(self.client_auth, client, endpoint, result, reason).inc()

    def count_replay_check(self, store: str, result: str) -> None:
        self._child(self.replay_checks, store, result).inc()

    def observe_backend(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One backend exchange: ``outcome`` is a status class or ``error``."""
        self._child(self.backend_requests, endpoint, outcome).inc()
        self._child(self.backend_seconds, endpoint).observe(seconds)
