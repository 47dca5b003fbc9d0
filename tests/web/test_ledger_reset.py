"""Two real gateway processes on one real Redis that loses its data (restarted empty, or
flushed): what one process accepted before is refused through the other, 503 with a
Retry-After and reason replay_store_reset; fresh assertions pass once the skew has gone by.

The redis-server is this test's own (never the shared 6379); every process is killed at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.adapters.replay_marker import loss_time_of, marker_key
from tests.conftest import ASSERTION_TYPE, ISSUER, ROOMY_LIMITS, TOKEN_PATH, Backend
from tests.support.ports import free_port
from tests.support.redis_servers import Server, Servers
from tests.support.serving import Served, serving, wait_healthy
from tests.support.tokens import Signer, make_signer

CLIENT = "ci-pipeline"
REUSER = "msal-app"  # allow_assertion_reuse: true
SKEW = 1.0
LIFETIME = 20.0
SENT = 20
TIMEOUT = aiohttp.ClientTimeout(total=10)


def config_yaml(backend: Backend, signer: Signer, redis_url: str, port: int, admin: int,
                audit: Path) -> str:
    jwks = json.dumps({"keys": [signer.public_jwk]})
    auth = "backend_auth: {method: client_secret_basic, secret: !env CI_SECRET}"
    return f"""{ROOMY_LIMITS}
issuer: {ISSUER}
backend: {{url: "{backend.url}", timeout: 2s}}
endpoints: [{TOKEN_PATH}]
policy: {{algorithms: [ES256], max_lifetime: {LIFETIME:g}s, clock_skew: {SKEW:g}s}}
clients:
  {CLIENT}:
    jwks: {jwks}
    {auth}
  {REUSER}:
    jwks: {jwks}
    {auth}
    allow_assertion_reuse: true
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
audit: {{output: "{audit}"}}
replay: {{store: redis, redis_url: "{redis_url}", timeout: 2s}}
"""


@asynccontextmanager
async def two_gateways(backend: Backend, signer: Signer, redis_url: str,
                       tmp_path: Path) -> AsyncIterator[list[tuple[Served, Path]]]:
    tmp_path.mkdir(exist_ok=True)
    async with AsyncExitStack() as stack:
        started = []
        for name in ("a", "b"):
            port, admin, audit = free_port(), free_port(), tmp_path / f"audit-{name}.log"
            config = tmp_path / f"gateway-{name}.yaml"
            config.write_text(config_yaml(backend, signer, redis_url, port, admin, audit))
            served = await stack.enter_async_context(
                serving(config, port, admin, {"CI_SECRET": "reset-test-secret"}))
            started.append((served, audit))
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for served, _ in started:  # the ledger answered: each has read the markers
                await wait_healthy(session, served.admin, path="/readyz", process=served.proc)
        yield started


def mint(signer: Signer, client_id: str = CLIENT) -> str:
    now = time.time()
    return signer.assertion(client_id, ISSUER, now=now, lifetime=LIFETIME, iat=now,
                            jti=uuid.uuid4().hex)


async def post(session: aiohttp.ClientSession, served: Served,
               token: str) -> tuple[int, str, str | None]:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": token}
    async with session.post(served.token_url, data=form) as response:
        body = json.loads(await response.read())
        return response.status, body.get("error", ""), response.headers.get("Retry-After")


async def post_all(session: aiohttp.ClientSession, served: Served,
                   tokens: list[str]) -> list[tuple[int, str, str | None]]:
    return list(await asyncio.gather(*(post(session, served, token) for token in tokens)))


async def resets_counted(session: aiohttp.ClientSession, served: Served) -> float:
    async with session.get(f"http://127.0.0.1:{served.admin}/metrics") as response:
        text = await response.text()
    found = re.search(r"^pkjwt_replay_ledger_resets_total (\S+)$", text, re.MULTILINE)
    assert found, "the counter is exported from the start"
    return float(found.group(1))


async def refusals_counted(session: aiohttp.ClientSession, served: Served,
                           expected: float) -> None:
    """Until the metric of refusals for replay_store_reset reaches ``expected`` (metrics may be
    flushed a moment after the answer); raises AssertionError after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        async with session.get(f"http://127.0.0.1:{served.admin}/metrics") as response:
            text = await response.text()
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("pkjwt_client_auth_total{")
                      and 'reason="replay_store_reset"' in line)
        if counted == expected:
            return
        assert time.monotonic() < deadline, f"{counted} refusals counted, not {expected}"
        await asyncio.sleep(0.1)


