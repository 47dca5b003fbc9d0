"""Routing and the backend's faults: passthrough, 404, and 502/504 that never hang."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from yarl import URL

from tests.conftest import ISSUER, TOKEN_PATH, Backend, GatewayFactory, Running
from tests.support.ports import free_port


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
