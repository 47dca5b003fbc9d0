"""The per-client key lifecycle gauges: exact values from a known usage book and the key
sets held, series dropped with their client, and the update loop off the request path."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from gateway.adapters.assemble import Runtime, build_runtime
from gateway.adapters.lifecycle_gauges import (
    ClientGauges,
    LifecycleGauges,
    client_gauges,
    keep_updated,
)
from gateway.adapters.metrics import MULTIPROC_ENV, GatewayMetrics
from gateway.config.loading import parse_settings
from gateway.core.usage import UsageBook, key_ref, trust_ref
from tests.support.tokens import make_signer

DAY = 86400.0
NOW = 1_800_000_000.0
A, B, C = (make_signer("ES256", kid=kid, slot=slot)
           for slot, kid in enumerate(("a", "b", "c")))
THUMB = {signer.kid: signer.keyset().keys[0].thumbprint for signer in (A, B, C)}


def runtime(tmp_path: Path, *, policy: str = "", extra: str = "") -> Runtime:
    text = f"""
issuer: https://idp.example.test
backend: {{url: "http://127.0.0.1:9"}}
endpoints: [/oauth2/token]
policy: {{algorithms: [ES256]{policy}}}
clients:
  three-keys:
    jwks: {json.dumps({"keys": [A.public_jwk, B.public_jwk, C.public_jwk]})}
    backend_auth: {{method: none}}
  one-key:
    jwks: {json.dumps({"keys": [A.public_jwk]})}
    backend_auth: {{method: none}}
{extra}"""
    return build_runtime(parse_settings(text, base_dir=tmp_path, env={}))


def book() -> UsageBook:
    """three-keys: a first seen 100 days ago and used yesterday, b seen 40 days ago and last
    used 35 days ago, c seen 10 days ago and never used; one-key: never used at all."""
    usage = UsageBook()
    usage.observe("three-keys", [key_ref(THUMB["a"])], NOW - 100 * DAY)
    usage.observe("three-keys", [key_ref(THUMB["b"])], NOW - 40 * DAY)
    usage.observe("three-keys", [key_ref(THUMB["c"])], NOW - 10 * DAY)
    usage.record("three-keys", key_ref(THUMB["b"]), NOW - 35 * DAY)
    usage.record("three-keys", key_ref(THUMB["a"]), NOW - 1 * DAY)
    usage.record("three-keys", key_ref(THUMB["a"]), NOW - 2 * DAY)
    usage.observe("one-key", [key_ref(THUMB["a"])], NOW - 5 * DAY)
    return usage


def test_values_from_a_known_usage_book(tmp_path: Path) -> None:
    values = client_gauges(runtime(tmp_path, policy=", key_unused_after: 30d"), book(), NOW)
    assert values == {
        # b unused for 35 days; c never used in its 10 days is not yet unused.
        "three-keys": ClientGauges(NOW - 1 * DAY, 100 * DAY, 1, 3),
        "one-key": ClientGauges(None, 5 * DAY, 0, 1),
    }


def test_unused_keys_follow_the_clients_own_rule_and_are_zero_while_it_is_off(
    tmp_path: Path
) -> None:
    off = client_gauges(runtime(tmp_path), book(), NOW)
    assert off["three-keys"].unused_keys == 0
    strict = runtime(tmp_path, policy=", key_unused_after: 30d",
                     extra="    key_unused_after: 5d\n")  # applies to one-key, last listed
    assert client_gauges(strict, book(), NOW)["one-key"].unused_keys == 0
    assert client_gauges(strict, book(), NOW + 1 * DAY)["one-key"].unused_keys == 1


def test_without_usage_tracking_only_the_key_counts_are_known(tmp_path: Path) -> None:
    values = client_gauges(runtime(tmp_path), None, NOW)
    assert values["three-keys"] == ClientGauges(None, None, None, 3)


def test_a_client_without_registered_keys_has_only_its_last_success(tmp_path: Path) -> None:
    issuer_keys = json.dumps({"keys": [B.public_jwk]})
    extra = f"""federation:
  issuers:
    ci: {{issuer: "https://ci.example", jwks: {issuer_keys}, preset: none}}
"""
    settings_text = f"""
issuer: https://idp.example.test
backend: {{url: "http://127.0.0.1:9"}}
endpoints: [/oauth2/token]
clients:
  deployer:
    backend_auth: {{method: none}}
    federated:
      - {{name: main, issuer: ci, audience: "https://idp.example.test", subject: "job"}}
{extra}"""
    federated = build_runtime(parse_settings(settings_text, base_dir=tmp_path, env={}))
    usage = UsageBook()
    usage.record("deployer", trust_ref("main"), NOW - 3 * DAY)
    assert client_gauges(federated, usage, NOW) == {
        "deployer": ClientGauges(NOW - 3 * DAY, None, None, None)}


def sample(metrics: GatewayMetrics, name: str, client: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"client": client})


def test_the_gauges_hold_the_values_and_lose_a_removed_clients_series(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    gauges = LifecycleGauges(metrics)
    gauges.update(runtime(tmp_path, policy=", key_unused_after: 30d"), book(), NOW)
    assert sample(metrics, "pkjwt_client_last_success_timestamp_seconds",
                  "three-keys") == NOW - DAY
    assert sample(metrics, "pkjwt_client_oldest_key_age_seconds", "three-keys") == 100 * DAY
    assert sample(metrics, "pkjwt_client_unused_keys", "three-keys") == 1
    assert sample(metrics, "pkjwt_client_keys", "three-keys") == 3
    # one-key never authenticated: no last-success series rather than a made-up time.
    assert sample(metrics, "pkjwt_client_last_success_timestamp_seconds", "one-key") is None
    assert sample(metrics, "pkjwt_client_keys", "one-key") == 1
    # three-keys is removed from the configuration; the tracking is turned off.
    smaller = build_runtime(parse_settings(f"""
issuer: https://idp.example.test
backend: {{url: "http://127.0.0.1:9"}}
endpoints: [/oauth2/token]
clients:
  one-key:
    jwks: {json.dumps({"keys": [A.public_jwk]})}
    backend_auth: {{method: none}}
""", base_dir=tmp_path, env={}))
    gauges.update(smaller, None, NOW)
    for name in ("pkjwt_client_last_success_timestamp_seconds",
                 "pkjwt_client_oldest_key_age_seconds", "pkjwt_client_unused_keys",
                 "pkjwt_client_keys"):
        assert sample(metrics, name, "three-keys") is None, name
    assert sample(metrics, "pkjwt_client_oldest_key_age_seconds", "one-key") is None
    assert sample(metrics, "pkjwt_client_keys", "one-key") == 1


def test_with_worker_processes_a_dropped_series_turns_nan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = GatewayMetrics()
    gauges = LifecycleGauges(metrics)
    gauges.update(runtime(tmp_path), book(), NOW)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    gauges.update(runtime(tmp_path), None, NOW)
    value = sample(metrics, "pkjwt_client_oldest_key_age_seconds", "three-keys")
    assert value is not None and math.isnan(value)


async def test_the_update_loop_runs_until_cancelled_and_survives_a_failure() -> None:
    calls: list[int] = []
    second = asyncio.Event()

    def update() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first update fails")
        second.set()

    task = asyncio.create_task(keep_updated(update, interval=0.01))
    await asyncio.wait_for(second.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) >= 2
