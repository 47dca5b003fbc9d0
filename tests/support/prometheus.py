"""A real Prometheus on 127.0.0.1 for tests: a temp config and store, queried over its HTTP API."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.ports import free_port
from tests.support.serving import wait_healthy

JOB = "pkjwt-gateway"  # the scrape job name the alert rules expect


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> str:
    """The path of a Prometheus tool; skips (locally) or fails (in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = (f"{name} not installed (apt-get install --no-install-recommends "
                   "prometheus)")
        if in_ci():
            pytest.fail(f"{message}: CI must run the monitoring tests")
        pytest.skip(message)
    return path


@dataclass
class Prometheus:
    """A running Prometheus process and the HTTP session the test talks to it with."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Prometheus's own log, for assertion messages."""
        return self.log.read_text(errors="replace")[-4000:]

    async def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; AssertionError with the error otherwise."""
        async with self.session.get(self.url + path, params=params) as response:
            body = await response.json()
        assert body.get("status") == "success", (path, params, body)
        assert "error" not in body, (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time; returns the vector's samples."""
        data = await self.api("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        assert isinstance(result, list), (expr, data)
        return result

    async def wait_ready(self, deadline: float) -> None:
        await wait_healthy(self.session, self.port, deadline - time.monotonic(),
                           path="/-/ready", process=self.process, log=self.log)

    async def wait_scrapes(self, selector: str, count: int, since: float,
                           deadline: float) -> None:
        """Wait until ``selector`` has ``count`` samples scraped after unix time ``since``."""
        while True:
            window_ms = max(1, int((time.time() - since) * 1000))
            found = await self.query(f"count_over_time({selector}[{window_ms}ms])")
            if found and float(found[0]["value"][1]) >= count:
                return
            assert time.monotonic() < deadline, (
                f"fewer than {count} scrapes of {selector} since {since}:\n{self.output()}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(binary: str, workdir: Path, targets: list[str], rule_files: list[Path],
                     session: aiohttp.ClientSession, *,
                     other_targets: list[str] | None = None) -> Prometheus:
    """Start Prometheus on a free loopback port, scraping ``targets`` (job ``JOB``) every second,
    and ``other_targets`` (job ``other``: not gateways) if given.

    Only loopback, no remote storage, its data in ``workdir``. The caller stops it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    listed = ", ".join(f'"{target}"' for target in targets)
    rules = "".join(f"  - {path}\n" for path in rule_files)
    other_job = ""
    if other_targets:
        others = ", ".join(f'"{target}"' for target in other_targets)
        other_job = f"  - job_name: other\n    static_configs:\n      - targets: [{others}]\n"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n{rules}"
        f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
        f"      - targets: [{listed}]\n{other_job}")
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            cwd=workdir, stdout=sink, stderr=subprocess.STDOUT)
    return Prometheus(process, port, log, session)
