"""Resource limits and failure brakes, from the attacker's side."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from gateway.config.loading import parse_settings
from gateway.core.brakes import FailureLimiter
from gateway.web.app import create_gateway
from gateway.web.listener import CappedSite
from tests.conftest import ISSUER, Backend, GatewayFactory, Running, gateway_yaml
from tests.support.tokens import make_signer

CLIENT = "ci-pipeline"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "iat": now, "exp": now + 60,
            "jti": uuid.uuid4().hex, **overrides}


def _good(gw: Running) -> str:
    return gw.signer.sign({"alg": "ES256", "kid": gw.signer.kid}, _claims())


def _forged(gw: Running) -> str:
    impostor = make_signer("ES256", kid=gw.signer.kid, slot=1)
    return impostor.sign({"alg": "ES256", "kid": gw.signer.kid}, _claims())


def test_bucket_refills_and_memory_stays_bounded() -> None:
    limiter = FailureLimiter(rate=1.0, burst=2, max_keys=3)
    assert limiter.retry_after("a", 0.0) is None
    limiter.failed("a", 0.0)
    limiter.failed("a", 0.0)
    assert limiter.retry_after("a", 0.0) == pytest.approx(1.0)
    assert limiter.retry_after("a", 1.0) is None  # one token back after a second
    for key in ("b", "c", "d", "e"):
        limiter.failed(key, 0.0)
    assert len(limiter) <= 3  # a flood of new keys never grows it past max_keys
    # Once buckets refill they carry nothing and make room.
    limiter.failed("f", 100.0)
    assert limiter.retry_after("f", 100.0) is None and len(limiter) <= 3


async def test_repeated_failures_for_a_client_get_429_before_any_verification(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(limits="limits: {failures_per_client: {rate: 0.5, burst: 3}}")
    for _ in range(3):
        assert (await gw.post(gw.form(_forged(gw))))[0] == 401
    status, headers, body = await gw.post(gw.form(_forged(gw)))
    assert (status, body["error"]) == (429, "temporarily_unavailable")
    assert int(headers["Retry-After"]) >= 1
    assert gw.audit_lines()[-1]["reason"] == "too_many_failures"
    verified_before = gw.metric("pkjwt_verification_seconds_count")
    # Even a valid assertion waits for the brake: the client is slowed down, not the others.
    assert (await gw.post(gw.form(_good(gw))))[0] == 429
    assert gw.metric("pkjwt_verification_seconds_count") == verified_before + 1  # parse only
    assert backend.seen == []


async def test_repeated_failures_from_an_address_get_429(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(limits="limits: {failures_per_address: {rate: 0.5, burst: 2}}")
    stranger = make_signer("ES256", kid="x", slot=2)
    for _ in range(2):
        token = stranger.sign({"alg": "ES256"}, _claims(iss="nobody", sub="nobody"))
        assert (await gw.post(gw.form(token)))[0] == 401
    assert (await gw.post(gw.form(_good(gw))))[0] == 429
    # Checked before the body is read: a braked address gets 429 whatever it sends.
    assert (await gw.post(b"\xff" * 2048, headers={"Content-Encoding": "gzip"}))[0] == 429
    assert backend.seen == []


async def test_successes_do_not_spend_the_budget(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(limits="limits: {failures_per_client: {rate: 0.1, burst: 1}}")
    for _ in range(5):
        assert (await gw.post(gw.form(_good(gw))))[0] == 200


FORM_CONTENT_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}


def _body_of_size(gw: Running, size: int) -> bytes:
    """A valid token request padded with a scope to exactly ``size`` bytes."""
    form = gw.form(_good(gw), scope="")
    body = urlencode({**form, "scope": "s" * (size - len(urlencode(form)))}).encode()
    assert len(body) == size
    return body


async def test_a_body_limit_above_64_kib_is_honoured(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    limit = 128 * 1024
    gw = await start_gateway(limits=f"limits: {{max_body_bytes: {limit}}}")
    large = _body_of_size(gw, 100 * 1024)
    status, _, body = await gw.post(large, headers=FORM_CONTENT_TYPE)
    assert (status, body["token_type"]) == (200, "Bearer")
    [seen] = backend.seen
    assert seen.form()[-1] == parse_qsl(large.decode())[-1]  # the scope, all of it
    status, _, _ = await gw.post(_body_of_size(gw, limit), headers=FORM_CONTENT_TYPE)
    assert status == 200 and len(backend.seen) == 2

    status, headers, body = await gw.post(_body_of_size(gw, limit + 1), headers=FORM_CONTENT_TYPE)
    assert (status, body) == (400, {
        "error": "invalid_request",
        "error_description": "The request is missing a required parameter or is otherwise "
                             "malformed."})
    assert headers["Cache-Control"] == "no-store"
    assert gw.audit_lines()[-1]["reason"] == "body_too_large"
    assert len(backend.seen) == 2


async def test_a_body_sent_too_slowly_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits="limits: {body_timeout: 300ms}")
    host, port = gw.server.host, gw.server.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 100\r\n\r\ngrant_type=")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 400")
    finally:
        writer.close()
    assert gw.audit_lines()[-1]["reason"] == "body_timeout"


async def test_too_many_headers_are_refused(start_gateway: GatewayFactory,
                                            backend: Backend) -> None:
    gw = await start_gateway(limits="limits: {max_headers: 16}")
    headers = {f"X-Filler-{index}": "x" for index in range(40)}
    status, _, _ = await gw.post(gw.form(_good(gw)), headers=headers)
    assert 400 <= status < 500 and backend.seen == []


async def test_over_max_in_flight_requests_are_shed_with_503(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(limits="limits: {max_in_flight: 2}")
    backend.delay = 0.5
    results = await asyncio.gather(*(gw.post(gw.form(_good(gw))) for _ in range(6)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) >= 1 and 503 in statuses
    assert len(backend.seen) == statuses.count(200)


async def test_the_in_flight_gauge_counts_requests_still_waiting_on_the_backend(
    gw: Running, backend: Backend
) -> None:
    # Read from the registry, not a scrape (which flushes): what another worker's scrape sees.
    registry = gw.gateway.metrics.registry
    backend.delay = 0.4
    waiting = asyncio.gather(*(gw.post(gw.form(_good(gw))) for _ in range(3)))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if registry.get_sample_value("pkjwt_in_flight_requests") == 3:
            break
    assert registry.get_sample_value("pkjwt_in_flight_requests") == 3
    assert [status for status, _, _ in await waiting] == [200, 200, 200]
    await asyncio.sleep(0.02)
    assert registry.get_sample_value("pkjwt_in_flight_requests") == 0


async def test_connections_over_the_cap_get_503_and_are_closed(
    backend: Backend, tmp_path: Path
) -> None:
    gateway = create_gateway(parse_settings(
        gateway_yaml(backend.url, {"keys": [make_signer("ES256").public_jwk]}),
        base_dir=tmp_path, env={"CI_SECRET": "cap-test-secret"}), audit_stream=io.StringIO())
    runner = gateway.public_runner(access_log=None)
    await runner.setup()
    site = CappedSite(runner, "127.0.0.1", 0, max_connections=2)
    await site.start()
    port = site.port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        await asyncio.sleep(0.05)  # both accepted and registered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 5)  # the server closes it
        assert answer.startswith(b"HTTP/1.1 503") and b"temporarily_unavailable" in answer
        writer.close()
        held.pop()[1].close()
        await asyncio.sleep(0.05)  # a slot is free again
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 404")
        writer.close()
    finally:
        for _, writer in held:
            writer.close()
        await runner.cleanup()
