"""Offboarding in one step: enabled: false refuses at once, answered as an unknown client,
audited and counted under the configured id (client_disabled), listed by ``report``."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest

from gateway.cli.report import (
    COUNTED,
    counts_from_metrics,
    counts_from_prometheus,
    render_report,
    usage_report,
)
from gateway.config.loading import parse_settings
from tests.conftest import BACKEND_SECRET, ISSUER, Backend, GatewayFactory, Running, gateway_yaml
from tests.support.tokens import make_signer

CLIENT = "ci-pipeline"
STRANGER = "nobody-configured"


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _assertion(gw: Running, client_id: str = CLIENT) -> str:
    """A token the client's own registered key signs: valid in every respect."""
    now = int(time.time())
    return gw.signer.sign({"alg": "ES256", "kid": gw.signer.kid}, {
        "iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now, "exp": now + 60,
        "jti": uuid.uuid4().hex})


def _auth_count(gw: Running, client: str, reason: str, method: str) -> float:
    return gw.metric("pkjwt_client_auth_total", client=client, endpoint="/oauth2/token",
                     result="rejected", reason=reason, method=method)


async def test_an_offboarded_clients_valid_assertion_is_refused_as_a_strangers(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client="enabled: false")
    status, headers, body = await gw.post(gw.form(_assertion(gw)))
    # Nothing tells the caller it was a known client: a stranger gets the very same answer.
    status2, headers2, body2 = await gw.post(gw.form(_assertion(gw, STRANGER)))
    assert (status, body) == (status2, body2) == (401, {
        "error": "invalid_client", "error_description": "Client authentication failed."})
    assert headers.get("WWW-Authenticate") == headers2.get("WWW-Authenticate")
    assert backend.seen == []
    mine, theirs = gw.audit_lines()
    assert (mine["client"], mine["result"], mine["reason"]) == (
        CLIENT, "rejected", "client_disabled")
    assert "client" not in theirs and theirs["reason"] == "unknown_client"
    assert _auth_count(gw, CLIENT, "client_disabled", "private_key_jwt") == 1
    assert _auth_count(gw, "unknown", "unknown_client", "private_key_jwt") == 1


async def test_an_offboarded_client_sending_its_old_secret_is_counted_under_its_id(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(
        client="enabled: false\n    legacy_auth: {allow: [client_secret_basic]}")
    form = {"grant_type": "client_credentials"}
    status, headers, body = await gw.post(form, headers={"Authorization": _basic(CLIENT, "s")})
    status2, headers2, body2 = await gw.post(
        form, headers={"Authorization": _basic(STRANGER, "s")})
    assert (status, body, headers.get("WWW-Authenticate")) == (
        status2, body2, headers2.get("WWW-Authenticate"))
    assert status == 401 and backend.seen == []  # migration mode ends with the client
    mine, theirs = gw.audit_lines()
    assert (mine["client"], mine["method"], mine["reason"]) == (
        CLIENT, "client_secret_basic", "client_disabled")
    assert "client" not in theirs and theirs["reason"] == "unsupported_auth_method"
    assert _auth_count(gw, CLIENT, "client_disabled", "client_secret_basic") == 1


async def test_a_reload_offboards_at_once_and_a_removal_makes_the_client_unknown(
    start_gateway: GatewayFactory, backend: Backend, tmp_path: Path
) -> None:
    gw = await start_gateway()
    assert (await gw.post(gw.form(_assertion(gw))))[0] == 200

    offboarded = gateway_yaml(backend.url, {"keys": [gw.signer.public_jwk]},
                              client="enabled: false")
    await gw.gateway.reload(parse_settings(offboarded, base_dir=tmp_path,
                                           env={"CI_SECRET": BACKEND_SECRET}))
    assert (await gw.post(gw.form(_assertion(gw))))[0] == 401
    assert gw.audit_lines()[-1]["reason"] == "client_disabled"
    # Removed: another client stays configured; this one is a stranger now.
    other = make_signer("ES256", slot=1)
    renamed = gateway_yaml(backend.url, {"keys": [other.public_jwk]}, client_id="successor")
    await gw.gateway.reload(parse_settings(renamed, base_dir=tmp_path,
                                           env={"CI_SECRET": BACKEND_SECRET}))
    assert (await gw.post(gw.form(_assertion(gw))))[0] == 401
    last = gw.audit_lines()[-1]
    assert "client" not in last and last["reason"] == "unknown_client"
    assert len(backend.seen) == 1


async def test_report_lists_offboarded_clients_still_trying(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await start_gateway(client="enabled: false")
    for _ in range(3):
        assert (await gw.post(gw.form(_assertion(gw))))[0] == 401
    assert (await gw.post({"grant_type": "client_credentials"},
                          headers={"Authorization": _basic(CLIENT, "s")}))[0] == 401
    gw.gateway.metrics.flush()  # as a scrape does
    exposition = generate_latest(gw.gateway.metrics.registry).decode()
    settings = gw.gateway.runtime.settings
    [row] = usage_report(settings, counts_from_metrics(exposition))
    assert (row.client, row.enabled, row.offboarded_requests) == (
        CLIENT, False, {"private_key_jwt": 3, "client_secret_basic": 1})
    assert render_report([row], as_json=False) == (
        f"{CLIENT}: offboarded (enabled: false), still trying: client_secret_basic 1, "
        "private_key_jwt 3")
    [listed] = json.loads(render_report([row], as_json=True))
    assert listed["enabled"] is False and listed["offboarded_requests"]["private_key_jwt"] == 3


@pytest.mark.parametrize("tried", [False, True], ids=["quiet", "trying"])
def test_report_names_an_offboarded_client_only_while_it_tries(
    tmp_path: Path, tried: bool
) -> None:
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        client="enabled: false\n    legacy_auth: {allow: [client_secret_post]}")
    settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "x"})
    exposition = (f'pkjwt_client_auth_total{{client="{CLIENT}",endpoint="/oauth2/token",'
                  'result="rejected",reason="client_disabled",method="private_key_jwt"} 2\n'
                  if tried else "")
    rows = usage_report(settings, counts_from_metrics(exposition))
    # Offboarded, it is allowed no secret any more: listed only as still trying.
    assert [(row.client, row.enabled) for row in rows] == ([(CLIENT, False)] if tried else [])


async def test_report_reads_offboarded_attempts_from_prometheus(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    """Each query of the report gets its rows; those of the client_disabled one count as
    offboarded attempts, whatever result label they carry."""
    asked: list[str] = []

    async def query(request: web.Request) -> web.Response:
        promql = request.query["query"]
        asked.append(promql)
        rows = [{"metric": {"client": CLIENT, "method": "private_key_jwt",
                            "result": "rejected"}, "value": [0, "7"]}] \
            if 'reason="client_disabled"' in promql else []
        return web.json_response({"status": "success",
                                  "data": {"resultType": "vector", "result": rows}})

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    server = await aiohttp_server(app)
    counts = await asyncio.to_thread(counts_from_prometheus,
                                     str(server.make_url("")).rstrip("/"), "30d")
    assert len(asked) == len(COUNTED) == 3
    assert counts == {(CLIENT, "private_key_jwt", "offboarded"): 7.0}
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        client="enabled: false")
    settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "x"})
    [row] = usage_report(settings, counts)
    assert (row.enabled, row.offboarded_requests, row.refused_secret_requests) == (
        False, {"private_key_jwt": 7.0}, {})
