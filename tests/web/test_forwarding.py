"""Routing and the backend's faults: passthrough, 404, and 502/504 that never hang; what the
backend is told about where a request came from, with and without trusted proxies."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
from yarl import URL

from tests.conftest import ISSUER, TOKEN_PATH, Backend, GatewayFactory, Running, Seen
from tests.support.ports import free_port
from tests.support.tokens import valid_claims
from tests.web.test_raw_http import exchange, fresh_body, head, post


def _assertion(gw: Running) -> str:
    now = int(time.time())
    return gw.signer.sign({"alg": gw.signer.alg, "kid": gw.signer.kid},
                          {"iss": gw.client_id, "sub": gw.client_id, "aud": ISSUER,
                           "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex})


async def test_passthrough_is_forwarded_untouched(gw: Running, backend: Backend) -> None:
    backend.body = b'{"issuer":"x"}'
    async with aiohttp.ClientSession() as session, session.get(
            gw.url + "/.well-known/openid-configuration?x=1",
            headers={"Authorization": "Bearer kept"}) as response:
        assert response.status == 200 and await response.read() == b'{"issuer":"x"}'
    [seen] = backend.seen
    assert (seen.method, seen.path_qs) == ("GET", "/.well-known/openid-configuration?x=1")
    assert seen.headers["Authorization"] == "Bearer kept"


async def test_unknown_path_is_404_and_not_forwarded(gw: Running, backend: Backend) -> None:
    for path in ("/admin", "/oauth2/token/", "/oauth2/%74oken", "/OAUTH2/TOKEN", "//oauth2/token"):
        url = URL(gw.url + path, encoded=True)  # sent byte for byte, not normalised
        async with aiohttp.ClientSession() as session, session.post(
                url, data=gw.form(_assertion(gw))) as response:
            assert response.status == 404, path
            assert (await response.json())["error"] == "not_found"
    assert backend.seen == []


async def test_backend_refusing_connections_gives_502(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    nobody = free_port()  # nobody listens on it
    gw = await start_gateway(backend_url=f"http://127.0.0.1:{nobody}")
    status, headers, body = await gw.post(gw.form(_assertion(gw)))
    assert (status, body["error"]) == (502, "bad_gateway")
    assert headers["Cache-Control"] == "no-store"
    line = gw.audit_lines()[-1]
    assert line["result"] == "accepted" and line["backend_error"] == "backend_unreachable"
    assert gw.metric("pkjwt_backend_requests_total", endpoint=TOKEN_PATH,
                     status_class="error") == 1


async def test_slow_backend_gives_504_within_the_timeout(gw: Running, backend: Backend) -> None:
    backend.delay = 3.0  # the gateway's backend timeout is 1s in the test config
    status, _, body = await gw.post(gw.form(_assertion(gw)))
    assert (status, body["error"]) == (504, "gateway_timeout")


async def test_large_answers_are_relayed_intact(gw: Running, backend: Backend) -> None:
    backend.body = bytes(range(256)) * 4096  # 1 MiB
    status, _, body = await gw.post(gw.form(_assertion(gw)))
    assert status == 200 and body == backend.body


async def test_an_answer_over_the_reply_bound_gives_502(gw: Running, backend: Backend) -> None:
    backend.body = b"x" * (5 * 1024 * 1024)  # over the 4 MiB bound
    status, _, body = await gw.post(gw.form(_assertion(gw)))
    assert (status, body["error"]) == (502, "bad_gateway")


async def test_backend_closing_without_an_answer_gives_502(
    start_gateway: GatewayFactory,
) -> None:
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(1)  # the request has started to arrive; cut the socket
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await start_gateway(backend_url=f"http://127.0.0.1:{port}")
        status, _, body = await gw.post(gw.form(_assertion(gw)))
        assert (status, body["error"]) == (502, "bad_gateway")
        assert accepted == 1  # a token POST is never retried on another connection
    finally:
        server.close()
        await server.wait_closed()


# --- forwarding fields and trusted proxies ---------------------------------------------------

DISCOVERY = "/.well-known/openid-configuration"
# The gateway connects to itself from 127.0.0.1: trusting it plays an ingress in front.
TRUSTED = "listen: {trusted_proxies: [127.0.0.1/32]}"
FORWARDING = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP",
              "Forwarded", "X-Forwarded-Port", "X-Forwarded-Prefix")
# Every field a client could use to claim another address, scheme or host, some twice.
SPOOFED = ("X-Forwarded-For: 198.51.100.66", "x-forwarded-for: 198.51.100.67, 10.9.9.9",
           "X-Forwarded-Proto: https", "X-Forwarded-Host: evil.example",
           "X-Forwarded-Host: evil2.example", "X-Real-IP: 198.51.100.66",
           "Forwarded: for=198.51.100.66;proto=https;host=evil.example",
           "FORWARDED: for=198.51.100.68", "X-Forwarded-Port: 8443", "X-Forwarded-Prefix: /evil")


def _forwarding(seen: Seen) -> dict[str, list[str]]:
    return {name: seen.headers.getall(name, []) for name in FORWARDING}


async def _send_raw(gw: Running, backend: Backend, route: str, *lines: str) -> Seen:
    """One request with exactly these header lines, on a raw socket; what the backend got."""
    data = (post(fresh_body(gw), *lines) if route == "endpoint"
            else head(f"GET {DISCOVERY} HTTP/1.1", *lines))
    [reply] = await exchange(gw, data)
    assert reply is not None and reply.status == 200, reply
    [seen] = backend.seen
    return seen


@pytest.mark.parametrize("route", ["endpoint", "passthrough"])
async def test_a_clients_forwarding_fields_never_reach_the_backend(
    gw: Running, backend: Backend, route: str
) -> None:
    seen = await _send_raw(gw, backend, route, *SPOOFED)
    assert _forwarding(seen) == {
        "X-Forwarded-For": ["127.0.0.1"], "X-Forwarded-Proto": ["http"],
        "X-Forwarded-Host": ["gw.test"], "X-Real-IP": ["127.0.0.1"], "Forwarded": [],
        "X-Forwarded-Port": [], "X-Forwarded-Prefix": []}
    if route == "endpoint":
        assert gw.audit_lines()[-1]["remote"] == "127.0.0.1"


@pytest.mark.parametrize("route", ["endpoint", "passthrough"])
async def test_a_trusted_proxy_vouches_for_the_client(
    start_gateway: GatewayFactory, backend: Backend, route: str
) -> None:
    gw = await start_gateway(extra=TRUSTED)
    # The client's own spoof, then the address the proxy appended, on a second field line.
    seen = await _send_raw(
        gw, backend, route, "X-Forwarded-For: 198.51.100.66, 127.0.0.1",
        "X-Forwarded-For: 203.0.113.7:50123", "X-Forwarded-Proto: https",
        "X-Real-IP: 198.51.100.66", "Forwarded: for=198.51.100.66")
    assert _forwarding(seen) == {
        "X-Forwarded-For": ["203.0.113.7, 127.0.0.1"], "X-Forwarded-Proto": ["https"],
        "X-Forwarded-Host": ["gw.test"], "X-Real-IP": ["203.0.113.7"], "Forwarded": [],
        "X-Forwarded-Port": [], "X-Forwarded-Prefix": []}
    if route == "endpoint":
        assert gw.audit_lines()[-1]["remote"] == "203.0.113.7"


async def test_a_trusted_proxy_that_says_nothing_is_the_client(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(extra=TRUSTED)
    seen = await _send_raw(gw, backend, "endpoint", "X-Forwarded-For: unknown")
    assert seen.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert gw.audit_lines()[-1]["remote"] == "127.0.0.1"


def _unknown_client(gw: Running) -> dict[str, str]:
    """A well-formed request for a client that does not exist: a 401 that spends a token."""
    claims = valid_claims("nobody", ISSUER, now=time.time())
    return gw.form(gw.signer.sign(gw.signer.header(), claims))


BRAKE = ("limits: {failures_per_client: {rate: 1000, burst: 100000}, "
         "failures_per_address: {rate: 0.01, burst: 2}}")


async def test_a_spoofed_address_does_not_escape_the_address_brake(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(limits=BRAKE)
    for n in (1, 2):
        status, _, _ = await gw.post(_unknown_client(gw),
                                     headers={"X-Forwarded-For": f"203.0.113.{n}"})
        assert status == 401
    status, _, _ = await gw.post(gw.form(_assertion(gw)),
                                 headers={"X-Forwarded-For": "203.0.113.3"})
    assert status == 429
    assert {line["remote"] for line in gw.audit_lines()} == {"127.0.0.1"}
    assert backend.seen == []


async def test_the_address_brake_holds_the_resolved_client(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(limits=BRAKE, extra=TRUSTED)
    braked, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    for _ in range(2):
        assert (await gw.post(_unknown_client(gw), headers=braked))[0] == 401
    status, _, body = await gw.post(gw.form(_assertion(gw)), headers=braked)
    assert (status, body["error"]) == (429, "temporarily_unavailable")
    assert gw.audit_lines()[-1]["remote"] == "203.0.113.7"
    assert gw.audit_lines()[-1]["reason"] == "too_many_failures"
    # Another client behind the same proxy is not braked with it.
    assert (await gw.post(gw.form(_assertion(gw)), headers=other))[0] == 200
    assert gw.audit_lines()[-1]["remote"] == "203.0.113.8"


async def test_trusted_proxies_change_only_on_a_restart(
    gw: Running, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gw.gateway.runtime.settings
    listen = settings.listen.model_copy(update={"trusted_proxies": ("127.0.0.1/32",)})
    with caplog.at_level("WARNING", logger="gateway"):
        await gw.gateway.reload(settings.model_copy(update={"listen": listen}))
    assert "changes to listen take effect after a restart" in caplog.text
    seen = await _send_raw(gw, backend, "endpoint", "X-Forwarded-For: 203.0.113.7")
    assert seen.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert gw.audit_lines()[-1]["remote"] == "127.0.0.1"
