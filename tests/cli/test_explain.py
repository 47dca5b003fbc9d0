"""`pkjwt-gateway explain`: every check on one assertion, the verdict of the request path, and
for each failure the change that would accept it and what that change weakens."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.cli.explain import explain
from gateway.config.loading import load_settings
from gateway.core.explain import Explanation
from tests.support.jwks_server import start_jwks_server
from tests.support.tokens import Signer, make_signer, valid_claims

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://idp.example.test"
TOKEN_URL = ISSUER + "/oauth2/token"
CLIENT = "ci"
PLATFORM = "https://ci.example.test"
WORKLOAD = "repo:acme/api:ref:refs/heads/main"

# What real libraries send by default (FIELD NOTES, seen against a real IdP); each is
# refused by the default policy with the same opaque 401.
LIBRARIES = {
    "requests-oauth2client": ({"aud": TOKEN_URL}, 60, {"aud"}),
    "idpyoidc": ({"aud": [TOKEN_URL]}, 600, {"aud", "lifetime"}),
    "authlib": ({"aud": TOKEN_URL}, 3600, {"aud", "lifetime"}),
}


def signer() -> Signer:
    return make_signer("ES256", kid="k1")


def config(**client: Any) -> dict[str, Any]:
    entry = {"jwks": {"keys": [signer().public_jwk]}, "backend_auth": {"method": "none"},
             **client}
    return {"issuer": ISSUER, "backend": {"url": "http://127.0.0.1:1"},
            "endpoints": ["/oauth2/token", "/oauth2/revoke"], "clients": {CLIENT: entry}}


def write(tmp_path: Path, data: dict[str, Any], name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assertion(*, lifetime: float = 60, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
    now = time.time()
    return signer().sign(header or {"alg": "ES256", "kid": "k1"},
                         valid_claims(CLIENT, ISSUER, now=now, lifetime=lifetime, **claims))


async def explained(path: Path, token: str, *, endpoint: str = "/oauth2/token",
                    client_id: str | None = None) -> Explanation:
    return await explain(load_settings(path, env={}, resolve_secrets=False), token, endpoint,
                         client_id)


def failed(explanation: Explanation) -> dict[str, Any]:
    return {check.rule: check for check in explanation.checks if check.outcome == "fail"}


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "explain", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "CI_SECRET"})


@pytest.mark.parametrize("library", LIBRARIES)
async def test_a_library_default_is_refused_with_each_fix_and_its_cost(
        tmp_path: Path, library: str) -> None:
    claims, lifetime, expected = LIBRARIES[library]
    path = write(tmp_path, config())
    refused = await explained(path, assertion(lifetime=lifetime, **claims))
    assert not refused.accepted and refused.status == 401 and refused.reason == "bad_audience"
    fails = failed(refused)
    assert set(fails) == expected
    aud = fails["aud"].fix.remedy
    assert aud.change == f"clients.{CLIENT}.audience: compat"
    assert "RFC 7523bis advises the issuer alone" in aud.weakens
    if "lifetime" in expected:
        lifetime_fix = fails["lifetime"].fix.remedy
        assert lifetime_fix.change == f"clients.{CLIENT}.max_lifetime: {lifetime}s"
        assert f"usable for up to {lifetime}s" in lifetime_fix.weakens
    # The printed changes, applied as written, make the same assertion acceptable.
    fixed = copy.deepcopy(config())
    for check in fails.values():
        key_path, _, value = check.fix.remedy.change.partition(": ")
        _, client, key = key_path.split(".")
        fixed["clients"][client][key] = value
    accepted = await explained(write(tmp_path, fixed, "fixed.yaml"),
                               assertion(lifetime=lifetime, **claims))
    assert accepted.accepted, failed(accepted)


async def test_an_assertion_the_default_policy_accepts(tmp_path: Path) -> None:
    explanation = await explained(write(tmp_path, config()), assertion())
    assert explanation.accepted and explanation.reason == "ok" and not failed(explanation)
    rules = [check.rule for check in explanation.checks]
    assert rules == ["parse", "client", "alg", "typ", "key", "signature", "iss", "sub", "aud",
                     "time", "lifetime", "jti", "replay"]
    assert explanation.checks[-1].outcome == "not_checked"  # nothing is written anywhere


def test_the_command_prints_each_rule_the_fix_and_exits_by_verdict(tmp_path: Path) -> None:
    path = write(tmp_path, config())
    token = assertion(lifetime=3600, aud=TOKEN_URL)
    refused = run("--config", str(path), token)
    assert refused.returncode == 1, refused.stderr
    out = refused.stdout
    assert "FAIL  aud" in out and "FAIL  lifetime" in out and "PASS  signature" in out
    assert f"fix:     clients.{CLIENT}.audience: compat" in out
    assert f"fix:     clients.{CLIENT}.max_lifetime: 3600s" in out
    assert out.count("weakens:") == 2
    assert "verdict: refused, 401 invalid_client, reason bad_audience" in out
    signature, jti = token.rsplit(".", 1)[1], json.loads(
        _segment(token.split(".")[1]))["jti"]
    assert signature not in out + refused.stderr and jti not in out + refused.stderr
    accepted = run("--config", str(path), "-", stdin=assertion() + "\n")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "verdict: accepted" in accepted.stdout
    as_json = json.loads(run("--config", str(path), "--json", token).stdout)
    assert as_json["reason"] == "bad_audience" and as_json["accepted"] is False
    assert {c["rule"] for c in as_json["checks"] if c["outcome"] == "fail"} == {"aud", "lifetime"}


def _segment(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.parametrize(("args", "stdin", "needle"), [
    pytest.param(["--endpoint", "/nope"], "x.y.z", "not a configured endpoint", id="endpoint"),
    pytest.param(["-"], "  \n", "no assertion given", id="empty-stdin"),
    pytest.param(["--config-missing"], "", "", id="usage"),
])
def test_usage_and_configuration_errors_exit_2(
        tmp_path: Path, args: list[str], stdin: str, needle: str) -> None:
    path = write(tmp_path, config())
    result = run("--config", str(path), *args, stdin=stdin)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_a_config_that_cannot_load_exits_2_without_needing_its_secrets(tmp_path: Path) -> None:
    data = config()
    text = yaml.safe_dump(data).replace("method: none", "method: client_secret_basic\n"
                                        "      secret: !env CI_SECRET")
    path = tmp_path / "with-secret.yaml"
    path.write_text(text)
    # CI_SECRET is unset in `run`: explain reads no secret, so the config loads.
    assert run("--config", str(path), assertion()).returncode == 0
    result = run("--config", str(tmp_path / "missing.yaml"), assertion())
    assert result.returncode == 2 and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


async def test_explaining_writes_no_ledger(tmp_path: Path) -> None:
    # A Redis ledger nobody listens on: any replay check would fail closed (503).
    data = {**config(), "replay": {"store": "redis", "redis_url": "redis://127.0.0.1:9/0"}}
    token = assertion()
    first = await explained(write(tmp_path, data), token)
    second = await explained(write(tmp_path, data), token)
    assert first.accepted and second.accepted  # and the jti is still unspent


async def test_a_disabled_client_is_named_with_the_switch_that_brings_it_back(
        tmp_path: Path) -> None:
    explanation = await explained(write(tmp_path, config(enabled=False)), assertion())
    check = failed(explanation)["client"]
    assert check.reason == "unknown_client"
    assert check.fix.remedy.change == f"clients.{CLIENT}.enabled: true"


@pytest.mark.parametrize(("token_args", "rule", "reason", "has_remedy"), [
    pytest.param({"header": {"alg": "ES256", "kid": "k1", "typ": "at+jwt"}}, "typ", "bad_typ",
                 False, id="bad-typ"),
    pytest.param({"header": {"alg": "ES256", "kid": "k9"}}, "key", "no_matching_key", True,
                 id="unknown-kid"),
    pytest.param({"iss": "someone-else"}, "iss", "bad_issuer", False, id="iss"),
    pytest.param({"aud": [ISSUER, TOKEN_URL]}, "aud", "bad_audience", False, id="two-audiences"),
    pytest.param({"aud": "https://elsewhere.example/token"}, "aud", "bad_audience", False,
                 id="foreign-audience"),
    pytest.param({"iat": 1_000_000_000, "exp": 1_000_000_060}, "time", "expired", False,
                 id="long-expired"),
    pytest.param({"iat": "yesterday"}, "time", "bad_claims", False, id="iat-not-a-date"),
    pytest.param({"jti": ""}, "jti", "bad_jti", False, id="empty-jti"),
])
async def test_each_refusal_names_its_rule_and_a_fix_only_where_a_setting_fits(
        tmp_path: Path, token_args: dict[str, Any], rule: str, reason: str,
        has_remedy: bool) -> None:
    explanation = await explained(write(tmp_path, config()), assertion(**token_args))
    assert not explanation.accepted and explanation.reason == reason
    check = failed(explanation)[rule]
    assert check.reason == reason
    assert (check.fix.remedy is not None) == has_remedy
    assert check.fix.remedy is not None or check.fix.advice


async def test_a_clock_ahead_within_reach_gets_a_wider_skew_at_a_cost(tmp_path: Path) -> None:
    now = time.time()
    token = signer().sign({"alg": "ES256", "kid": "k1"},
                          valid_claims(CLIENT, ISSUER, now=now + 40, lifetime=60))
    check = failed(await explained(write(tmp_path, config()), token))["time"]
    assert check.reason == "issued_in_future"
    assert check.fix.remedy.change.startswith(f"clients.{CLIENT}.clock_skew: 4")
    assert "every time check" in check.fix.remedy.weakens


async def test_an_unsigned_or_shared_secret_algorithm_has_no_setting(tmp_path: Path) -> None:
    claims = valid_claims(CLIENT, ISSUER, now=time.time())
    token = signer().sign({"alg": "HS256", "kid": "k1"}, claims, sign_alg="ES256")
    check = failed(await explained(write(tmp_path, config()), token))["alg"]
    assert check.reason == "alg_not_allowed" and check.fix.remedy is None
    assert "never accepted" in (check.fix.advice or "")


def test_text_from_the_token_never_reaches_the_terminal_raw(tmp_path: Path) -> None:
    # An attacker's token pasted by an operator: its claims must not drive the terminal.
    path = write(tmp_path, config())
    result = run("--config", str(path), assertion(sub="\x1b]0;owned\x07\x1b[2J", iss="x\x1b"))
    assert result.returncode == 1
    assert "\x1b" not in result.stdout + result.stderr
    assert "\\u001b" in result.stdout


async def test_a_jwks_uri_is_fetched_once_even_for_an_unknown_kid(
        tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    keys = await start_jwks_server(aiohttp_server, [signer().public_jwk])
    data = config()
    data["clients"][CLIENT] = {"jwks_uri": keys.url(), "backend_auth": {"method": "none"}}
    # Another client's key host is never asked: only the keys this assertion needs.
    data["clients"]["other"] = {"jwks_uri": keys.url("/other"),
                                "backend_auth": {"method": "none"}}
    data["jwks_fetch"] = {"allow_http": True, "allow_private_networks": True}
    path = write(tmp_path, data)
    assert (await explained(path, assertion())).accepted
    assert [asked.path for asked in keys.asked] == ["/jwks"]
    missing = await explained(path, assertion(header={"alg": "ES256", "kid": "rotated"}))
    assert keys.fetches == 2  # one fetch for this run too, never a second one for the miss
    check = failed(missing)["key"]
    assert check.reason == "no_matching_key" and check.fix.remedy is None
    assert "jwks_uri must publish" in (check.fix.advice or "")


async def test_a_key_host_the_address_guard_refuses_is_named_with_its_switch(
        tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    keys = await start_jwks_server(aiohttp_server, [signer().public_jwk])
    data = config()
    data["clients"][CLIENT] = {"jwks_uri": keys.url(), "backend_auth": {"method": "none"}}
    data["jwks_fetch"] = {"allow_http": True}
    explanation = await explained(write(tmp_path, data), assertion())
    assert not explanation.accepted and explanation.status == 503
    check = failed(explanation)["key"]
    assert check.reason == "keys_unavailable"
    assert check.fix.remedy.change == "jwks_fetch.allow_private_networks: true"
    assert "request forgery" in check.fix.remedy.weakens
    assert keys.fetches == 0


def federated_config() -> dict[str, Any]:
    platform = make_signer("ES256", kid="p1", slot=1)
    return {
        "issuer": ISSUER, "backend": {"url": "http://127.0.0.1:1"},
        "endpoints": ["/oauth2/token"],
        "federation": {"issuers": {"ci-platform": {
            "issuer": PLATFORM, "jwks": {"keys": [platform.public_jwk]},
            "algorithms": ["ES256"]}}},
        "clients": {"deploy": {"backend_auth": {"method": "none"}, "federated": [
            {"name": "main", "issuer": "ci-platform", "audience": ISSUER,
             "subject": WORKLOAD}]}},
    }


def platform_token(**claims: Any) -> str:
    platform = make_signer("ES256", kid="p1", slot=1)
    now = int(time.time())
    body = {"iss": PLATFORM, "sub": WORKLOAD, "aud": ISSUER, "iat": now, "exp": now + 120,
            "jti": os.urandom(8).hex(), **claims}
    return platform.sign({"alg": "ES256", "kid": "p1", "typ": "JWT"}, body)


async def test_a_platform_token_is_judged_by_the_trusts_of_its_issuer(tmp_path: Path) -> None:
    path = write(tmp_path, federated_config())
    accepted = await explained(path, platform_token())
    assert accepted.accepted and accepted.client == "deploy"
    assert "trust main" in {check.rule for check in accepted.checks}
    other_aud = await explained(path, platform_token(aud="https://github.com/acme"))
    check = failed(other_aud)["trust main"]
    assert check.reason == "bad_audience"
    assert check.fix.remedy.change.endswith('audience: "https://github.com/acme"')
    assert "choose an audience only this gateway receives" in check.fix.remedy.weakens


async def test_a_platform_token_of_another_workload(tmp_path: Path) -> None:
    path = write(tmp_path, federated_config())
    token = platform_token(sub="repo:acme/api:ref:refs/heads/feature")
    # Without client_id no client trusts that subject: nothing was even tried.
    unnamed = await explained(path, token)
    assert failed(unnamed)["client"].reason == "no_trust"
    # Named, the client's trust says why it refuses, and what would widen it.
    named = await explained(path, token, client_id="deploy")
    check = failed(named)["trust main"]
    assert check.reason == "subject_mismatch" and named.reason == "subject_mismatch"
    assert "refs/heads/feature" in check.fix.remedy.change
    assert "becomes deploy" in check.fix.remedy.weakens


@pytest.mark.parametrize("token", [
    pytest.param("not-a-jwt", id="malformed"),
    pytest.param("a.b", id="two-parts"),
    pytest.param("x" * 20_000, id="too-long"),
])
async def test_what_is_not_an_assertion_is_refused_at_parse(tmp_path: Path, token: str) -> None:
    explanation = await explained(write(tmp_path, config()), token)
    assert not explanation.accepted
    assert explanation.checks[0].rule == "parse" and explanation.checks[0].outcome == "fail"
    assert explanation.reason in {check.reason for check in failed(explanation).values()}
