"""`pkjwt-gateway serve` processes whose stdout and stderr land in files the test reads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.serving import ROOT, wait_healthy


async def until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    """Poll ``check`` until it holds; AssertionError naming ``what`` past ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10)
    return {int(line) for line in out.stdout.split()}


@dataclass
class Logged:
    """A serve process (a supervisor with ``--workers N``) and its captured output."""

    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    stdout: Path
    stderr: Path

    def log_lines(self) -> list[dict[str, Any]]:
        """The operational log so far, one JSON object per line (``log.format: json``)."""
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line]

    def logged(self, message_part: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if message_part in line["message"]]

    async def admin_call(self, method: str, path: str) -> tuple[int, str]:
        # A connection of its own: with workers, any of them may answer.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.request(method, f"http://127.0.0.1:{self.admin}{path}") as response:
                return response.status, await response.text()

    async def metric(self, sample: str) -> float:
        """One sample's value from /metrics, given as its name and labels; 0 when absent."""
        _, text = await self.admin_call("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@asynccontextmanager
async def serve_logged(
    config: Path, port: int, admin: int, env: dict[str, str], *, workers: int = 1,
) -> AsyncIterator[Logged]:
    """`serve --config` (``--workers N``) until the block ends, then SIGTERM; killed if it is
    still running after 15 s. Waits for /readyz (and N workers) before yielding."""
    out, err = config.with_suffix(".stdout"), config.with_suffix(".stderr")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config),
             "--workers", str(workers)],
            cwd=ROOT, env={**os.environ, **env}, stdout=stdout, stderr=stderr)
    served = Logged(proc, port, admin, out, err)
    try:
        if workers > 1:
            await until(lambda: len(children(proc.pid)) == workers, f"{workers} workers")
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, admin, path="/readyz", process=proc, log=err)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                for child in children(proc.pid):
                    os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.wait()