def audit_reasons(audit: Path) -> list[str]:
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    return [line["reason"] for line in lines if "event" not in line]  # not key events


async def lose_data(server: Server, how: str) -> None:
    if how == "restart":
        server.kill()
        server.start()  # no persistence: empty
    else:
        async with Redis.from_url(server.url) as direct:
            await direct.flushall()


async def loss_time(server: Server) -> float:
    async with Redis.from_url(server.url) as direct:
        marker = await direct.get(marker_key(CLIENT))
    assert isinstance(marker, bytes)
    return loss_time_of(marker)


@pytest.mark.parametrize("how", ["restart", "flushall"])
async def test_what_one_process_accepted_is_refused_through_the_other_after_a_loss(
    backend: Backend, servers: Servers, tmp_path: Path, how: str
) -> None:
    started = time.monotonic()
    server = servers.start()
    signer = make_signer("ES256")
    async with two_gateways(backend, signer, server.url, tmp_path) as gateways, \
            aiohttp.ClientSession(timeout=TIMEOUT) as session:
        (first, first_audit), (second, second_audit) = gateways
        assert [await resets_counted(session, g) for g, _ in gateways] == [0, 0]
        accepted = [mint(signer) for _ in range(SENT)]
        assert await post_all(session, first, accepted) == [(200, "", None)] * SENT
        reused = mint(signer, REUSER)
        assert (await post(session, first, reused))[0] == 200
        unsent = mint(signer)  # minted just before the loss, first sent after it
        forwarded = len(backend.seen)

        await lose_data(server, how)
        answers = await post_all(session, second, [*accepted, unsent])
        assert len(backend.seen) == forwarded, "the backend saw a refused request"
        assert {(status, error) for status, error, _ in answers} == {
            (503, "temporarily_unavailable")}, answers
        assert all(retry is not None and 1 <= int(retry) <= 2 for _, _, retry in answers)
        # Through the process that accepted them as well (the marker tells it too).
        assert (await post(session, first, unsent))[:2] == (503, "temporarily_unavailable")
        # The identical re-send an allow_assertion_reuse client may make is not affected.
        assert (await post(session, second, reused))[0] == 200

        # Fresh assertions, issued once the skew has passed after the loss, go through both.
        await asyncio.sleep(max(0.0, await loss_time(server) + SKEW - time.time()) + 0.05)
        for served in (first, second):
            assert (await post(session, served, mint(signer)))[0] == 200
        assert [await resets_counted(session, g) for g, _ in gateways] == [1, 1]
        await refusals_counted(session, second, SENT + 1)

    assert audit_reasons(second_audit).count("replay_store_reset") == SENT + 1
    assert audit_reasons(first_audit).count("replay_store_reset") == 1
    assert time.monotonic() - started < 30


async def test_a_gateway_started_after_the_loss_refuses_what_was_issued_before(
    backend: Backend, servers: Servers, tmp_path: Path
) -> None:
    server = servers.start()
    signer = make_signer("ES256")
    before = mint(signer)
    async with two_gateways(backend, signer, server.url, tmp_path / "1") as gateways, \
            aiohttp.ClientSession(timeout=TIMEOUT) as session:
        first = gateways[0][0]
        await lose_data(server, "flushall")
        assert (await post(session, first, before))[:2] == (503, "temporarily_unavailable")
    async with two_gateways(backend, signer, server.url, tmp_path / "2") as gateways, \
            aiohttp.ClientSession(timeout=TIMEOUT) as session:
        later = gateways[1][0]
        assert (await post(session, later, before))[:2] == (503, "temporarily_unavailable")
        assert await resets_counted(session, later) == 0  # an old loss is not news
    assert backend.seen == []
