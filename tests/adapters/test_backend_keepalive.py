"""Keep-alive against backends that hang up idle connections: what is reused, what is retried."""

from __future__ import annotations

import asyncio
import random
import select
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.adapters.backend_client import BackendClient
from tests.conftest import ISSUER, TOKEN_PATH, GatewayFactory
from tests.support.idle_backend import IdleClosingBackend

FORM = b"grant_type=client_credentials"


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., BackendClient]]:
    made: list[BackendClient] = []

    def make(url: str, *, keepalive: float) -> BackendClient:
        made.append(BackendClient(url, timeout=2.0, keepalive=keepalive))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def wait_until_readable(client: BackendClient) -> None:
    """Block the loop until the pooled connection's socket has something to read: the
    backend's FIN (and perhaps a 408) has arrived, but the loop has not seen it."""
    [conn] = client._idle
    poller = select.poll()
    poller.register(conn.fd, select.POLLIN)
    assert poller.poll(2000), "the backend's hang-up never arrived"


@pytest.mark.parametrize("say_408", [False, True], ids=["fin", "408-then-fin"])
async def test_a_connection_the_backend_has_just_closed_is_not_reused(
    client_for: Callable[..., BackendClient], say_408: bool
) -> None:
    # The backend hangs up an idle connection just before a POST goes out, in the same loop
    # turn (as under load, when the loop has not read the FIN yet). The POST is never
    # retried, so only noticing the hang-up before sending it avoids a 502.
    backend = IdleClosingBackend(idle_close=60)
    async with backend.serving():
        client = client_for(backend.url, keepalive=30)
        assert (await client.request("POST", "/t", [], FORM)).status == 200
        assert backend.hang_up_idle(say_408=say_408) == 1
        wait_until_readable(client)
        assert (await client.request("POST", "/t", [], FORM)).status == 200
        assert backend.counts == {"connections": 2, "requests": 2, "hung_up": 1}


async def test_idle_connections_are_closed_at_keepalive_before_the_backend_does(
    client_for: Callable[..., BackendClient]
) -> None:
    backend = IdleClosingBackend(idle_close=30)
    async with backend.serving():
        client = client_for(backend.url, keepalive=0.05)
        await asyncio.gather(*(client.request("POST", "/t", [], FORM) for _ in range(3)))
        await backend.wait_for("peer_closed", 3)  # no request needed to notice they expired
        assert backend.counts["hung_up"] == 0
        assert (await client.request("POST", "/t", [], FORM)).status == 200


async def test_an_idle_tls_connection_is_reused(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    client_for: Callable[..., BackendClient],
) -> None:
    # TLS 1.3 session tickets arrive after the handshake: read by then, they must not make an
    # idle connection look hung up.
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    peers: set[object] = set()

    async def hello(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_post("/t", hello)
    server = await aiohttp_server(app, ssl=server_ctx, host="localhost")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client = BackendClient(f"https://localhost:{server.port}", timeout=2.0, keepalive=30,
                           ssl_context=client_ctx)
    try:
        for _ in range(3):
            assert (await client.request("POST", "/t", [], FORM)).body == b"over tls"
            await asyncio.sleep(0.02)  # idle in the pool between requests
    finally:
        await client.close()
    assert len(peers) == 1


# --- through the gateway, backend.keepalive from the configuration ---------------------------

async def post_tokens(start_gateway: GatewayFactory, backend: IdleClosingBackend, keepalive: str,
                      *, workers: int, each: int, pause: tuple[float, float]) -> list[int]:
    """Statuses of ``workers`` x ``each`` token requests, a random ``pause`` apart per worker."""
    gw = await start_gateway(backend_url=backend.url, backend=f", keepalive: {keepalive}")
    jitter = random.Random(1723)

    async def worker(pauses: list[float]) -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for pause_s in pauses:
                await asyncio.sleep(pause_s)
                assertion = gw.signer.assertion(gw.client_id, ISSUER, now=time.time())
                async with session.post(gw.url + TOKEN_PATH, data=gw.form(assertion)) as reply:
                    await reply.read()
                    statuses.append(reply.status)
        return statuses

    plans = [[jitter.uniform(*pause) for _ in range(each)] for _ in range(workers)]
    results = await asyncio.gather(*(worker(plan) for plan in plans))
    return [status for statuses in results for status in statuses]


async def test_backend_keepalive_shorter_than_the_backends_means_the_gateway_hangs_up_first(
    start_gateway: GatewayFactory
) -> None:
    backend = IdleClosingBackend(idle_close=30)
    async with backend.serving():
        assert await post_tokens(start_gateway, backend, "50ms", workers=1, each=2,
                                 pause=(0, 0)) == [200, 200]
        await backend.wait_for("peer_closed", 1)
        assert backend.counts["hung_up"] == 0


async def test_backend_keepalive_zero_means_a_new_backend_connection_per_request(
    start_gateway: GatewayFactory
) -> None:
    backend = IdleClosingBackend(idle_close=30)
    async with backend.serving():
        assert await post_tokens(start_gateway, backend, "0s", workers=1, each=3,
                                 pause=(0, 0)) == [200] * 3
        assert (backend.counts["connections"], backend.counts["reused"]) == (3, 0)


@pytest.mark.slow
async def test_no_request_fails_against_a_backend_closing_idle_connections_around_the_pace(
    start_gateway: GatewayFactory
) -> None:
    # The issue's case, scaled down: the backend hangs up after 1 s idle (here 50 ms), the
    # gateway would keep connections longer (300 ms), and requests come at jittered intervals
    # around the backend's limit: connections are reused, hung up by the backend while idle,
    # and taken just before or just after it hangs them up.
    backend = IdleClosingBackend(idle_close=0.05)
    async with backend.serving():
        statuses = await post_tokens(start_gateway, backend, "300ms", workers=4, each=80,
                                     pause=(0.025, 0.08))
    assert statuses == [200] * 320
    assert backend.counts["reused"] >= 160 and backend.counts["hung_up"] >= 5, backend.counts
