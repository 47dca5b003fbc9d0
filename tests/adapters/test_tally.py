"""The request path's tally exports what per-request prometheus_client updates exported."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.adapters.metrics import GatewayMetrics
from gateway.adapters.tally import Buckets

# One run of events as the handlers record them; values span every bucket, +Inf included.
ENDPOINTS = ("/oauth2/token", "/oauth2/introspect")


def events(seed: int, count: int = 2000) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out: list[tuple[Any, ...]] = []
    for _ in range(count):
        kind = rng.choice(("auth", "verify", "replay", "backend"))
        seconds = rng.choice((0.0, 0.00005, 0.00007, 0.3, 0.25, 12.0, rng.random() / 100))
        if kind == "auth":
            out.append(("auth", rng.choice(("a", "b", "unknown")), rng.choice(ENDPOINTS),
                        rng.choice(("accepted", "rejected")), rng.choice(("ok", "replayed")),
                        rng.choice(("private_key_jwt", "client_secret_basic"))))
        elif kind == "verify":
            out.append(("verify", seconds))
        elif kind == "replay":
            out.append(("replay", rng.choice(("memory", "tiered")),
                        rng.choice(("fresh", "replayed", "error")), seconds))
        else:
            out.append(("backend", rng.choice(ENDPOINTS), rng.choice(("2xx", "4xx", "error")),
                        seconds))
    return out


def record_tallied(metrics: GatewayMetrics, run: list[tuple[Any, ...]]) -> None:
    for kind, *values in run:
        if kind == "auth":
            metrics.count_auth(*values)
        elif kind == "verify":
            metrics.observe_verification(values[0])
        elif kind == "replay":
            metrics.count_replay_check(*values)
        else:
            metrics.observe_backend(*values)
    metrics.flush()


def record_directly(metrics: GatewayMetrics, run: list[tuple[Any, ...]]) -> None:
    """What the request path did before the tally: a prometheus_client call per update."""
    for kind, *values in run:
        if kind == "auth":
            metrics.client_auth.labels(*values).inc()
        elif kind == "verify":
            metrics.verification_seconds.observe(values[0])
        elif kind == "replay":
            store, result, seconds = values
            metrics.replay_checks.labels(store, result).inc()
            metrics.replay_check_seconds.labels(store).observe(seconds)
        else:
            endpoint, outcome, seconds = values
            metrics.backend_requests.labels(endpoint, outcome).inc()
            metrics.backend_seconds.labels(endpoint).observe(seconds)


def samples(registry: CollectorRegistry) -> dict[str, float]:
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # a timestamp of when the series appeared
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = round(sample.value, 9)
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_single_process_exposition_is_unchanged(seed: int) -> None:
    run = events(seed)
    tallied, direct = GatewayMetrics(), GatewayMetrics()
    record_tallied(tallied, run[: len(run) // 2])  # two flushes: drains leave nothing behind
    record_tallied(tallied, run[len(run) // 2:])
    record_directly(direct, run)
    assert samples(tallied.registry) == samples(direct.registry)


def test_nothing_is_exported_before_a_flush() -> None:
    metrics = GatewayMetrics()
    metrics.count_auth("a", "/t", "accepted", "ok")
    assert metrics.registry.get_sample_value("pkjwt_client_auth_total", {
        "client": "a", "endpoint": "/t", "result": "accepted", "reason": "ok",
        "method": "private_key_jwt"}) is None
    metrics.flush()
    assert metrics.registry.get_sample_value("pkjwt_client_auth_total", {
        "client": "a", "endpoint": "/t", "result": "accepted", "reason": "ok",
        "method": "private_key_jwt"}) == 1


def test_the_in_flight_gauge_reads_its_source_at_flush() -> None:
    metrics, busy = GatewayMetrics(), [3]
    metrics.in_flight_source = lambda: busy[0]
    metrics.flush()
    assert metrics.registry.get_sample_value("pkjwt_in_flight_requests") == 3
    busy[0] = 0
    metrics.flush()
    assert metrics.registry.get_sample_value("pkjwt_in_flight_requests") == 0


@pytest.mark.parametrize(("value", "bucket"), [(0.0, 0), (1.0, 0), (1.5, 1), (2.0, 1),
                                               (2.5, 2), (float("inf"), 2)])
def test_a_bucket_holds_values_up_to_its_bound(value: float, bucket: int) -> None:
    buckets = Buckets((1.0, 2.0))
    buckets.observe(value)
    assert buckets.counts == [int(i == bucket) for i in range(3)]


_WORKER = """
import json, sys
from gateway.adapters.metrics import GatewayMetrics
from tests.adapters.test_tally import events, record_directly, record_tallied
mode, seed = sys.argv[1], int(sys.argv[2])
metrics = GatewayMetrics()
(record_tallied if mode == "tallied" else record_directly)(metrics, events(seed))
"""
_COLLECT = """
import json
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from tests.adapters.test_tally import samples
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(json.dumps(samples(registry)))
"""


def multiprocess_samples(directory: Path, mode: str) -> dict[str, float]:
    """Two worker processes record into one multiprocess directory; a third collects."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for seed in (1, 2):
        subprocess.run([sys.executable, "-c", _WORKER, mode, str(seed)], env=env, cwd=root,
                       check=True, timeout=60)
    collected = subprocess.run([sys.executable, "-c", _COLLECT], env=env, cwd=root,
                               check=True, timeout=60, capture_output=True, text=True)
    result: dict[str, float] = json.loads(collected.stdout)
    return result


def test_multiprocess_exposition_is_unchanged(tmp_path: Path) -> None:
    (tmp_path / "tallied").mkdir()
    (tmp_path / "direct").mkdir()
    tallied = multiprocess_samples(tmp_path / "tallied", "tallied")
    direct = multiprocess_samples(tmp_path / "direct", "direct")
    assert tallied and tallied == direct
