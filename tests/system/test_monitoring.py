"""The shipped monitoring: alert rules (promtool), the Grafana dashboard, both against a real
Prometheus scraping a real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import ASSERTION_TYPE, ISSUER, TOKEN_PATH, Backend, gateway_yaml
from tests.support.key_certificates import DAY, with_certificate
from tests.support.ports import free_port
from tests.support.prometheus import JOB, Prometheus, require_tool, start_prometheus
from tests.support.serving import wait_healthy
from tests.support.tokens import Signer, make_signer

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus-rules.yml"
RULE_TESTS = ROOT / "config" / "prometheus-rules.test.yml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
README = ROOT / "README.md"
# The documented placeholder base of the alerts' runbook_url (README "Runbooks").
RUNBOOK_BASE = "https://pkjwt-gateway.example/README.md"

# The public metric contract (README "Audit log and metrics"): name -> type.
METRICS = {
    "pkjwt_client_auth_total": "counter",
    "pkjwt_federation_decisions_total": "counter",
    "pkjwt_verification_seconds": "histogram",
    "pkjwt_replay_checks_total": "counter",
    "pkjwt_replay_check_seconds": "histogram",
    "pkjwt_replay_ledger_resets_total": "counter",
    "pkjwt_jwks_fetch_total": "counter",
    "pkjwt_jwks_keys": "gauge",
    "pkjwt_jwks_last_success_timestamp_seconds": "gauge",
    "pkjwt_client_certificate_expiry_timestamp_seconds": "gauge",
    "pkjwt_client_last_success_timestamp_seconds": "gauge",
    "pkjwt_client_oldest_key_age_seconds": "gauge",
    "pkjwt_client_unused_keys": "gauge",
    "pkjwt_client_keys": "gauge",
    "pkjwt_backend_requests_total": "counter",
    "pkjwt_backend_seconds": "histogram",
    "pkjwt_config_reloads_total": "counter",
    "pkjwt_in_flight_requests": "gauge",
    "pkjwt_build_info": "gauge",
}
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right",
                          "offset", "bool", "and", "or", "unless", "inf", "nan"})
# Grafana's built-in interval variables, as the end-to-end test resolves them.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
CORE_PANELS = ("Client authentications per second", "Verification latency",
               "Backend requests by status class")
TOOL_TIMEOUT = 60
CERTIFICATE_DAYS = 30  # the end-to-end client's certificate expires this far ahead


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (histogram series folded to their base)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # a dashboard variable (offset $__range)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        name = match.group(0)
        if name.lower() in PROMQL_WORDS or text[match.end():].lstrip().startswith("("):
            continue  # a keyword or a function call
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and METRICS.get(base) == "histogram":
                name = base
        names.add(name)
    return names


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows only group), nested ones included."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each query variable with the value 'All' gives it, plus Grafana's interval variables."""
    values = dict(GRAFANA_INTERVALS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with every $name / ${name} replaced; AssertionError for an unknown variable."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def load_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    return rules


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, cwd=ROOT)


# -- Alert rules ----------------------------------------------------------------------------

def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in load_rules()}
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def readme_anchors() -> set[str]:
    """The anchors a Markdown renderer (GitHub's rule) gives the README's headings."""
    headings = re.findall(r"^#+ (.+)$", README.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in headings}


def test_every_alert_has_severity_annotations_and_an_absolute_runbook_url() -> None:
    anchors = readme_anchors()
    for rule in load_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        # Clickable in Alertmanager: absolute, on the documented base, at the alert's heading.
        url = urllib.parse.urlsplit(annotations["runbook_url"])
        assert (url.scheme, url.netloc) == ("https", "pkjwt-gateway.example"), name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#runbook-{name.lower()}", name
        assert url.fragment in anchors, name


def test_the_documented_sed_sets_the_runbook_base_of_rules_and_dashboard(
    tmp_path: Path,
) -> None:
    readme = README.read_text()
    section = readme[readme.index("\n## Runbooks\n"):readme.index("\n### Runbook: ")]
    [block] = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert RUNBOOK_BASE in block
    (tmp_path / "config").mkdir()
    for source in (RULES, DASHBOARD):
        (tmp_path / "config" / source.name).write_bytes(source.read_bytes())
    result = subprocess.run(["bash", "-euc", block], cwd=tmp_path, capture_output=True,
                            text=True, timeout=TOOL_TIMEOUT)
    assert result.returncode == 0, result.stderr
    [base] = re.findall(r"^base=(\S+)", block, flags=re.MULTILINE)
    rules = yaml.safe_load((tmp_path / "config" / RULES.name).read_text())
    urls = [rule["annotations"]["runbook_url"] for group in rules["groups"]
            for rule in group["rules"]]
    assert urls and all(url.startswith(f"{base}#runbook-") for url in urls), urls
    dashboard = json.loads((tmp_path / "config" / DASHBOARD.name).read_text())
    [constant] = [v for v in dashboard["templating"]["list"] if v["name"] == "runbook_base"]
    assert constant["query"] == base
    checked = run_promtool("check", "rules", str(tmp_path / "config" / RULES.name))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_links_to_the_runbooks_on_the_same_base() -> None:
    dashboard = load_dashboard()
    [constant] = [v for v in dashboard["templating"]["list"] if v["name"] == "runbook_base"]
    assert (constant["type"], constant["query"]) == ("constant", RUNBOOK_BASE)
    [link] = [link for link in dashboard["links"] if link["title"] == "Runbooks"]
    base, _, anchor = link["url"].partition("#")
    assert base == "${runbook_base}" and anchor in readme_anchors()


