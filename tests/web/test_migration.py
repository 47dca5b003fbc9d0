"""Migration mode: clients not yet on keys keep their shared secret until a date, visibly."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from gateway.cli.main import main
from gateway.cli.report import counts_from_metrics, render_report, usage_report
from gateway.config.lint import lint_settings
from gateway.config.loading import parse_settings
from tests.conftest import BACKEND_SECRET, ISSUER, Backend, GatewayFactory, gateway_yaml
from tests.support.ports import free_port
from tests.support.serving import ROOT, listeners, serving
from tests.support.tokens import make_signer

CLIENT = "ci-pipeline"


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _legacy(allow: str, until: dt.date | None) -> str:
    until_line = f", until: {until.isoformat()}" if until else ""
    return f"legacy_auth: {{allow: [{allow}]{until_line}}}"


TOMORROW = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
YESTERDAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


async def test_a_secret_goes_through_unchanged_marked_deprecated(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client=_legacy("client_secret_basic", TOMORROW))
    credential = _basic(CLIENT, "the-clients-own-secret")
    status, headers, _ = await gw.post("grant_type=client_credentials&scope=a",
                                       headers={"Authorization": credential,
                                                "Content-Type":
                                                    "application/x-www-form-urlencoded"})
    assert status == 200
    [seen] = backend.seen
    assert seen.headers["Authorization"] == credential  # not the gateway's backend secret
    assert seen.body == b"grant_type=client_credentials&scope=a"
    assert BACKEND_SECRET not in str(seen.headers)
    assert headers["Sunset"] == (TOMORROW + dt.timedelta(days=1)).strftime(
        "%a, %d %b %Y 00:00:00 GMT")
    assert "Deprecation" not in headers  # no legacy_auth.since (tests/web/test_deprecation.py)
    line = gw.audit_lines()[-1]
    assert (line["result"], line["reason"], line["method"]) == (
        "accepted", "legacy_secret", "client_secret_basic")
    assert gw.metric("pkjwt_client_auth_total", client=CLIENT, endpoint="/oauth2/token",
                     result="accepted", reason="legacy_secret",
                     method="client_secret_basic") == 1


async def test_client_secret_post_when_allowed(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client=_legacy("client_secret_post", None))
    body = {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": "s"}
    status, headers, _ = await gw.post(body)
    assert status == 200 and "Sunset" not in headers and "Deprecation" not in headers
    assert ("client_secret", "s") in backend.seen[0].form()


@pytest.mark.parametrize(
    ("client", "request_headers", "data", "reason"),
    [
        pytest.param("", {"Authorization": _basic(CLIENT, "s")},
                     {"grant_type": "client_credentials"}, "secret_not_allowed",
                     id="no-legacy-auth-configured"),
        pytest.param(_legacy("client_secret_post", TOMORROW),
                     {"Authorization": _basic(CLIENT, "s")},
                     {"grant_type": "client_credentials"}, "secret_not_allowed",
                     id="method-not-allowed"),
        pytest.param(_legacy("client_secret_basic", YESTERDAY),
                     {"Authorization": _basic(CLIENT, "s")},
                     {"grant_type": "client_credentials"}, "legacy_auth_expired",
                     id="after-until"),
        pytest.param(_legacy("client_secret_basic", TOMORROW),
                     {"Authorization": _basic("someone-else", "s")},
                     {"grant_type": "client_credentials"}, "unsupported_auth_method",
                     id="another-client"),
        pytest.param(_legacy("client_secret_basic", TOMORROW), {"Authorization": "Basic !!"},
                     {"grant_type": "client_credentials"}, "unsupported_auth_method",
                     id="garbled-basic"),
    ],
)
async def test_refusals(
    start_gateway: GatewayFactory, backend: Backend, client: str,
    request_headers: dict[str, str], data: dict[str, str], reason: str,
) -> None:
    gw = await start_gateway(client=client)
    status, headers, body = await gw.post(data, headers=request_headers)
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert backend.seen == []
    assert gw.audit_lines()[-1]["reason"] == reason


@pytest.mark.parametrize(
    ("client", "request_headers", "data", "method"),
    [
        pytest.param("", {"Authorization": _basic(CLIENT, "guess")},
                     {"grant_type": "client_credentials"}, "client_secret_basic",
                     id="basic-without-legacy-auth"),
        pytest.param("", {}, {"grant_type": "client_credentials", "client_id": CLIENT,
                              "client_secret": "guess"}, "client_secret_post",
                     id="post-without-legacy-auth"),
        pytest.param(_legacy("client_secret_basic", TOMORROW), {},
                     {"grant_type": "client_credentials", "client_id": CLIENT,
                      "client_secret": "guess"}, "client_secret_post",
                     id="post-when-only-basic-is-allowed"),
    ],
)
async def test_a_configured_client_trying_a_secret_is_counted_under_its_id(
    start_gateway: GatewayFactory, backend: Backend, client: str,
    request_headers: dict[str, str], data: dict[str, str], method: str,
) -> None:
    gw = await start_gateway(client=client)
    status, headers, body = await gw.post(data, headers=request_headers)
    assert status == 401 and backend.seen == []
    # The caller learns nothing more than a stranger does: the same status, body and challenge.
    stranger = {key: value.replace(CLIENT, "nobody-configured") for key, value in data.items()}
    stranger_headers = {"Authorization": _basic("nobody-configured", "guess")} \
        if request_headers else {}
    status2, headers2, body2 = await gw.post(stranger, headers=stranger_headers)
    assert (status2, body2, headers2.get("WWW-Authenticate")) == (
        status, body, headers.get("WWW-Authenticate"))
    mine, theirs = gw.audit_lines()[-2:]
    assert (mine["client"], mine["method"], mine["result"], mine["reason"]) == (
        CLIENT, method, "rejected", "secret_not_allowed")
    assert "client" not in theirs and theirs["reason"] == "unsupported_auth_method"
    assert "guess" not in json.dumps([mine, theirs])
    assert gw.metric("pkjwt_client_auth_total", client=CLIENT, endpoint="/oauth2/token",
                     result="rejected", reason="secret_not_allowed", method=method) == 1
    assert gw.metric("pkjwt_client_auth_total", client="unknown", endpoint="/oauth2/token",
                     result="rejected", reason="unsupported_auth_method", method=method) == 1


async def test_a_migrating_client_can_use_its_key_too(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client=_legacy("client_secret_basic", TOMORROW))
    now = int(time.time())
    token = gw.signer.sign({"alg": "ES256", "kid": gw.signer.kid}, {
        "iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "iat": now, "exp": now + 60,
        "jti": uuid.uuid4().hex})
    status, headers, _ = await gw.post(gw.form(token))
    assert status == 200 and "Deprecation" not in headers
    assert backend.seen[0].headers["Authorization"] != _basic(CLIENT, "s")


@pytest.mark.parametrize(("until", "warned"), [(None, True), (YESTERDAY, True),
                                               (TOMORROW, False)], ids=["none", "past", "future"])
def test_check_warns_about_open_ended_or_past_migration(
    tmp_path: Path, until: dt.date | None, warned: bool
) -> None:
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        client=_legacy("client_secret_basic", until))
    settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "x"})
    paths = [path for path, _ in lint_settings(settings)]
    assert ("clients.ci-pipeline.legacy_auth" in paths) is warned


async def test_report_lists_clients_still_on_secrets_from_metrics(
    backend: Backend, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(
        backend.url, {"keys": [make_signer("ES256").public_jwk]},
        client=_legacy("client_secret_basic", TOMORROW), extra=listeners(port, admin)))
    env = {"CI_SECRET": "report-test-secret"}
    async with serving(config, port, admin, env) as served:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(served.token_url,
                                        data={"grant_type": "client_credentials"},
                                        headers={"Authorization": _basic(CLIENT, "s")}) as r:
                    assert r.status == 200
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "report", "--config", str(config), "--metrics",
             f"http://127.0.0.1:{admin}/metrics", "--json"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["client"] == CLIENT and row["secret_requests"] == {"client_secret_basic": 3}
    assert row["until"] == TOMORROW.isoformat() and row["days_left"] == 1


async def test_report_names_a_configured_client_still_trying_secrets(
    start_gateway: GatewayFactory, backend: Backend, tmp_path: Path
) -> None:
    gw = await start_gateway()  # no legacy_auth: every secret of the client is refused
    for _ in range(2):
        status, _, _ = await gw.post({"grant_type": "client_credentials"},
                                     headers={"Authorization": _basic(CLIENT, "old-secret")})
        assert status == 401
    gw.gateway.metrics.flush()  # as a scrape does
    exposition = generate_latest(gw.gateway.metrics.registry).decode()
    settings = parse_settings(gateway_yaml(backend.url, {"keys": [gw.signer.public_jwk]}),
                              base_dir=tmp_path, env={"CI_SECRET": "x"})
    [row] = usage_report(settings, counts_from_metrics(exposition))
    assert (row.client, row.allowed, row.secret_requests, row.refused_secret_requests) == (
        CLIENT, [], {}, {"client_secret_basic": 2})
    assert render_report([row], as_json=False) == (
        f"{CLIENT}: allowed none, no end date; no secret requests; "
        "refused client_secret_basic 2; private_key_jwt 0")


@pytest.mark.parametrize("window", ["7 days", "30d) or vector(1", "", "1.5h"])
def test_report_refuses_a_window_that_is_no_duration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], window: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml("http://127.0.0.1:1",
                                   {"keys": [make_signer("ES256").public_jwk]}))
    with pytest.raises(SystemExit) as exited:
        main(["report", "--config", str(config), "--prometheus", "http://127.0.0.1:1",
              "--window", window])
    assert exited.value.code == 2
    assert "is not a duration such as 30d" in capsys.readouterr().err


def test_check_explains_the_risk_of_assertion_reuse(tmp_path: Path) -> None:
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        client="allow_assertion_reuse: true")
    settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "x"})
    [message] = [m for path, m in lint_settings(settings)
                 if path == "clients.ci-pipeline.allow_assertion_reuse"]
    assert "replayed" in message and "max_lifetime" in message


def test_report_counts_platform_tokens_as_no_secret(tmp_path: Path) -> None:
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        client=_legacy("client_secret_basic", TOMORROW))
    settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "x"})
    exposition = "\n".join(
        f'pkjwt_client_auth_total{{client="{CLIENT}",endpoint="/oauth2/token",'
        f'result="accepted",reason="ok",method="{method}"}} {count}'
        for method, count in (("federated", 5), ("private_key_jwt", 2),
                              ("client_secret_basic", 1)))
    [row] = usage_report(settings, counts_from_metrics(exposition + "\n"))
    assert row.secret_requests == {"client_secret_basic": 1}
    assert row.key_requests == 7
