"""The command line as a user runs it: demo, check, schema, keygen + mint, serve."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.core.assertion import AssertionPolicy, parse_assertion, verify_assertion
from gateway.core.keyset import prepare_keyset
from tests.conftest import ASSERTION_TYPE, ISSUER, Backend, gateway_yaml
from tests.support.ports import free_port
from tests.support.serving import listeners, serving
from tests.support.tokens import make_signer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "gateway.example.yaml"
EXAMPLE_ENV = {"CI_PIPELINE_SECRET": "ci-secret-for-tests-only",
               "PARTNER_ACME_SECRET": "acme-secret-for-tests-only"}


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_demo_runs_the_whole_flow_and_exits_0() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> 200" in result.stdout and "-> 401" in result.stdout
    assert "demo: OK" in result.stdout


def test_check_accepts_the_example_config() -> None:
    result = run("check", "--config", str(EXAMPLE), env={**EXAMPLE_ENV})
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "issuer: https://idp.test\nbackend: {url: http://127.0.0.1:1, timeout: 10}\n"
        "endpoints: [/oauth2/token]\nsurprise: 1\nclients:\n  c:\n"
        "    jwks_file: missing.json\n    backend_auth: {method: client_secret_basic, "
        "secret: !env UNSET_FOR_THIS_TEST}\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    for path in ("backend.timeout", "surprise", "clients.c.jwks_file",
                 "clients.c.backend_auth.secret"):
        assert path in result.stdout, (path, result.stdout)


def test_check_strict_exits_1_on_warnings(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("max_lifetime: 300s", "max_lifetime: 3600s", 1)
    config = tmp_path / "loose.yaml"
    config.write_text(text)
    env = EXAMPLE_ENV
    assert run("check", "--config", str(config), "--strict", env=env).returncode == 1
    assert run("check", "--config", str(config), env=env).returncode == 0


def test_schema_is_json_with_every_top_level_key() -> None:
    result = run("schema")
    schema = json.loads(result.stdout)
    for key in ("issuer", "backend", "endpoints", "policy", "clients", "replay"):
        assert key in schema["properties"]


@pytest.mark.parametrize("alg", ["ES256", "PS256", "RS256", "EdDSA"])
def test_keygen_then_mint_gives_an_assertion_the_gateway_accepts(tmp_path: Path, alg: str) -> None:
    key_file = tmp_path / "client.pem"
    made = run("keygen", "--alg", alg, "--kid", "k1", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    jwks = json.loads(made.stdout)
    assert "d" not in jwks["keys"][0]
    # An RSA key can sign RS* and PS*: mint needs to be told which one the JWK announces.
    choice = ["--alg", alg] if alg.startswith(("RS", "PS")) else []
    minted = run("mint", "--key", str(key_file), "--client-id", "ci", "--audience",
                 "https://idp.test", "--kid", "k1", *choice)
    assert minted.returncode == 0, minted.stderr
    policy = AssertionPolicy(client_id="ci", algorithms=frozenset({alg, "Ed25519"}),
                             audiences=frozenset({"https://idp.test"}), max_lifetime=300,
                             clock_skew=15, require_typ=False)
    verified = verify_assertion(parse_assertion(minted.stdout.strip()),
                                prepare_keyset(jwks["keys"]), policy, time.time())
    assert verified.client_id == "ci" and verified.kid == "k1"


async def test_serve_answers_and_stops_cleanly_on_sigterm(
    backend: Backend, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(gateway_yaml(backend.url, {"keys": [make_signer("ES256").public_jwk]},
                                   extra=listeners(port, admin)))
    async with serving(config, port, admin, {"CI_SECRET": "serve-test-secret"}) as served:
        async with aiohttp.ClientSession() as session:
            async with session.post(served.token_url,
                                    data={"grant_type": "client_credentials"}) as response:
                assert response.status == 401
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                assert "pkjwt_build_info" in await response.text()
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as response:
                assert response.status == 200
        assert served.stop() == 0


def test_check_reports_a_key_that_cannot_be_imported(tmp_path: Path) -> None:
    # Structurally a P-256 key, but the point is not on the curve.
    bad = {"kty": "EC", "crv": "P-256", "kid": "k", "x": "A" * 43, "y": "A" * 43}
    config = tmp_path / "offcurve.yaml"
    config.write_text(
        "issuer: https://idp.test\nbackend: {url: http://127.0.0.1:1}\n"
        f"endpoints: [/oauth2/token]\nclients:\n  c:\n    jwks: {{keys: [{json.dumps(bad)}]}}\n"
        "    backend_auth: {method: none}\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert "error: clients.c.jwks.keys[0]: cannot import" in result.stdout
    assert "Traceback" not in result.stderr


def _config_with_a_private_key(tmp_path: Path) -> tuple[Path, str]:
    public = make_signer("ES256").public_jwk
    private = {**public, "kid": "leaked", "d": "c2VjcmV0LXByaXZhdGUtc2NhbGFyLXZhbHVlLTMyYg"}
    (tmp_path / "c.jwks.json").write_text(json.dumps({"keys": [public, private]}))
    config = tmp_path / "leaky.yaml"
    config.write_text(
        "issuer: https://idp.test\nbackend: {url: http://127.0.0.1:1}\n"
        "endpoints: [/oauth2/token]\nclients:\n  c:\n    jwks_file: c.jwks.json\n"
        "    backend_auth: {method: none}\n")
    return config, private["d"]


@pytest.mark.parametrize("verb", ["check", "keys"])
def test_a_configured_set_with_private_material_is_refused_at_its_path(
    tmp_path: Path, verb: str
) -> None:
    config, secret = _config_with_a_private_key(tmp_path)
    result = run(verb, "--config", str(config))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "error: clients.c.jwks_file.keys[1]: holds private key material (d): "
        "publish the public key only"]
    assert secret not in result.stdout + result.stderr


async def test_sighup_reloads_a_running_server(backend: Backend, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    newcomer = make_signer("ES256", kid="newcomer", slot=1)
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(backend.url, {"keys": [make_signer("ES256").public_jwk]},
                                   extra=listeners(port, admin)))

    async def status_for_newcomer(session: aiohttp.ClientSession, url: str) -> int:
        now = int(time.time())
        assertion = newcomer.sign(
            {"alg": "ES256", "kid": "newcomer"},
            {"iss": "newcomer", "sub": "newcomer", "aud": ISSUER, "iat": now, "exp": now + 60,
             "jti": os.urandom(8).hex()})
        async with session.post(url, data={
                "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}) as response:
            return response.status

    async with serving(config, port, admin, {"CI_SECRET": "sighup-test-secret"}) as served:
        async with aiohttp.ClientSession() as session:
            assert await status_for_newcomer(session, served.token_url) == 401
            block = (f"\n  newcomer:\n    jwks: {{keys: [{json.dumps(newcomer.public_jwk)}]}}\n"
                     "    backend_auth: {method: none}\n")
            config.write_text(gateway_yaml(
                backend.url, {"keys": [make_signer("ES256").public_jwk]},
                extra=block + listeners(port, admin)))
            served.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while await status_for_newcomer(session, served.token_url) != 200:
                assert time.monotonic() < deadline, "SIGHUP did not reload"
                await asyncio.sleep(0.1)
        assert served.stop() == 0


async def test_audit_lines_go_to_the_configured_file(backend: Backend, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(gateway_yaml(
        backend.url, {"keys": [make_signer("ES256").public_jwk]},
        extra=listeners(port, admin) + "audit: {output: audit.log}\n"))
    async with serving(config, port, admin, {"CI_SECRET": "audit-test-secret"},
                       stdout=subprocess.PIPE) as served:
        async with aiohttp.ClientSession() as session, session.post(
                served.token_url, data={"grant_type": "client_credentials"}) as response:
            assert response.status == 401
        assert served.stop() == 0
        assert served.proc.stdout is not None
        assert served.proc.stdout.read() == b""  # nothing on stdout: the lines went to the file
        served.proc.stdout.close()
    [line] = (tmp_path / "audit.log").read_text().splitlines()
    assert json.loads(line)["reason"] == "no_client_auth"
