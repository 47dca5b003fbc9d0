"""A real `pkjwt-gateway serve` process on free loopback ports, for tests that need one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent.parent
STARTUP_SECONDS = 20.0


def listeners(port: int, admin: int) -> str:
    """YAML for both listeners on loopback (to pass as gateway_yaml's ``extra``)."""
    return (f"\nlisten: {{host: 127.0.0.1, port: {port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n")


async def wait_healthy(
    session: aiohttp.ClientSession, port: int, seconds: float = STARTUP_SECONDS, *,
    path: str = "/healthz", process: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> None:
    """Until ``path`` on loopback ``port`` answers 200 (a gateway's admin port by default).

    Raises AssertionError past ``seconds``, or as soon as ``process``, the server being
    waited for, has exited; the message then ends with the tail of its ``log``.
    """
    url = f"http://127.0.0.1:{port}{path}"
    deadline = time.monotonic() + seconds
    while True:
        assert process is None or process.poll() is None, (
            f"exited with {process.returncode} before {url} answered{_tail(log)}")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"{url} not 200 within {seconds:g}s{_tail(log)}"
        await asyncio.sleep(0.1)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return ":\n" + log.read_text(errors="replace")[-4000:]


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
            await wait_healthy(session, admin, process=proc)
        yield Served(proc, port, admin)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
