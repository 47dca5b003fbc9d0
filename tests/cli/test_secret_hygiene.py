"""Secret hygiene: a whole served session, every output captured, searched for the secrets.

One real ``python -m gateway serve`` process answers accepted and refused requests, a backend
error and a backend that is gone, scrapes and a refused reload; the CLI verbs run beside it.
Its stdout (audit), stderr (log), every answer, the CLI output and the repr of the loaded
settings and credentials must not contain a backend secret, the test client's private key,
an assertion that was sent or a full jti.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwk

from gateway.adapters.assemble import build_runtime
from gateway.cli.mint import generate_key, load_private_key
from gateway.config.loading import load_settings
from tests.conftest import ASSERTION_TYPE, ISSUER, TOKEN_PATH, gateway_yaml
from tests.support.ports import free_port
from tests.support.serving import wait_healthy
from tests.support.tokens import Signer

ROOT = Path(__file__).resolve().parents[2]
INTROSPECT_PATH = "/oauth2/introspect"  # the test backend answers 500 there
BASIC_CLIENT = "ci-pipeline"  # client_secret_basic, secret from !env CI_SECRET
POST_CLIENT = "hygiene-post"  # client_secret_post, secret from secret_file
# Distinctive values: a hit can only be a leak, never a coincidence.
ENV_SECRET = "envsecret-" + secrets.token_hex(12)
FILE_SECRET = "filesecret-" + secrets.token_hex(12)
STEP_TIMEOUT = 5.0


def _signer(alg: str, kid: str) -> tuple[Signer, str, str]:
    """A fresh key pair: the signer, its private PEM and its private ``d``."""
    pem, public = generate_key(alg, kid)
    private = jwk.ECKey.import_key(pem)
    d = str(private.as_dict(private=True)["d"])
    return Signer(alg=alg, kid=kid, private_key=load_private_key(pem, alg),
                  public_jwk=public), pem, d


@dataclass
class Session:
    """Everything the session produced (label -> text) and what must never be in it."""

    texts: dict[str, str] = field(default_factory=dict)
    forbidden: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    jtis: list[str] = field(default_factory=list)
    assertions: list[str] = field(default_factory=list)

    def capture(self, label: str, text: str) -> None:
        self.texts[label] = self.texts.get(label, "") + text


class Driver:
    """Sends requests to the served gateway and keeps every answer."""

    def __init__(self, session: Session, http: aiohttp.ClientSession, port: int,
                 signer: Signer) -> None:
        self.session, self.http, self.port, self.signer = session, http, port, signer

    def jti(self) -> str:
        value = "hygiene-jti-" + secrets.token_hex(16)
        self.session.jtis.append(value)
        return value

    def assertion(self, *, client_id: str = BASIC_CLIENT, signer: Signer | None = None,
                  header: dict[str, Any] | bytes | None = None, **claims: Any) -> str:
        signer = signer or self.signer
        now = int(time.time())
        body = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now,
                "exp": now + 60, "jti": self.jti(), **claims}
        token = signer.sign(header if header is not None else signer.header(), body)
        self.session.assertions.append(token)
        return token

    async def post(self, label: str, data: dict[str, str], *, path: str = TOKEN_PATH) -> int:
        url = f"http://127.0.0.1:{self.port}{path}"
        async with self.http.post(url, data=data) as response:
            text = await response.text()
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.session.capture(f"answer {label}", f"{response.status}\n{headers}\n{text}\n")
        self.session.statuses[label] = response.status
        return response.status

    async def token(self, label: str, assertion: str, *, path: str = TOKEN_PATH) -> int:
        return await self.post(label, {"grant_type": "client_credentials",
                                       "client_assertion_type": ASSERTION_TYPE,
                                       "client_assertion": assertion}, path=path)


async def _start_backend() -> tuple[web.AppRunner, int]:
    """A legacy IdP stand-in: 200 on the token path, 500 on introspection."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path == INTROSPECT_PATH:
            return web.json_response({"error": "server_error"}, status=500)
        return web.json_response({"access_token": "at-" + secrets.token_hex(4),
                                  "token_type": "Bearer", "expires_in": 300})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _drive(session: Session, proc: subprocess.Popen[bytes], config: Path,
                 backend: web.AppRunner, port: int, admin: int, signers: dict[str, Signer],
                 valid_config: str) -> None:
    timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await wait_healthy(http, admin, process=proc)
        drive = Driver(session, http, port, signers[BASIC_CLIENT])
        accepted = drive.assertion()
        await drive.token("accepted basic", accepted)
        await drive.token("replay", accepted)
        await drive.token("accepted post",
                          drive.assertion(client_id=POST_CLIENT, signer=signers[POST_CLIENT]))
        # Signed by another key under the client's kid.
        await drive.token("bad signature", drive.assertion(
            signer=signers[POST_CLIENT], header={"alg": "ES256", "kid": signers[BASIC_CLIENT].kid}))
        now = int(time.time())
        await drive.token("expired", drive.assertion(iat=now - 600, exp=now - 300))
        await drive.token("unknown client", drive.assertion(client_id="hygiene-nobody"))
        await drive.token("malformed header", drive.assertion(header=b'{"alg":"ES256","kid":'))
        await drive.post("client_secret in body", {
            "grant_type": "client_credentials", "client_id": BASIC_CLIENT,
            "client_secret": ENV_SECRET})
        await drive.token("backend error", drive.assertion(), path=INTROSPECT_PATH)
        for path in ("/metrics", "/readyz"):
            async with http.get(f"http://127.0.0.1:{admin}{path}") as response:
                session.capture(f"admin {path}", await response.text())
        # An operator mistake: the secret written into the file, plus a broken key.
        config.write_text(valid_config.replace("secret: !env CI_SECRET",
                                               f"secret: {ENV_SECRET}", 1)
                          + "\nsurprise: " + FILE_SECRET + "\n")
        async with http.post(f"http://127.0.0.1:{admin}/reload") as response:
            session.statuses["reload"] = response.status
            session.capture("admin /reload", await response.text())
        config.write_text(valid_config)
        await backend.cleanup()  # the backend goes away: the next accepted request gets 502
        await drive.token("backend down", drive.assertion())
    proc.send_signal(signal.SIGTERM)


