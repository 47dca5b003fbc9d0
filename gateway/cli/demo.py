"""``pkjwt-gateway demo``: a legacy IdP, the gateway and a client on loopback, end to end."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web

from gateway.cli.mint import generate_key, load_private_key, mint_assertion
from gateway.config.loading import parse_settings
from gateway.web.app import create_gateway

DEMO_ISSUER = "https://idp.demo.pkjwt.test"
DEMO_CLIENT = "demo-pipeline"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NEXT_STEPS = (
    "next steps, for your own client and IdP:",
    "   pkjwt-gateway keygen --alg ES256 --kid my-client-1 --out my-client.pem"
    "   # the key pair; paste the printed JWKS",
    "   #   under clients.<id>.jwks of a copy of config/gateway.example.yaml, with your issuer"
    " and backend",
    "   pkjwt-gateway check --config gateway.yaml --strict"
    "   # every problem at once, with its path",
    "   pkjwt-gateway serve --config gateway.yaml",
    "   pkjwt-gateway explain --config gateway.yaml ASSERTION"
    "   # why a client's assertion is refused",
)


@dataclass(frozen=True, slots=True)
class Received:
    """What the legacy IdP was sent: the form, and whose Basic credential (never the secret)."""

    path: str
    basic_client: str | None
    secret_matches: bool
    form: tuple[tuple[str, str], ...]


def legacy_idp(client_id: str, secret: str, seen: list[Received] | None = None,
               ) -> web.Application:
    """A stand-in for a legacy IdP that knows only client_secret_basic; it notes in ``seen``
    what each request carried."""

    async def token(request: web.Request) -> web.Response:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        given_id, _, given_secret = base64.b64decode(encoded or "Og==").decode().partition(":")
        form = await request.post()
        matches = (unquote_plus(given_id), unquote_plus(given_secret)) == (client_id, secret)
        if seen is not None:
            seen.append(Received(request.path, unquote_plus(given_id) if scheme == "Basic"
                                 else None, matches,
                                 tuple((k, str(v)) for k, v in form.items())))
        if scheme != "Basic" or not matches:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        return web.json_response({"access_token": secrets.token_urlsafe(24),
                                  "token_type": "Bearer", "expires_in": 300},
                                 headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    return app


async def _start(app: web.Application | web.BaseRunner) -> tuple[web.BaseRunner, int]:
    runner = app if isinstance(app, web.BaseRunner) else web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    return runner, port


def _config(backend_port: int, jwks: dict[str, object]) -> str:
    return f"""
issuer: {DEMO_ISSUER}
backend: {{url: "http://127.0.0.1:{backend_port}", timeout: 5s}}
endpoints: [/oauth2/token]
policy: {{algorithms: [ES256], max_lifetime: 120s}}
clients:
  {DEMO_CLIENT}:
    jwks: {json.dumps(jwks)}
    backend_auth: {{method: client_secret_basic, secret: !env DEMO_BACKEND_SECRET}}
"""


async def _demo(say: Callable[[str], None]) -> int:
    backend_secret = secrets.token_urlsafe(18)
    pem, public_jwk = generate_key("ES256", "demo-key-1")
    key = load_private_key(pem, "ES256")
    seen: list[Received] = []
    idp, idp_port = await _start(legacy_idp(DEMO_CLIENT, backend_secret, seen))
    with tempfile.TemporaryDirectory() as tmp:
        settings = parse_settings(_config(idp_port, {"keys": [public_jwk]}), base_dir=Path(tmp),
                                  env={"DEMO_BACKEND_SECRET": backend_secret})
    audit = io.StringIO()
    gateway = create_gateway(settings, audit_stream=audit)
    public, public_port = await _start(gateway.public_runner(access_log=None))
    admin, admin_port = await _start(gateway.admin)
    url = f"http://127.0.0.1:{public_port}/oauth2/token"
    try:
        say(f"legacy IdP on 127.0.0.1:{idp_port}, gateway on 127.0.0.1:{public_port}")
        assertion = mint_assertion(key, alg="ES256", client_id=DEMO_CLIENT, audience=DEMO_ISSUER,
                                   lifetime=60, kid="demo-key-1")
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}
        async with aiohttp.ClientSession() as client:
            async with client.post(url, data=form) as first:
                first_body = await first.json()
            say(f"1. signed token request        -> {first.status} {json.dumps(first_body)}")
            _show_received(seen, say)
            async with client.post(url, data=form) as second:
                second_body = await second.json()
            say(f"2. same assertion sent again   -> {second.status} {json.dumps(second_body)}")
            say(f"   the legacy IdP received nothing more ({len(seen)} request in all)")
            async with client.get(f"http://127.0.0.1:{admin_port}/metrics") as scrape:
                metrics = await scrape.text()
        say("audit log:")
        for line in audit.getvalue().splitlines():
            say(f"   {line}")
        say("metrics:")
        for line in metrics.splitlines():
            if line.startswith(("pkjwt_client_auth_total", "pkjwt_replay_checks_total")):
                say(f"   {line}")
        rewritten = len(seen) == 1 and seen[0].secret_matches and not any(
            name.startswith("client_assertion") for name, _ in seen[0].form)
        ok = (first.status == 200 and "access_token" in first_body and second.status == 401
              and rewritten)
        say("demo: OK" if ok else "demo: FAILED")
        if ok:
            for line in NEXT_STEPS:
                say(line)
        return 0 if ok else 1
    finally:
        for runner in (public, admin, idp):
            await runner.cleanup()


def _show_received(seen: list[Received], say: Callable[[str], None]) -> None:
    """What the gateway forwarded: the assertion gone, the backend's own credential added."""
    if not seen:
        say("   the legacy IdP received nothing")
        return
    received = seen[-1]
    names = {name for name, _ in received.form}
    gone = sorted({"client_assertion", "client_assertion_type"} - names)
    form = "&".join(f"{name}={value}" for name, value in received.form)
    say(f"   the legacy IdP received: POST {received.path}  {form}")
    say(f"     Authorization: Basic {received.basic_client}:******** (the backend secret of "
        f"this client, added by the gateway; {'accepted' if received.secret_matches else 'wrong'})")
    say(f"     {' and '.join(gone) or 'nothing'} removed: the backend never sees the assertion")


def run_demo(*, quiet: bool = False) -> int:
    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    return asyncio.run(_demo(say))
