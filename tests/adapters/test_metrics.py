"""Metrics of a running gateway: exact increments, and a series count attackers cannot grow."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.metrics import MULTIPROC_ENV, GatewayMetrics
from tests.conftest import ISSUER, TOKEN_PATH, Backend, GatewayFactory, Running
from tests.support.tokens import make_signer

ServerFactory = Callable[..., Awaitable[TestServer]]
CLIENT = "ci-pipeline"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "iat": now, "exp": now + 60,
            "jti": uuid.uuid4().hex}
    return {**base, **overrides}


async def scrape(server: TestServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(
            str(server.make_url("/metrics"))) as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def auth(result: str, reason: str, client: str = CLIENT) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"client": client, "endpoint": TOKEN_PATH, "result": result, "reason": reason,
              "method": "private_key_jwt"}
    return "pkjwt_client_auth_total", tuple(sorted(labels.items()))


async def test_scripted_traffic_gives_exact_increments(
    gw: Running, backend: Backend, aiohttp_server: ServerFactory
) -> None:
    admin = await aiohttp_server(gw.gateway.admin)
    signer = gw.signer
    head = {"alg": signer.alg, "kid": signer.kid}
    good = signer.sign(head, claims())
    assert (await gw.post(gw.form(good)))[0] == 200
    assert (await gw.post(gw.form(good)))[0] == 401  # replay
    past = int(time.time())
    expired = signer.sign(head, claims(iat=past - 120, exp=past - 60))
    assert (await gw.post(gw.form(expired)))[0] == 401
    assert (await gw.post(gw.form(signer.sign(head, claims(aud="https://x.test")))))[0] == 401
    impostor = make_signer("ES256", kid=signer.kid, slot=1)
    assert (await gw.post(gw.form(impostor.sign(head, claims()))))[0] == 401
    stranger = claims(iss="nobody", sub="nobody")
    assert (await gw.post(gw.form(signer.sign(head, stranger))))[0] == 401
    assert (await gw.post({"grant_type": "client_credentials"}))[0] == 401
    backend.status = 503
    assert (await gw.post(gw.form(signer.sign(head, claims()))))[0] == 503
    samples = await scrape(admin)
    expected = {
        auth("accepted", "ok"): 2,
        auth("rejected", "replayed"): 1,
        auth("rejected", "expired"): 1,
        auth("rejected", "bad_audience"): 1,
        auth("rejected", "bad_signature"): 1,
        auth("rejected", "unknown_client", "unknown"): 1,
        auth("rejected", "no_client_auth", "unknown"): 1,
    }
    for key, value in expected.items():
        assert samples.get(key) == value, key
    auth_series = {key for key in samples if key[0] == "pkjwt_client_auth_total"}
    assert auth_series == set(expected)

    def one(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert one("pkjwt_replay_checks_total", store="memory", result="fresh") == 2
    assert one("pkjwt_replay_checks_total", store="memory", result="replayed") == 1
    assert one("pkjwt_backend_requests_total", endpoint=TOKEN_PATH, status_class="2xx") == 1
    assert one("pkjwt_backend_requests_total", endpoint=TOKEN_PATH, status_class="5xx") == 1
    # Every parsed token is timed, refused ones included (not the body without assertion).
    assert one("pkjwt_verification_seconds_count") == 7
    assert one("pkjwt_build_info", version=__import__("gateway").__version__) == 1
    assert one("pkjwt_in_flight_requests") == 0


async def test_random_iss_kid_and_jti_do_not_grow_the_series_count(
    start_gateway: GatewayFactory, aiohttp_server: ServerFactory
) -> None:
    gw = await start_gateway()
    admin = await aiohttp_server(gw.gateway.admin)
    signer = gw.signer

    async def flood(count: int) -> None:
        for _ in range(count):
            tag = uuid.uuid4().hex
            token = signer.sign({"alg": "ES256", "kid": f"kid-{tag}"},
                                claims(iss=f"iss-{tag}", sub=f"iss-{tag}", jti=tag))
            await gw.post(gw.form(token))
            await gw.post(gw.form(signer.sign({"alg": "ES256", "kid": f"k-{tag}"}, claims())))

    await flood(5)
    before = len(await scrape(admin))
    await flood(40)
    after = await scrape(admin)
    assert len(after) == before
    for _name, labels in after:
        for _, value in labels:
            assert "iss-" not in value and "kid-" not in value


def test_the_certificate_expiry_series_is_written_only_when_it_changes() -> None:
    metrics = GatewayMetrics()
    name, labels = "pkjwt_client_certificate_expiry_timestamp_seconds", {"client": CLIENT}
    metrics.set_certificate_expiry(CLIENT, 1_900_000_000.0)
    assert metrics.registry.get_sample_value(name, labels) == 1_900_000_000.0
    metrics.certificate_expiry.remove(CLIENT)  # behind its back: an unchanged value is no write
    metrics.set_certificate_expiry(CLIENT, 1_900_000_000.0)
    assert metrics.registry.get_sample_value(name, labels) is None
    metrics.set_certificate_expiry(CLIENT, 1_950_000_000.0)
    assert metrics.registry.get_sample_value(name, labels) == 1_950_000_000.0
    assert metrics.certificate_clients() == {CLIENT}
    metrics.set_certificate_expiry(CLIENT, None)
    assert metrics.registry.get_sample_value(name, labels) is None
    assert metrics.certificate_clients() == frozenset()
    metrics.set_certificate_expiry(CLIENT, None)  # no series, nothing to drop


def test_worker_processes_drop_a_certificate_expiry_as_nan(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # prometheus-client cannot remove a series in multiprocess mode: NaN never alerts.
    metrics = GatewayMetrics()
    metrics.set_certificate_expiry(CLIENT, 1_900_000_000.0)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics.set_certificate_expiry(CLIENT, None)
    value = metrics.registry.get_sample_value(
        "pkjwt_client_certificate_expiry_timestamp_seconds", {"client": CLIENT})
    assert value is not None and math.isnan(value)