def _cli(session: Session, label: str, *args: str, env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                            text=True, timeout=30, cwd=ROOT, env=env)
    session.capture(f"cli {label}", f"{result.returncode}\n{result.stdout}\n{result.stderr}")
    session.statuses[f"cli {label}"] = result.returncode


def _reprs(session: Session, config: Path) -> None:
    settings = load_settings(config, env={"CI_SECRET": ENV_SECRET})
    session.capture("repr Settings", repr(settings) + "\n" + str(settings))
    session.capture("json Settings", settings.model_dump_json())
    for client_id, client in settings.clients.items():
        session.capture(f"repr {client_id}", repr(client) + str(client.backend_auth))
    runtime = build_runtime(settings)
    assert set(runtime.clients) == {BASIC_CLIENT, POST_CLIENT}
    for client_id, client_runtime in runtime.clients.items():
        credential = client_runtime.backend
        session.capture(f"repr credential {client_id}", repr(credential) + "\n" + str(credential))
    session.capture("repr Runtime", repr(runtime))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("hygiene")
    basic, basic_pem, basic_d = _signer("ES256", "hygiene-basic")
    post, post_pem, post_d = _signer("ES256", "hygiene-post")
    signers = {BASIC_CLIENT: basic, POST_CLIENT: post}
    (tmp / "post.secret").write_text(FILE_SECRET + "\n")
    port, admin = free_port(), free_port()
    found = Session()
    for name, secret in (("env secret", ENV_SECRET), ("file secret", FILE_SECRET)):
        found.forbidden[name] = secret
        found.forbidden[f"{name}, urlencoded"] = quote(secret)
    basic_header = base64.b64encode(f"{BASIC_CLIENT}:{ENV_SECRET}".encode()).decode()
    found.forbidden["Basic credential"] = basic_header
    for name, pem, d in (("basic", basic_pem, basic_d), ("post", post_pem, post_d)):
        found.forbidden[f"{name} key d"] = d
        lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        found.forbidden[f"{name} key PEM"] = "".join(lines)
        for index, line in enumerate(lines):
            found.forbidden[f"{name} key PEM line {index}"] = line

    async def run() -> subprocess.Popen[bytes]:
        backend, backend_port = await _start_backend()
        extra = (f"  {POST_CLIENT}:\n    jwks: {json.dumps({'keys': [post.public_jwk]})}\n"
                 "    backend_auth: {method: client_secret_post, secret_file: post.secret}\n"
                 f"listen: {{host: 127.0.0.1, port: {port}}}\n"
                 f"admin: {{host: 127.0.0.1, port: {admin}}}\n")
        valid = gateway_yaml(f"http://127.0.0.1:{backend_port}",
                             {"keys": [basic.public_jwk]}, extra=extra)
        config = tmp / "gateway.yaml"
        config.write_text(valid)
        env = {**os.environ, "CI_SECRET": ENV_SECRET, "PYTHONUNBUFFERED": "1"}
        with (tmp / "stdout").open("wb") as out, (tmp / "stderr").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=ROOT, env=env, stdout=out, stderr=err)
        try:
            await asyncio.wait_for(
                _drive(found, proc, config, backend, port, admin, signers, valid), 15)
        finally:
            await backend.cleanup()
        for verb in (("check", "--config", str(config)), ("schema",),
                     ("keys", "--config", str(config), "--json")):
            _cli(found, verb[0], *verb, env=env)
        _reprs(found, config)
        return proc

    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = asyncio.run(run())
        found.statuses["serve exit"] = proc.wait(timeout=10)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    found.capture("serve stdout (audit)", (tmp / "stdout").read_text(errors="replace"))
    found.capture("serve stderr (log)", (tmp / "stderr").read_text(errors="replace"))
    for jti in found.jtis:
        found.forbidden[f"jti {jti}"] = jti
    for index, token in enumerate(found.assertions):
        found.forbidden[f"assertion {index}"] = token
        found.forbidden[f"assertion {index} signature"] = token.rsplit(".", 1)[1]
    yield found


