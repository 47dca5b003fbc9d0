"""serve --workers N as an operator runs it: one port, one shared ledger, restarts, clean drains."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ASSERTION_TYPE, ISSUER, Backend, gateway_yaml
from tests.support.ports import free_port
from tests.support.serving import wait_healthy
from tests.support.tokens import Signer, make_signer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The shared Redis; outside CI a missing one skips with the reason, in CI it fails."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=2):
            pass
    except OSError as exc:
        if os.environ.get("CI") or "REDIS_URL" in os.environ:
            pytest.fail(f"no Redis at {url}: {exc}")
        pytest.skip(f"no Redis at {url} ({exc}); set REDIS_URL or start redis-server")
    return url


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10)
    return {int(line) for line in out.stdout.split()}


class Workers:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin: int,
                 signer: Signer) -> None:
        self.proc, self.port, self.admin, self.signer = proc, port, admin, signer

    def assertion(self) -> str:
        now = int(time.time())
        return self.signer.sign({"alg": "ES256", "kid": self.signer.kid},
                                {"iss": "ci-pipeline", "sub": "ci-pipeline", "aud": ISSUER,
                                 "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex})

    async def post(self, assertion: str) -> int:
        # A connection of its own per request, so the kernel spreads them over the workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post(f"http://127.0.0.1:{self.port}/oauth2/token", data={
                    "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion}) as response:
                return response.status


@pytest.fixture
async def workers(backend: Backend, tmp_path: Path, redis_url: str) -> AsyncIterator[Workers]:
    port, admin = free_port(), free_port()
    signer = make_signer("ES256")
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(backend.url, {"keys": [signer.public_jwk]}, extra=(
        f"\nlisten: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
        # Decisions, not latency, are tested here: room for a loaded machine.
        f"replay: {{store: redis, redis_url: '{redis_url}', timeout: 2s}}\n")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
        cwd=ROOT, env={**os.environ, "CI_SECRET": "workers-test-secret"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _until(lambda: len(_children(proc.pid)) == 2, "two workers")
        live = Workers(proc, port, admin, signer)
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, admin, path="/readyz", process=proc)
        yield live
    finally:
        if proc.poll() is None:
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
            proc.kill()
        proc.wait(timeout=15)


async def _until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_replay_spread_over_workers_is_accepted_exactly_once(
    workers: Workers, backend: Backend
) -> None:
    assertion = workers.assertion()
    statuses = await asyncio.gather(*(workers.post(assertion) for _ in range(40)))
    assert statuses.count(200) == 1 and statuses.count(401) == 39
    assert len(backend.seen) == 1


async def test_a_crashed_worker_is_restarted(workers: Workers) -> None:
    before = _children(workers.proc.pid)
    os.kill(sorted(before)[0], signal.SIGKILL)
    await _until(lambda: len(_children(workers.proc.pid) - before) == 1, "a new worker")
    assert len(_children(workers.proc.pid)) == 2
    for _ in range(6):
        assert await workers.post(workers.assertion()) == 200


async def test_sigterm_lets_requests_in_flight_finish_then_exits_0(
    workers: Workers, backend: Backend
) -> None:
    backend.delay = 0.6  # under the 1 s backend timeout of the test configuration
    in_flight = [asyncio.create_task(workers.post(workers.assertion())) for _ in range(6)]
    await _until(lambda: len(backend.seen) == 6, "the requests to reach the backend", 10)
    workers.proc.send_signal(signal.SIGTERM)
    assert await asyncio.gather(*in_flight) == [200] * 6
    code = await asyncio.to_thread(workers.proc.wait, 15)
    assert code == 0


def test_check_refuses_a_memory_store_for_several_workers(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml("http://127.0.0.1:1", {"keys": [
        make_signer("ES256").public_jwk]}))
    env = {**os.environ, "CI_SECRET": "x"}
    for verb in (["check"], ["serve"]):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *verb, "--config", str(config), "--workers", "2"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert result.returncode == 2
        assert "replay.store" in result.stdout + result.stderr
    ok = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(config)],
                        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert ok.returncode == 0


async def test_every_workers_scrape_shows_the_sum_of_all_workers(workers: Workers) -> None:
    sent = 12
    statuses = await asyncio.gather(*(workers.post(workers.assertion()) for _ in range(sent)))
    assert statuses == [200] * sent
    wanted = ('pkjwt_client_auth_total{client="ci-pipeline",endpoint="/oauth2/token",'
              'method="private_key_jwt",reason="ok",result="accepted"} ')
    seen_values = set()
    for _ in range(8):  # separate connections: the scrapes land on either worker
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.get(f"http://127.0.0.1:{workers.admin}/metrics") as response:
                text = await response.text()
        [line] = [line for line in text.splitlines() if line.startswith(wanted)]
        seen_values.add(float(line.rsplit(" ", 1)[1]))
    assert seen_values == {float(sent)}


async def test_the_lifecycle_gauges_are_not_summed_over_workers(workers: Workers) -> None:
    statuses = await asyncio.gather(*(workers.post(workers.assertion()) for _ in range(6)))
    assert statuses == [200] * 6
    successes = 0
    deadline = time.monotonic() + 30
    # Separate connections: the scrapes land on either worker. A worker that served none
    # of the requests learns of them at the next merge (usage.flush_interval) or update.
    while successes < 4:
        assert time.monotonic() < deadline, "no last-success gauge after the requests"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.get(f"http://127.0.0.1:{workers.admin}/metrics") as response:
                text = await response.text()
        values = {line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines()
                  if line.startswith("pkjwt_client_") and 'client="ci-pipeline"' in line}
        assert values["pkjwt_client_keys"] == 1  # one key, however many workers report it
        last = values.get("pkjwt_client_last_success_timestamp_seconds")
        if last is not None:
            assert abs(last - time.time()) < 300  # the latest success, not a sum
            successes += 1
        else:
            await asyncio.sleep(0.5)
