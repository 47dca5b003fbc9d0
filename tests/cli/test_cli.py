"""The command line as a user runs it: demo, check, schema, keygen + mint, serve."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.cli.mint import generate_key
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
    # What the backend received: the assertion gone, the backend's own credential added.
    [received] = [line for line in result.stdout.splitlines()
                  if "the legacy IdP received: POST /oauth2/token" in line]
    assert "grant_type=client_credentials" in received and "client_assertion" not in received
    assert "Authorization: Basic demo-pipeline:******** " in result.stdout
    assert "the legacy IdP received nothing more (1 request in all)" in result.stdout
    # And where to go from there.
    after = result.stdout.split("demo: OK", 1)[1]
    assert "next steps" in after and "pkjwt-gateway keygen" in after
    assert "pkjwt-gateway explain" in after


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
    started, refused = map(json.loads, (tmp_path / "audit.log").read_text().splitlines())
    assert (started["event"], started["cause"]) == ("keys_changed", "start")
    assert refused["reason"] == "no_client_auth"


# -- First steps without tracebacks, checks without secrets ---------------------------------

LINT = ROOT / "gateway" / "config" / "lint.py"
MINIMAL = """issuer: https://idp.test
backend: {url: "http://127.0.0.1:1"}
endpoints: [/oauth2/token]
clients:
  c:
    jwks: {keys: [%s]}
    backend_auth: {method: client_secret_basic, %s}
