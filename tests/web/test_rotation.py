"""Remote key sets through the running gateway: rotation, outages, readiness, reload, inventory."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.loading import load_settings
from gateway.web.app import Gateway, create_gateway
from tests.conftest import (
    ASSERTION_TYPE,
    ISSUER,
    TOKEN_PATH,
    Backend,
    GatewayStarter,
    gateway_yaml,
)
from tests.support.jwks_server import JwksServer, start_jwks_server
from tests.support.tokens import Signer, make_signer

ServerFactory = Callable[..., Awaitable[TestServer]]
PARTNER = "partner"
ROOT = Path(__file__).resolve().parents[2]


def partner_yaml(backend_url: str, jwks_uri: str, fetch: str = "") -> str:
    extra = (f"\n  {PARTNER}:\n    jwks_uri: {jwks_uri}\n    backend_auth: {{method: none}}\n"
             f"\njwks_fetch: {{allow_http: true, allow_private_networks: true, timeout: 1s"
             f"{fetch}}}\n")
    return gateway_yaml(backend_url, {"keys": [make_signer("ES256").public_jwk]}, extra=extra)


class Live:
    def __init__(self, gateway: Gateway, public: TestServer, admin: TestServer,
                 path: Path) -> None:
        self.gateway, self.public, self.admin, self.path = gateway, public, admin, path

    async def token(self, signer: Signer) -> tuple[int, str]:
        now = int(time.time())
        header: dict[str, Any] = {"alg": signer.alg}
        if signer.kid:
            header["kid"] = signer.kid
        assertion = signer.sign(header, {"iss": PARTNER, "sub": PARTNER, "aud": ISSUER,
                                         "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex})
        data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}
        async with aiohttp.ClientSession() as session, session.post(
                str(self.public.make_url(TOKEN_PATH)), data=data) as response:
            return response.status, (await response.json()).get("error", "")

    async def admin_call(self, method: str, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.request(
                method, str(self.admin.make_url(path))) as response:
            return response.status, await response.json()

    async def settled(self) -> None:
        deadline = time.monotonic() + 5
        while not self.gateway.runtime.keys_settled():
            assert time.monotonic() < deadline, "the first fetch did not settle"
            await asyncio.sleep(0.02)


@pytest.fixture
async def start(
    backend: Backend, aiohttp_server: ServerFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, gateway_server: GatewayStarter,
) -> Callable[..., Awaitable[Live]]:
    monkeypatch.setenv("CI_SECRET", "rotation-test-secret")

    async def start_live(jwks: JwksServer, fetch: str = "", wait: bool = True) -> Live:
        path = tmp_path / "gateway.yaml"
        path.write_text(partner_yaml(backend.url, jwks.url(), fetch))
        gateway = create_gateway(load_settings(path), audit_stream=io.StringIO(),
                                 config_path=path)
        live = Live(gateway, await gateway_server(gateway),
                    await aiohttp_server(gateway.admin), path)
        if wait:
            await live.settled()
        return live

    return start_live


async def test_a_new_key_is_accepted_beside_the_old_after_one_refetch(
    aiohttp_server: ServerFactory, start: Callable[..., Awaitable[Live]]
) -> None:
    old, new = make_signer("ES256", kid="old"), make_signer("ES256", kid="new", slot=1)
    jwks = await start_jwks_server(aiohttp_server, [old.public_jwk])
    live = await start(jwks)
    assert (await live.token(old))[0] == 200
    fetched = jwks.fetches
    jwks.keys = [old.public_jwk, new.public_jwk]  # the client publishes its next key
    assert (await live.token(new))[0] == 200
    assert jwks.fetches == fetched + 1  # the unknown kid caused exactly one refetch
    assert (await live.token(old))[0] == 200
    assert (await live.token(new))[0] == 200
    assert jwks.fetches == fetched + 1


async def test_unknown_kid_storm_causes_one_fetch(
    aiohttp_server: ServerFactory, start: Callable[..., Awaitable[Live]]
) -> None:
    known, stranger = make_signer("ES256", kid="known"), make_signer("ES256", kid="x", slot=1)
    jwks = await start_jwks_server(aiohttp_server, [known.public_jwk])
    live = await start(jwks)
    fetched = jwks.fetches
    results = await asyncio.gather(*(live.token(stranger) for _ in range(30)))
    assert {result for result in results} == {(401, "invalid_client")}
    assert jwks.fetches == fetched + 1


async def test_a_removed_key_stops_verifying_after_the_refresh(
    aiohttp_server: ServerFactory, start: Callable[..., Awaitable[Live]]
) -> None:
    old, new = make_signer("ES256", kid="old"), make_signer("ES256", kid="new", slot=1)
    jwks = await start_jwks_server(aiohttp_server, [old.public_jwk, new.public_jwk],
                                   headers={"Cache-Control": "max-age=1"})
    live = await start(jwks, fetch=", min_ttl: 250ms")
    assert (await live.token(old))[0] == 200
    jwks.keys = [new.public_jwk]
    deadline = time.monotonic() + 5
    while (await live.token(old))[0] == 200:  # until the background refresh drops it
        assert time.monotonic() < deadline, "the removed key was never dropped"
        await asyncio.sleep(0.1)
    assert await live.token(old) == (401, "invalid_client")
    assert (await live.token(new))[0] == 200


async def test_keys_never_fetched_give_503_and_readyz_waits(
    aiohttp_server: ServerFactory, start: Callable[..., Awaitable[Live]], backend: Backend
) -> None:
    signer = make_signer("ES256", kid="k")
    jwks = await start_jwks_server(aiohttp_server, [signer.public_jwk])
    jwks.delay = 0.6  # the first fetch is slow ...
    live = await start(jwks, wait=False)
    status, body = await live.admin_call("GET", "/readyz")
    assert status == 503 and body["checks"]["keys"] is False
    assert await live.token(signer) == (503, "temporarily_unavailable")
    assert backend.seen == []
    await live.settled()
    assert (await live.admin_call("GET", "/readyz"))[0] == 200
    assert (await live.token(signer))[0] == 200


async def test_a_host_that_never_answers_settles_as_failed_and_refuses_with_503(
    aiohttp_server: ServerFactory, start: Callable[..., Awaitable[Live]]
) -> None:
    signer = make_signer("ES256", kid="k")
    jwks = await start_jwks_server(aiohttp_server, [signer.public_jwk])
    jwks.status = 500
    live = await start(jwks)
    assert (await live.admin_call("GET", "/readyz"))[0] == 200  # settled: it failed for good
    assert await live.token(signer) == (503, "temporarily_unavailable")
    assert live.gateway.metrics.registry.get_sample_value(
        "pkjwt_jwks_fetch_total", {"client": PARTNER, "result": "bad_status"}) >= 1


async def test_reload_keeps_the_cache_of_an_unchanged_jwks_uri(
    aiohttp_server: ServerFactory, start: Callable[..., Awaitable[Live]]
) -> None:
    signer = make_signer("ES256", kid="k")
    jwks = await start_jwks_server(aiohttp_server, [signer.public_jwk])
    live = await start(jwks)
    fetched = jwks.fetches
    live.path.write_text(live.path.read_text().replace("max_lifetime: 300s",
                                                       "max_lifetime: 200s"))
    assert (await live.admin_call("POST", "/reload"))[0] == 200
    assert (await live.token(signer))[0] == 200
    assert jwks.fetches == fetched


async def test_keys_verb_lists_local_and_remote_keys(
    aiohttp_server: ServerFactory, backend: Backend, tmp_path: Path
) -> None:
    signer = make_signer("ES256", kid="remote-key")
    jwks = await start_jwks_server(aiohttp_server, [signer.public_jwk],
                                   headers={"Cache-Control": "max-age=120"})
    path = tmp_path / "gateway.yaml"
    path.write_text(partner_yaml(backend.url, jwks.url()))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "keys", "--config", str(path), "--json", cwd=ROOT,
        env={**os.environ, "CI_SECRET": "inventory-test-secret"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    entries = {entry["client"]: entry for entry in json.loads(out)}
    remote = entries[PARTNER]
    assert remote["source"] == "jwks_uri" and remote["fetched_at"]
    assert [key["kid"] for key in remote["keys"]] == ["remote-key"]
    assert remote["keys"][0]["thumbprint"] and remote["keys"][0]["kty"] == "EC"
    assert entries["ci-pipeline"]["source"] == "jwks" and len(entries["ci-pipeline"]["keys"]) == 1
    assert jwks.fetches == 1
