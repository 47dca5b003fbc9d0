"""audit.output as operators run it: rotated with logrotate, checked before serving."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.config.errors import ConfigError
from gateway.config.loading import parse_settings
from tests.cli.test_workers import redis_url  # noqa: F401  # a fixture used below
from tests.conftest import gateway_yaml
from tests.support.ports import free_port
from tests.support.processes import Logged, children, serve_logged, until
from tests.support.serving import ROOT
from tests.support.tokens import make_signer

ENV = {"CI_SECRET": "audit-test-secret"}
WAVE = 60  # concurrent requests per wave


def _config(tmp_path: Path, audit: str, extra: str = "") -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(
        "http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]}, extra=(
            f"\nlisten: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
            f"audit: {{output: '{audit}'}}\nlog: {{format: json}}\n{extra}")))
    return config, port, admin


async def _wave(served: Logged, count: int = WAVE) -> set[str]:
    """``count`` concurrent refused token requests (each one audited); their request ids."""
    ids = {uuid.uuid4().hex for _ in range(count)}

    async def one(session: aiohttp.ClientSession, request_id: str) -> None:
        async with session.post(f"http://127.0.0.1:{served.port}/oauth2/token",
                                data={"grant_type": "client_credentials"},
                                headers={"X-Request-Id": request_id}) as response:
            assert response.status == 401

    connector = aiohttp.TCPConnector(force_close=True)  # spread over workers, if any
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, request_id) for request_id in ids))
    return ids


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _ids(path: Path) -> list[str]:
    """The request ids of the audit file's lines; every line must parse on its own."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line["request_id"] for line in lines if "event" not in line]  # not key events


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1], ids=["sighup", "sigusr1"])
async def test_after_logrotate_moves_the_file_lines_go_to_a_new_one_and_none_is_lost(
    tmp_path: Path, signum: signal.Signals,
) -> None:
    audit = tmp_path / "audit.log"
    rotated = tmp_path / "audit.log.1"
    config, port, admin = _config(tmp_path, str(audit))
    async with serve_logged(config, port, admin, ENV) as served:
        before = await _wave(served)
        # In the middle of a burst, as logrotate does it: move the file, then signal.
        during = asyncio.create_task(_wave(served, 3 * WAVE))
        await until(lambda: _lines(audit) > len(before), "the burst to be under way")
        audit.rename(rotated)
        served.proc.send_signal(signum)
        await until(audit.exists, "the audit file to be reopened")
        during_ids = await during
        after = await _wave(served)
        assert served.logged(f"audit.output: reopened {audit}")
    old, new = _ids(rotated), _ids(audit)
    assert sorted(old + new) == sorted(before | during_ids | after)  # none lost, none twice
    assert before <= set(old) and after <= set(new)


async def test_workers_reopen_the_file_on_sigusr1_relayed_by_the_supervisor(
    tmp_path: Path, redis_url: str,  # noqa: F811
) -> None:
    audit = tmp_path / "audit.log"
    rotated = tmp_path / "audit.log.1"
    config, port, admin = _config(
        tmp_path, str(audit), f"replay: {{store: redis, redis_url: '{redis_url}'}}\n")
    async with serve_logged(config, port, admin, ENV, workers=2) as served:
        before = await _wave(served)
        audit.rename(rotated)
        served.proc.send_signal(signal.SIGUSR1)
        await until(lambda: {line["worker"] for line in served.logged("reopened")} == {0, 1},
                    "both workers to reopen the file")
        after = await _wave(served)
    assert set(_ids(rotated)) == before and set(_ids(audit)) == after


async def test_a_signal_relayed_to_a_starting_worker_waits_for_it(
    tmp_path: Path, redis_url: str,  # noqa: F811
) -> None:
    """SIGHUP and SIGUSR1 end a process that has no handler yet: a worker still starting
    gets them once it has its handlers, instead of dying and being restarted."""
    config, port, admin = _config(
        tmp_path, str(tmp_path / "audit.log"),
        f"replay: {{store: redis, redis_url: '{redis_url}'}}\n")
    err = tmp_path / "gateway.stderr"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers",
             "2"], cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        await until(lambda: len(children(proc.pid)) == 2, "two workers")
        started = children(proc.pid)
        proc.send_signal(signal.SIGUSR1)  # the workers are still importing their modules
        proc.send_signal(signal.SIGHUP)
        served = Logged(proc, port, admin, tmp_path / "unused", err)
        await until(lambda: {line["worker"] for line in served.logged("in force")} == {0, 1},
                    "both workers to reload")
        assert children(proc.pid) == started
        assert not served.logged("died")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda tmp: tmp / "missing" / "audit.log", id="missing-directory"),
        pytest.param(lambda tmp: tmp, id="a-directory"),
        pytest.param(lambda tmp: tmp / "gateway.yaml" / "audit.log", id="under-a-file"),
        pytest.param(lambda tmp: _read_only(tmp) / "audit.log", id="read-only-directory",
                     marks=pytest.mark.skipif(os.geteuid() == 0,
                                              reason="root writes to read-only directories")),
    ],
)
def test_check_and_serve_name_audit_output_when_it_cannot_be_written(
    tmp_path: Path, where: Callable[[Path], Path],
) -> None:
    config, _, _ = _config(tmp_path, "placeholder")
    target = where(tmp_path)
    config.write_text(config.read_text().replace("placeholder", str(target)))
    for verb in ("check", "serve"):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", verb, "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **ENV})
        assert result.returncode == 2, (verb, result.stdout, result.stderr)
        assert "audit.output" in result.stdout + result.stderr, (verb, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()  # check creates nothing


def _read_only(tmp: Path) -> Path:
    directory = tmp / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    return directory


@pytest.mark.parametrize("output", ["/dev/stderr", "/proc/self/fd/2"])
def test_audit_lines_cannot_share_the_operational_logs_stream(
    tmp_path: Path, output: str
) -> None:
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        extra=f"audit: {{output: {output}}}\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, base_dir=tmp_path, env=ENV)
    [(path, message)] = caught.value.problems
    assert path == "audit.output" and "operational log" in message
