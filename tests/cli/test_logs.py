"""The operational log: text or JSON lines on stderr in UTC, worker ids, levels; reloads of
several workers answered and counted once."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.cli.logs import JsonFormatter, TextFormatter, configure_logging, utc_time
from gateway.config.errors import ConfigError
from gateway.config.loading import parse_settings
from gateway.config.settings import LogSettings
from tests.cli.test_workers import redis_url  # noqa: F401  # a fixture used below
from tests.conftest import gateway_yaml
from tests.support.ports import free_port
from tests.support.processes import Logged, serve_logged, until
from tests.support.tokens import make_signer

UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENV = {"CI_SECRET": "log-test-secret"}


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("gateway.backend", logging.WARNING, __file__, 1, message, args,
                               exc_info)
    record.created = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z
    record.secret = "must-not-appear"  # an attribute a caller attached
    return record


def test_a_json_line_has_utc_time_level_logger_message_and_worker() -> None:
    line = json.loads(JsonFormatter(worker=1).format(_record("backend %s", "down")))
    assert line == {"time": "2026-01-01T00:00:00.250Z", "level": "warning",
                    "logger": "gateway.backend", "message": "backend down", "worker": 1}


def test_a_json_line_carries_the_traceback_and_stays_one_line() -> None:
    text = JsonFormatter().format(_record("line\nbreak", exc=True))
    assert "\n" not in text and "must-not-appear" not in text
    line = json.loads(text)
    assert "worker" not in line and line["message"] == "line\nbreak"
    assert "RuntimeError: boom" in line["exception"]


def test_a_text_line_names_the_time_in_utc_and_the_worker() -> None:
    text = TextFormatter(worker=0).format(_record("backend %s", "down"))
    assert text == "2026-01-01T00:00:00.250Z WARNING gateway.backend worker=0 backend down"


def test_utc_time_never_rounds_up_to_a_thousandth_millisecond() -> None:
    assert utc_time(59.9999999) == "1970-01-01T00:00:59.999Z"


def test_the_level_setting_filters_every_logger() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(LogSettings(format="json", level="warning"), stream=stream)
        logging.getLogger("gateway").info("not shown")
        logging.getLogger("aiohttp.server").warning("shown")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["level"], line["logger"], line["message"]) == ("warning", "aiohttp.server",
                                                               "shown")


def _config(tmp_path: Path, backend_url: str, port: int, admin: int, extra: str = "",
            client: str = "") -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(
        backend_url, {"keys": [make_signer("ES256").public_jwk]}, client=client, extra=(
            f"\nlisten: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n{extra}")))
    return config


async def test_a_backend_outage_is_a_warning_and_audit_lines_stay_on_stdout(
    tmp_path: Path,
) -> None:
    port, admin = free_port(), free_port()
    # Nothing listens on the backend's port; level warning hides the start-up lines.
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}", port, admin,
                     "log: {format: json, level: warning}\n", client=(
                         "legacy_auth: {allow: [client_secret_post]}"))
    async with serve_logged(config, port, admin, ENV) as served:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data={
                    "grant_type": "client_credentials", "client_id": "ci-pipeline",
                    "client_secret": "the-clients-secret"}) as response:
                assert response.status == 502
        await until(lambda: bool(served.logged("backend_unreachable")), "the outage's line")
    log = served.log_lines()
    [outage] = served.logged("backend_unreachable")
    assert outage["level"] == "warning" and outage["logger"] == "gateway.backend"
    assert all(UTC_TIME.match(line["time"]) for line in log)
    assert {line["level"] for line in log} <= {"warning", "error"}  # no info line
    assert all("the-clients-secret" not in json.dumps(line) for line in log)
    started, audit = [json.loads(text) for text in served.stdout.read_text().splitlines()]
    assert started["event"] == "keys_changed" and "level" not in started
    assert audit["backend_error"] == "backend_unreachable" and "level" not in audit


def _by_worker(served: Logged, message_part: str) -> set[int]:
    return {line["worker"] for line in served.logged(message_part)}


async def test_json_lines_of_every_worker_carry_its_id(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    port, admin = free_port(), free_port()
    config = _config(tmp_path, "http://127.0.0.1:1", port, admin,
                     "log: {format: json}\n"
                     f"replay: {{store: redis, redis_url: '{redis_url}', timeout: 2s}}\n")
    async with serve_logged(config, port, admin, ENV, workers=2) as served:
        await until(lambda: _by_worker(served, "listening on") == {0, 1}, "both workers")
    log = served.log_lines()
    assert all(UTC_TIME.match(line["time"]) for line in log)
    for line in log:
        if line["logger"] == "gateway.supervisor":
            assert "worker" not in line
        else:
            assert line["worker"] in (0, 1), line
    assert _by_worker(served, "stopped") == {0, 1}


async def test_workers_refuse_an_invalid_reload_with_400_and_count_each_reload_once(
    tmp_path: Path, redis_url: str,  # noqa: F811
) -> None:
    port, admin = free_port(), free_port()
    extra = ("log: {format: json}\n"
             f"replay: {{store: redis, redis_url: '{redis_url}', timeout: 2s}}\n")
    config = _config(tmp_path, "http://127.0.0.1:1", port, admin, extra)
    valid = config.read_text()
    refused = 'pkjwt_config_reloads_total{result="refused"}'
    ok = 'pkjwt_config_reloads_total{result="ok"}'
    async with serve_logged(config, port, admin, ENV, workers=2) as served:
        await until(lambda: _by_worker(served, "listening on") == {0, 1}, "both workers")
        config.write_text(valid + "unknown_key: 1\n")
        status, body = await served.admin_call("POST", "/reload")
        assert status == 400
        answer = json.loads(body)
        assert answer["status"] == "refused"
        assert [p["path"] for p in answer["problems"]] == ["unknown_key"]
        assert (await served.metric(refused), await served.metric(ok)) == (1.0, 0.0)
        assert _by_worker(served, "reload: ") == set()  # no worker reloaded

        config.write_text(valid)
        status, body = await served.admin_call("POST", "/reload")
        assert status == 202 and json.loads(body)["status"] == "requested"
        await until(lambda: _by_worker(served, "client(s) in force") == {0, 1},
                    "both workers to reload")
        for _ in range(4):  # scrapes land on either worker: each reports the sum
            assert (await served.metric(refused), await served.metric(ok)) == (1.0, 1.0)


@pytest.mark.parametrize("level", ["verbose", "INFO"])
def test_an_unknown_level_is_refused(tmp_path: Path, level: str) -> None:
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        extra=f"log: {{level: {level}}}\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, base_dir=tmp_path, env=ENV)
    assert [path for path, _ in caught.value.problems] == ["log.level"]
