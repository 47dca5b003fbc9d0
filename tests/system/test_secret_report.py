"""Counting shared-secret use over a window: the report's PromQL on promtool's engine, then
`report --prometheus` and the dashboard against a real Prometheus scraping a real gateway."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli.report import COUNTED, window_count_query
from tests.conftest import Backend, gateway_yaml
from tests.support.ports import free_port
from tests.support.prometheus import JOB, Prometheus, require_tool, start_prometheus
from tests.support.serving import ROOT, listeners, serving
from tests.support.tokens import make_signer
from tests.system.test_monitoring import load_dashboard, query_panels, substitute, variables

CLIENT = "ci-pipeline"
TOMORROW = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
SECRET_PANEL = "Shared-secret requests in the time range"
INSTANCES_PANEL = "Instances up"
TOOL_TIMEOUT = 60

# One series per case, every minute; the query runs at 30m over 15m (start: the 15m sample).
# ``_`` is no sample, ``stale`` the marker Prometheus writes when a target goes away.
CASES = {
    # client: (series as (instance, promtool values), the requests made in the window)
    "steady": ([("a", "5x40")], 0),
    "grew": ([("a", "0x14 3x5 7x20")], 4),
    # A process that answered two requests before its first scrape: no increase(), yet 2.
    "born-at-2": ([("a", "_x20 2x20")], 2),
    "born-then-grew": ([("a", "_x20 2 2 3 3 5x20")], 5),
    "born-then-gone": ([("a", "_x24 1 stale")], 1),
    "restarted": ([("a", "4x15 6 6 1 1 2x20")], 4),
    "two-instances": ([("a", "1x17 2x20"), ("b", "_x22 3x15")], 4),
}


def _promtool_case(selector: str) -> dict[str, Any]:
    series = [{"series": f'pkjwt_client_auth_total{{job="{JOB}", instance="{instance}", '
                         f'client="{client}", endpoint="/oauth2/token", result="accepted", '
                         f'reason="legacy_secret", method="client_secret_basic"}}',
               "values": values}
              for client, (lines, _) in CASES.items() for instance, values in lines]
    # Refused requests are another selector's: they must not leak into this one.
    series.append({"series": 'pkjwt_client_auth_total{job="pkjwt-gateway", instance="a", '
                             'client="steady", endpoint="/oauth2/token", result="rejected", '
                             'reason="secret_not_allowed", method="client_secret_post"}',
                   "values": "_x20 9x20"})
    expected = [{"labels": f'{{client="{client}", method="client_secret_basic", '
                           f'result="accepted"}}', "value": count}
                for client, (_, count) in CASES.items()]
    return {"name": "requests in the window, series born in it included", "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{"expr": window_count_query(selector, "15m"),
                                  "eval_time": "30m", "exp_samples": expected}]}


def test_the_window_count_is_exact_for_series_born_in_the_window(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    tests = tmp_path / "window.test.yml"
    tests.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m",
                                     "tests": [_promtool_case(COUNTED[0])]}))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True,
                            text=True, timeout=TOOL_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_secret_panel_counts_as_the_report_does() -> None:
    [panel] = [p for p in query_panels(load_dashboard()) if p["title"] == SECRET_PANEL]
    [target] = panel["targets"]
    selector = ('pkjwt_client_auth_total{job=~"$job", instance=~"$instance", client=~"$client", '
                'method=~"client_secret_basic|client_secret_post"}')
    assert target["expr"] == window_count_query(selector, "$__range")
    assert target["instant"] is True and panel["type"] == "table"


def _basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"{CLIENT}:{secret}".encode()).decode()


async def _exporter(aiohttp_server: Callable[..., Awaitable[TestServer]],
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> str:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    server = await aiohttp_server(app)
    return f"127.0.0.1:{server.port}"


async def test_report_and_dashboard_count_the_first_secret_uses_of_a_process(
    backend: Backend, tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    binary = require_tool("prometheus")
    deadline = time.monotonic() + 45
    port, admin = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(
        backend.url, {"keys": [make_signer("ES256").public_jwk]},
        client=f"legacy_auth: {{allow: [client_secret_basic], until: {TOMORROW.isoformat()}}}",
        extra=listeners(port, admin)))
    env = {"CI_SECRET": "report-window-secret"}
    gate = asyncio.Lock()  # held while requests are sent: no scrape sees half of them

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def gated_scrape(request: web.Request) -> web.StreamResponse:
            async with gate, session.get(f"http://127.0.0.1:{admin}/metrics") as answer:
                return web.Response(body=await answer.read(), status=answer.status,
                                    headers={"Content-Type": answer.headers["Content-Type"]})

        async def other_exporter(request: web.Request) -> web.StreamResponse:
            return web.Response(text="other_exporter_up 1\n")

        gateway_target = await _exporter(aiohttp_server, gated_scrape)
        other_target = await _exporter(aiohttp_server, other_exporter)
        async with serving(config, port, admin, env) as served:
            prometheus = start_prometheus(binary, tmp_path / "prometheus", [gateway_target],
                                          [], session, other_targets=[other_target])
            try:
                await prometheus.wait_ready(deadline)
                scraped = f'pkjwt_build_info{{job="{JOB}"}}'
                await prometheus.wait_scrapes(scraped, 1, time.time(), deadline)
                async with gate:
                    await _use_secrets(session, served.token_url)
                # Scrapes of the counters at 2 and 3 from then on: flat, so no increase().
                await prometheus.wait_scrapes(scraped, 3, time.time(), deadline)
                await prometheus.wait_scrapes('up{job="other"}', 1, time.time(), deadline)
                rows = await _report(config, env, prometheus)
                panels = await _panels(prometheus)
            finally:
                prometheus.stop()
    assert len(backend.seen) == 2
    [row] = rows
    assert row["client"] == CLIENT
    assert row["secret_requests"] == {"client_secret_basic": 2}
    assert row["refused_secret_requests"] == {"client_secret_post": 3}
    assert row["key_requests"] == 0
    assert panels[SECRET_PANEL] == {(CLIENT, "client_secret_basic", "accepted"): 2,
                                    (CLIENT, "client_secret_post", "rejected"): 3}
    # Another job's target is up too; the gateway's dashboard counts only gateways.
    assert panels[INSTANCES_PANEL] == {(): 1}


async def _use_secrets(session: aiohttp.ClientSession, url: str) -> None:
    """Two secrets the client may use (accepted), three it may not (client_secret_post)."""
    for _ in range(2):
        async with session.post(url, data={"grant_type": "client_credentials"},
                                headers={"Authorization": _basic("s")}) as response:
            assert response.status == 200
    for _ in range(3):
        async with session.post(url, data={"grant_type": "client_credentials",
                                           "client_id": CLIENT, "client_secret": "s"}) as r:
            assert r.status == 401


async def _report(config: Path, env: dict[str, str],
                  prometheus: Prometheus) -> list[dict[str, Any]]:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "report", "--config", str(config), "--prometheus",
         prometheus.url, "--window", "1h", "--json"],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=ROOT,
        env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


async def _panels(prometheus: Prometheus) -> dict[str, dict[tuple[str, ...], float]]:
    """The two panels' answers, variables at "All", keyed by their (client, method, result)."""
    dashboard = load_dashboard()
    values = variables(dashboard)
    answers: dict[str, dict[tuple[str, ...], float]] = {}
    for panel in query_panels(dashboard):
        if panel["title"] not in (SECRET_PANEL, INSTANCES_PANEL):
            continue
        [target] = panel["targets"]
        samples = await prometheus.query(substitute(target["expr"], values))
        answers[panel["title"]] = {
            tuple(s["metric"][label] for label in ("client", "method", "result")
                  if label in s["metric"]): float(s["value"][1]) for s in samples}
    return answers