"""


def run_unset(*args: str, unset: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """The command with the named variables absent from its environment."""
    env = {name: value for name, value in os.environ.items() if name not in unset}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def minimal(tmp_path: Path, secret: str = "secret: !env C_SECRET", extra: str = "") -> Path:
    config = tmp_path / "minimal.yaml"
    config.write_text(MINIMAL % (json.dumps(make_signer("ES256").public_jwk), secret) + extra)
    return config


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ci.pem"
    path.write_text(generate_key("ES256", "ci-1")[0])
    return path


def claims_of(assertion: str) -> dict[str, object]:
    payload = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_keygen_never_overwrites_a_key_nor_writes_into_a_missing_folder(tmp_path: Path) -> None:
    key_file = tmp_path / "ci.pem"
    key_file.write_text("the key already there")
    taken = run("keygen", "--out", str(key_file))
    assert taken.returncode == 2 and "Traceback" not in taken.stderr
    assert "exists: keygen never overwrites a key" in taken.stderr
    assert taken.stdout == "" and key_file.read_text() == "the key already there"
    nowhere = run("keygen", "--out", str(tmp_path / "missing" / "ci.pem"))
    assert nowhere.returncode == 2 and "Traceback" not in nowhere.stderr
    assert "its folder must exist" in nowhere.stderr and nowhere.stdout == ""


@pytest.mark.parametrize("lifetime", ["0", "-5", "nan", "inf", "0s", "60x", "2d"])
def test_mint_refuses_a_lifetime_it_cannot_use_with_a_clear_message(
        key_file: Path, lifetime: str) -> None:
    result = run("mint", "--key", str(key_file), "--client-id", "ci", "--audience",
                 "https://idp.test", "--lifetime", lifetime)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --lifetime" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(("lifetime", "seconds"), [("60s", 60), ("2m", 120), ("90", 90),
                                                   ("1.5m", 90)])
def test_mint_takes_the_configs_duration_syntax(
        key_file: Path, lifetime: str, seconds: int) -> None:
    minted = run("mint", "--key", str(key_file), "--client-id", "ci", "--audience",
                 "https://idp.test", "--lifetime", lifetime)
    assert minted.returncode == 0, minted.stderr
    claims = claims_of(minted.stdout.strip())
    assert claims["exp"] == claims["iat"] + seconds  # type: ignore[operator]


@pytest.mark.parametrize(("alg", "choice"), [("ES256", []), ("EdDSA", []),
                                             ("RS256", ["--alg", "RS256"])])
def test_keygen_from_key_prints_the_public_jwk_keygen_printed(
        tmp_path: Path, alg: str, choice: list[str]) -> None:
    key_file = tmp_path / "ci.pem"
    made = run("keygen", "--alg", alg, "--kid", "ci-1", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    again = run("keygen", "--from-key", str(key_file), "--kid", "ci-1", *choice)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(made.stdout)
    assert "PRIVATE KEY" not in again.stdout and '"d"' not in again.stdout
    # Without --kid, the RFC 7638 thumbprint: the same for the same key, every time.
    first = json.loads(run("keygen", "--from-key", str(key_file), *choice).stdout)
    second = json.loads(run("keygen", "--from-key", str(key_file), *choice).stdout)
    assert first == second and first["keys"][0]["kid"] != "ci-1"


def test_keygen_from_key_refuses_what_is_no_private_key(tmp_path: Path) -> None:
    public = tmp_path / "public.json"
    public.write_text(json.dumps(make_signer("ES256").public_jwk))
    for target in (public, tmp_path / "missing.pem"):
        result = run("keygen", "--from-key", str(target))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ")
    both = run("keygen", "--from-key", str(public), "--out", str(tmp_path / "x.pem"))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_check_no_secrets_checks_references_without_reading_them(tmp_path: Path) -> None:
    unset = ("CI_PIPELINE_SECRET", "PARTNER_ACME_SECRET", "C_SECRET")
    assert run_unset("check", "--config", str(EXAMPLE), unset=unset).returncode == 2
    result = run_unset("check", "--config", str(EXAMPLE), "--no-secrets", unset=unset)
    assert result.returncode == 0, result.stdout + result.stderr
    # A secret file that exists only in production, and a Redis password from the environment.
    config = minimal(tmp_path, "secret_file: /run/secrets/not-here",
                     "replay: {store: redis, redis_password: !env REDIS_PASSWORD,"
                     " redis_url: !env REDIS_URL}\n")
    unset += ("REDIS_PASSWORD", "REDIS_URL")
    assert run_unset("check", "--config", str(config), unset=unset).returncode == 2
    # And a TLS key that only the production host holds.
    with config.open("a") as text:
        text.write("listen: {tls: {cert_file: /run/secrets/tls.crt,"
                   " key_file: /run/secrets/tls.key}}\n")
    passed = run_unset("check", "--config", str(config), "--no-secrets", "--strict",
                       unset=unset)
    assert passed.returncode == 0, passed.stdout + passed.stderr


@pytest.mark.parametrize(("secret", "extra", "path"), [
    pytest.param("secret: !env ''", "", "clients.c.backend_auth.secret", id="no-variable-name"),
    pytest.param("secret: literal-secret-in-yaml", "", "clients.c.backend_auth.secret",
                 id="secret-in-the-yaml"),
    pytest.param("secret: !env C_SECRET", "public_url: !env GW_PUBLIC_URL\n", "public_url",
                 id="unset-non-secret"),
])
def test_check_no_secrets_still_refuses_a_missing_or_inline_reference(
        tmp_path: Path, secret: str, extra: str, path: str) -> None:
    config = minimal(tmp_path, secret, extra)
    result = run_unset("check", "--config", str(config), "--no-secrets",
                       unset=("C_SECRET", "GW_PUBLIC_URL"))
    assert result.returncode == 2, result.stdout
    assert f"error: {path}:" in result.stdout
    assert "literal-secret-in-yaml" not in result.stdout + result.stderr


@pytest.mark.parametrize("verb", ["keys", "report"])
def test_keys_and_report_need_no_secret(tmp_path: Path, verb: str) -> None:
    config = minimal(tmp_path, extra="replay: {store: redis, redis_password: !env REDIS_PW}\n")
    result = run_unset(verb, "--config", str(config), unset=("C_SECRET", "REDIS_PW"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is not set" not in result.stdout + result.stderr


def test_check_strict_passes_a_config_of_defaults(tmp_path: Path) -> None:
    config = minimal(tmp_path, "secret: !env C_SECRET")
    result = run("check", "--config", str(config), "--strict", env={"C_SECRET": "s3cret-value"})
    assert result.returncode == 0, result.stdout
    assert "0 warning(s)" in result.stdout


def test_an_accepted_warning_is_listed_apart_and_never_fails_strict(tmp_path: Path) -> None:
    config = minimal(tmp_path, "secret: !env C_SECRET",
                     "policy: {audience: compat, max_lifetime: 600s}\n")
    env = {"C_SECRET": "s3cret-value"}
    plain = run("check", "--config", str(config), "--strict", env=env)
    assert plain.returncode == 1
    assert "warning: policy.audience: " in plain.stdout and "[audience-compat]" in plain.stdout
    assert "[long-max-lifetime]" in plain.stdout
    one = run("check", "--config", str(config), "--strict", "--accept", "audience-compat",
              env=env)
    assert one.returncode == 1  # the other warning still counts
    assert "accepted: policy.audience [audience-compat]" in one.stdout
    assert "warning: policy.audience" not in one.stdout
    both = run("check", "--config", str(config), "--strict", "--accept", "audience-compat",
               "--accept", "long-max-lifetime=policy.max_lifetime", env=env)
    assert both.returncode == 0, both.stdout
    assert "0 warning(s), 2 accepted" in both.stdout
    # Accepted at one path only: the same warning elsewhere is not.
    elsewhere = run("check", "--config", str(config), "--strict", "--accept",
                    "audience-compat=clients.c.audience", "--accept", "long-max-lifetime",
                    env=env)
    assert elsewhere.returncode == 1
    assert "--accept audience-compat=clients.c.audience matches no warning" in elsewhere.stderr


def test_every_warning_id_is_documented() -> None:
    ids = set(re.findall(r'_warn\("([a-z0-9-]+)"', LINT.read_text()))
    assert len(ids) >= 15
    readme = (ROOT / "README.md").read_text()
    missing = [warning for warning in sorted(ids) if f"`{warning}`" not in readme]
    assert not missing, missing
