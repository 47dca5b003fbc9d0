"""The gateway on the Redis ledger, end to end: real redis-server processes, real sockets.

Faults (a killed or frozen Redis) must give 503 within the check budget with nothing
forwarded, and recovery must need no restart. Replays of one assertion spread over two
gateway processes sharing one Redis (standalone or Cluster) are admitted exactly once.
Every redis-server and gateway process started here is killed in teardown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.adapters.replay_tiered import TieredReplayLedger
from tests.conftest import (
    ASSERTION_TYPE,
    ISSUER,
    TOKEN_PATH,
    Backend,
    GatewayFactory,
    Running,
    gateway_yaml,
)
from tests.support.ports import free_port
from tests.support.redis_servers import Server, Servers
from tests.support.serving import wait_healthy
from tests.support.tokens import Signer, make_signer

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "ci-pipeline"
BUDGET = 0.25  # replay.timeout below
SLACK = 0.5  # allowed on top of the budget on a noisy machine
CLOCK_SKEW = 15  # conftest's policy
RACERS = 50
STARTUP_SECONDS = 20.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


def replay_yaml(topology: str, timeout: str = "250ms") -> str:
    return f"\nreplay: {{store: redis, {topology}, timeout: {timeout}}}\n"


def assertion(signer: Signer, *, jti: str | None = None,
              lifetime: int = 60) -> tuple[str, str, int]:
    """(token, jti, exp) of a valid assertion for CLIENT, issued now."""
    now = int(time.time())
    jti = jti or uuid.uuid4().hex
    exp = now + lifetime
    token = signer.sign({"alg": signer.alg, "kid": signer.kid},
                        {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "iat": now, "exp": exp,
                         "jti": jti})
    return token, jti, exp


def token_form(token: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": token}


# --- one gateway in process: faults and recovery -------------------------------------------


class Admin:
    def __init__(self, server: TestServer) -> None:
        self.server = server

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session, session.get(
                str(self.server.make_url("/readyz"))) as response:
            return response.status, json.loads(await response.read())


@pytest.fixture
async def redis_gateway(
    start_gateway: GatewayFactory, servers: Servers,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[Running, Admin, Server]:
    redis_server = servers.start()
    gw = await start_gateway(extra=replay_yaml(f'redis_url: "{redis_server.url}"'))
    return gw, Admin(await aiohttp_server(gw.gateway.admin)), redis_server


async def accepted_once(gw: Running, backend: Backend) -> None:
    """A fresh assertion goes through; the same one again is refused as a replay."""
    before = len(backend.seen)
    token, _, _ = assertion(gw.signer)
    status, _, body = await gw.post(token_form(token))
    assert status == 200, body
    status, _, body = await gw.post(token_form(token))
    assert (status, body["error"]) == (401, "invalid_client")
    assert gw.audit_lines()[-1]["reason"] == "replayed"
    assert len(backend.seen) == before + 1


async def refused_within_budget(gw: Running, backend: Backend) -> None:
    """A valid assertion gets 503 temporarily_unavailable in time, and nothing is forwarded."""
    before = len(backend.seen)
    token, _, _ = assertion(gw.signer)
    started = time.monotonic()
    status, headers, body = await gw.post(token_form(token))
    elapsed = time.monotonic() - started
    assert (status, body["error"]) == (503, "temporarily_unavailable"), body
    assert elapsed < BUDGET + SLACK, f"503 after {elapsed:.3f}s"
    assert headers["Cache-Control"] == "no-store"
    assert gw.audit_lines()[-1]["reason"] == "replay_store_unavailable"
    assert len(backend.seen) == before, "a request reached the backend without a replay check"
    assert gw.metric("pkjwt_replay_checks_total", store="tiered", result="error") >= 1


async def expect_readiness(admin: Admin, ready: bool) -> None:
    status, body = await admin.readyz()
    assert (status, body["checks"]["ledger"]) == ((200, True) if ready else (503, False)), body


async def test_a_killed_redis_is_a_503_and_a_restarted_one_is_used_again(
    start_gateway: GatewayFactory, servers: Servers, backend: Backend,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    redis_server = servers.start()
    gw = await start_gateway(client="clock_skew: 1s",
                             extra=replay_yaml(f'redis_url: "{redis_server.url}"'))
    admin = Admin(await aiohttp_server(gw.gateway.admin))
    await accepted_once(gw, backend)
    await expect_readiness(admin, True)
    redis_server.kill()
    await refused_within_budget(gw, backend)
    await expect_readiness(admin, False)
    redis_server.start()  # same port, empty: the ledger notices it forgot
    before = len(backend.seen)
    status, headers, body = await gw.post(token_form(assertion(gw.signer)[0]))
    assert (status, body["error"]) == (503, "temporarily_unavailable"), body
    assert gw.audit_lines()[-1]["reason"] == "replay_store_reset"
    assert int(headers["Retry-After"]) >= 1 and len(backend.seen) == before
    await expect_readiness(admin, True)
    # Assertions issued once the skew has passed after the loss are accepted (whole seconds:
    # the helper's iat is an integer).
    ledger = gw.gateway.ledger
    assert isinstance(ledger, TieredReplayLedger)
    loss = ledger.redis.markers.loss_time(CLIENT)
    assert loss is not None
    await asyncio.sleep(max(0.0, math.ceil(loss + 1) - time.time()))
    await accepted_once(gw, backend)


async def test_a_frozen_redis_is_a_503_within_the_budget_and_recovers(
    redis_gateway: tuple[Running, Admin, Server], backend: Backend,
) -> None:
    gw, admin, redis_server = redis_gateway
    await accepted_once(gw, backend)
    redis_server.pause()
    try:
        await refused_within_budget(gw, backend)
        await refused_within_budget(gw, backend)  # not only the first request after the freeze
        await expect_readiness(admin, False)
    finally:
        redis_server.resume()
    await accepted_once(gw, backend)
    await expect_readiness(admin, True)


async def test_an_accepted_jti_is_kept_in_redis_until_exp_plus_skew(
    redis_gateway: tuple[Running, Admin, Server], backend: Backend,
) -> None:
    gw, _, redis_server = redis_gateway
    token, jti, exp = assertion(gw.signer, lifetime=120)
    status, _, body = await gw.post(token_form(token))
    now = time.time()
    assert status == 200, body
    expected_key = f"pkjwt:jti:{{{CLIENT}}}:{hashlib.sha256(jti.encode()).hexdigest()}"
    async with Redis.from_url(redis_server.url) as direct:
        keys = [key async for key in direct.scan_iter(match="pkjwt:jti:*")]
        assert keys == [expected_key.encode()]
        pttl = await direct.pttl(expected_key)
    expected_ms = (exp + CLOCK_SKEW - now) * 1000
    assert expected_ms - 2000 < pttl <= expected_ms + 1000, (pttl, expected_ms)


# --- two gateway processes sharing one Redis ------------------------------------------------


class GatewayProcess:
    """``python -m gateway serve`` on its own loopback ports; stopped (or killed) on exit."""

    def __init__(self, config: Path, port: int, admin: int, log: Path) -> None:
        self.config, self.port, self.admin, self.log = config, port, admin, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{TOKEN_PATH}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                cwd=ROOT, env={**os.environ, "CI_SECRET": "two-process-secret"},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Until /readyz says 200 (the ledger answered); raises AssertionError on timeout."""
        assert self.proc is not None
        await wait_healthy(session, self.admin, STARTUP_SECONDS, path="/readyz",
                           process=self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@asynccontextmanager
async def two_gateways(
    backend: Backend, signer: Signer, topology: str, tmp_path: Path
) -> AsyncIterator[list[GatewayProcess]]:
    processes = []
    for index in range(2):
        port, admin = free_port(), free_port()
        config = tmp_path / f"gateway-{index}.yaml"
        config.write_text(gateway_yaml(
            backend.url, {"keys": [signer.public_jwk]},
            extra=(f"\nlisten: {{host: 127.0.0.1, port: {port}}}\n"
                   # The race checks what is decided, not how fast: room for a loaded machine.
                   f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
                   + replay_yaml(topology, timeout="2s"))))
        processes.append(GatewayProcess(config, port, admin, tmp_path / f"gateway-{index}.log"))
    try:
        for process in processes:
            process.start()
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            await asyncio.gather(*(process.wait_ready(session) for process in processes))
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.slow)])
def shared_topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The replay section's topology line: one server of this test's own, or the cluster."""
    if request.param == "cluster":
        nodes: list[Server] = request.getfixturevalue("cluster")
        yield f"redis_cluster_nodes: [{', '.join(node.address for node in nodes)}]"
        return
    (tmp_path / "shared-redis").mkdir()
    owned = Servers(tmp_path / "shared-redis")
    try:
        yield f'redis_url: "{owned.start().url}"'
    finally:
        assert owned.stop_all() == [], "redis-server processes left behind"


async def test_one_assertion_raced_through_two_processes_is_admitted_once(
    backend: Backend, shared_topology: str, tmp_path: Path,
) -> None:
    signer = make_signer("ES256")
    token, _, _ = assertion(signer)
    async with two_gateways(backend, signer, shared_topology, tmp_path) as gateways:
        connector = aiohttp.TCPConnector(limit=RACERS)
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT, connector=connector) as session:

            async def send(index: int) -> tuple[int, str]:
                url = gateways[index % 2].url
                async with session.post(url, data=token_form(token)) as response:
                    body = json.loads(await response.read())
                    return response.status, body.get("error", "")

            answers = await asyncio.gather(*(send(index) for index in range(RACERS)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [401] * (RACERS - 1), answers
    assert {error for status, error in answers if status == 401} == {"invalid_client"}
    assert len(backend.seen) == 1