def test_the_readme_has_a_runbook_for_every_alert() -> None:
    headings = re.findall(r"^### Runbook: (\w+)$", README.read_text(), flags=re.MULTILINE)
    if not headings:
        pytest.skip("README.md has no '### Runbook: <alert>' sections yet")
    assert sorted(headings) == sorted(rule["alert"] for rule in load_rules())


def test_rules_only_use_metrics_of_the_contract() -> None:
    for rule in load_rules():
        unknown = metric_names(rule["expr"]) - METRICS.keys() - PROMETHEUS_SERIES
        assert not unknown, (rule["alert"], unknown)


# -- Dashboard ------------------------------------------------------------------------------

def test_metric_names_finds_metrics_not_labels_functions_or_keywords() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, store) (rate(pkjwt_replay_check_seconds_bucket'
            '{job=~"$job", store="redis"}[5m]))) > 0.1 and on (job) time() - '
            'pkjwt_build_info offset 10m or up == 0 unless pkjwt_jwks_keys offset $__range')
    assert metric_names(expr) == {"pkjwt_replay_check_seconds", "pkjwt_build_info", "up",
                                  "pkjwt_jwks_keys"}


def test_dashboard_imports_without_fixed_datasource_uids() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["id"] is None
    kinds = {variable["name"]: variable["type"] for variable in dashboard["templating"]["list"]}
    assert kinds.get("datasource") == "datasource"
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"]*)"', text))
    assert uids <= {"${datasource}", "-- Grafana --"}, uids
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_the_chosen_prometheus_with_contract_metrics() -> None:
    dashboard = load_dashboard()
    used: set[str] = set()
    for panel in query_panels(dashboard):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        exprs = [target.get("expr", "") for target in panel["targets"]]
        assert exprs and all(expr.strip() for expr in exprs), title
        for expr in exprs:
            names = metric_names(expr)
            assert names, (title, expr)
            assert not names - METRICS.keys() - PROMETHEUS_SERIES, (title, expr)
            used |= names
    assert METRICS.keys() - used == set(), "metrics without a panel"


# -- Against a real Prometheus scraping a real gateway --------------------------------------

async def test_prometheus_scrapes_the_gateway_and_answers_every_panel_and_rule(
    backend: Backend, tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    started = time.monotonic()
    deadline = started + 45
    port, admin = free_port(), free_port()
    # Its key carries a certificate: the expiry gauge and its panel have data.
    signer = with_certificate(make_signer("ES256"), not_after=time.time() + CERTIFICATE_DAYS * DAY)
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(
        backend.url, {"keys": [signer.public_jwk]},
        extra=f"\nlisten: {{host: 127.0.0.1, port: {port}}}\n"
              f"admin: {{host: 127.0.0.1, port: {admin}}}\n"))
    gateway_log = tmp_path / "gateway.log"
    with gateway_log.open("wb") as sink:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)], cwd=ROOT,
            env={**os.environ, "CI_SECRET": "monitoring-test-secret"},
            stdout=subprocess.DEVNULL, stderr=sink)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        prometheus = start_prometheus(binary, tmp_path / "prometheus", [f"127.0.0.1:{admin}"],
                                      [RULES], session)
        try:
            await wait_healthy(session, admin, deadline - time.monotonic(),
                               process=gateway, log=gateway_log)
            await prometheus.wait_ready(deadline)
            scraped = f'pkjwt_build_info{{job="{JOB}"}}'
            # A first scrape before any traffic: the counters' rates then have a start.
            await prometheus.wait_scrapes(scraped, 1, time.time(), deadline)
            await _drive_traffic(session, f"http://127.0.0.1:{port}{TOKEN_PATH}", signer)
            mark = time.time()
            await prometheus.wait_scrapes(scraped, 1, mark, deadline)
            await _send_accepted(session, f"http://127.0.0.1:{port}{TOKEN_PATH}", signer, 2)
            mark = time.time()
            await prometheus.wait_scrapes(scraped, 2, mark, deadline)

            assert len(backend.seen) == 4
            await _check_counts(prometheus)
            await _check_panels(prometheus)
            await _check_rules(prometheus, deadline)
        finally:
            prometheus.stop()
            _stop(gateway)
    assert time.monotonic() - started < 60