def test_the_session_covered_every_path(session: Session) -> None:
    """The search below means something only if the session did what it claims."""
    expected = {"accepted basic": 200, "replay": 401, "accepted post": 200,
                "bad signature": 401, "expired": 401, "unknown client": 401,
                "malformed header": 401, "client_secret in body": 401, "backend error": 500,
                "backend down": 502, "reload": 400, "cli check": 0, "cli schema": 0,
                "cli keys": 0, "serve exit": 0}
    assert {label: session.statuses.get(label) for label in expected} == expected
    lines = [json.loads(line) for line in session.texts["serve stdout (audit)"].splitlines()]
    audit = [line for line in lines if "event" not in line]  # decisions, not key events
    reasons = {line["reason"] for line in audit}
    assert {"ok", "replayed", "bad_signature", "expired", "unknown_client", "malformed",
            "secret_not_allowed"} <= reasons
    assert {line.get("backend_status") for line in audit} >= {200, 500}
    assert any(line.get("backend_error") == "backend_unreachable" for line in audit)
    assert "reload refused" in session.texts["serve stderr (log)"]
    assert "pkjwt_client_auth_total" in session.texts["admin /metrics"]
    assert len(session.jtis) == len(session.assertions) == 8


def test_nothing_captured_holds_a_secret_key_assertion_or_jti(session: Session) -> None:
    leaks = [f"{what} in {where}" for where, text in session.texts.items()
             for what, needle in session.forbidden.items() if needle in text]
    assert not leaks, "leaked: " + "; ".join(leaks)


@pytest.mark.parametrize("label", ["serve stdout (audit)", "serve stderr (log)", "admin /reload",
                                   "admin /metrics", "cli keys", "repr Settings"])
def test_each_main_output_was_captured(session: Session, label: str) -> None:
    assert session.texts.get(label, "").strip(), f"nothing captured for {label}"
