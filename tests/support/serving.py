"""A real `pkjwt-gateway serve` process on free loopback ports, for tests that need one."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listeners(port: int, admin: int) -> str:
    """YAML for both listeners on loopback (to pass as gateway_yaml's ``extra``)."""
    return (f"\nlisten: {{host: 127.0.0.1, port: {port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n")


async def wait_healthy(session: aiohttp.ClientSession, admin: int, seconds: float = 20) -> None:
    """Until /healthz answers 200; raises AssertionError past ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{admin}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, "serve did not start"
        await asyncio.sleep(0.1)


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/token"

    def stop(self) -> int:
        """SIGTERM, then the exit code (the drain must end within 15 s)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@asynccontextmanager
async def serving(
    config: Path, port: int, admin: int, env: dict[str, str], *,
    stdout: int = subprocess.DEVNULL,
) -> AsyncIterator[Served]:
    """`serve --config` until the block ends; killed if it is still running then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)], cwd=ROOT,
        env={**os.environ, **env}, stdout=stdout, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, admin)
        yield Served(proc, port, admin)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