async def _post(session: aiohttp.ClientSession, url: str, assertion: str) -> int:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}
    async with session.post(url, data=form) as response:
        await response.read()
        return response.status


async def _send_accepted(session: aiohttp.ClientSession, url: str, signer: Signer,
                         count: int) -> None:
    for _ in range(count):
        assertion = signer.assertion("ci-pipeline", ISSUER, now=time.time())
        assert await _post(session, url, assertion) == 200


async def _drive_traffic(session: aiohttp.ClientSession, url: str, signer: Signer) -> None:
    """Two accepted, then one each of: replayed, expired, bad_signature, unknown_client."""
    now = time.time()
    used = signer.assertion("ci-pipeline", ISSUER, now=now)
    assert await _post(session, url, used) == 200
    await _send_accepted(session, url, signer, 1)
    impostor = make_signer("ES256", kid=signer.kid, slot=1)  # same kid, another key
    refused = [
        used,
        signer.assertion("ci-pipeline", ISSUER, now=now - 3600),
        impostor.assertion("ci-pipeline", ISSUER, now=now),
        signer.assertion("nobody", ISSUER, now=now),
    ]
    for assertion in refused:
        assert await _post(session, url, assertion) == 401


async def _check_counts(prometheus: Prometheus) -> None:
    """What Prometheus stored is exactly the traffic sent."""
    samples = await prometheus.query(
        f'sum by (client, result, reason) (pkjwt_client_auth_total{{job="{JOB}"}})')
    seen = {(s["metric"]["client"], s["metric"]["result"], s["metric"]["reason"]):
            float(s["value"][1]) for s in samples}
    assert seen == {
        ("ci-pipeline", "accepted", "ok"): 4,
        ("ci-pipeline", "rejected", "replayed"): 1,
        ("ci-pipeline", "rejected", "expired"): 1,
        ("ci-pipeline", "rejected", "bad_signature"): 1,
        ("unknown", "rejected", "unknown_client"): 1,
    }


async def _check_panels(prometheus: Prometheus) -> None:
    dashboard = load_dashboard()
    values = variables(dashboard)
    answered: dict[str, list[dict[str, Any]]] = {}
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            expr = substitute(target["expr"], values)
            answered.setdefault(panel["title"], []).extend(await prometheus.query(expr))
    for title in CORE_PANELS:
        assert answered[title], f"panel {title!r} is empty"
    rates = {s["metric"]["result"]: float(s["value"][1])
             for s in answered["Client authentications per second"]}
    assert rates["accepted"] > 0 and "rejected" in rates, rates
    # p50, p99 and mean of real verifications: numbers (not NaN) inside the buckets' range.
    latency = [float(s["value"][1]) for s in answered["Verification latency"]]
    assert len(latency) == 3 and all(0 < value <= 0.1 for value in latency), latency
    classes = {s["metric"]["status_class"] for s in answered["Backend requests by status class"]}
    assert classes == {"2xx"}
    reasons = {s["metric"]["reason"] for s in answered["Rejections by reason"]}
    assert reasons == {"replayed", "expired", "bad_signature", "unknown_client"}
    [days_left] = answered["Certificate expiry per client (days left)"]
    assert days_left["metric"] == {"client": "ci-pipeline"}
    assert CERTIFICATE_DAYS - 1 < float(days_left["value"][1]) <= CERTIFICATE_DAYS
    # The template variables' own queries (label_values) find the gateway and its client.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert found, variable["definition"]
        match, label = substitute(found.group(1), values), found.group(2)
        names = await prometheus.api(f"/api/v1/label/{label}/values", **{"match[]": match})
        assert names, (variable["name"], match)


async def _check_rules(prometheus: Prometheus, deadline: float) -> None:
    """Every rule loaded and evaluated without error; the replay has raised its alert."""
    expected = {rule["alert"] for rule in load_rules()}
    while True:
        data = await prometheus.api("/api/v1/rules")
        rules = {rule["name"]: rule for group in data["groups"] for rule in group["rules"]}
        assert set(rules) == expected
        evaluated = all(rule["lastEvaluation"] > "0001-01-01T00:00:00Z"
                        for rule in rules.values())
        if evaluated and rules["PkjwtReplayAttempts"]["state"] == "firing":
            break
        assert time.monotonic() < deadline, rules
        await asyncio.sleep(0.2)
    unhealthy = {name: rule.get("lastError") for name, rule in rules.items()
                 if rule["health"] != "ok"}
    assert not unhealthy
    alerts = rules["PkjwtReplayAttempts"]["alerts"]
    assert [alert["labels"]["client"] for alert in alerts] == ["ci-pipeline"]
    assert rules["PkjwtGatewayDown"]["state"] == "inactive"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
