"""Live reload: a valid file replaces the configuration at once, an invalid one changes nothing."""

from __future__ import annotations

import asyncio
import io
import json
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
from tests.support.tokens import Signer, make_signer

ServerFactory = Callable[..., Awaitable[TestServer]]


def _client_block(client_id: str, signer: Signer, extra: str = "") -> str:
    return (f"\n  {client_id}:\n    jwks: {{keys: [{json.dumps(signer.public_jwk)}]}}\n"
            f"    backend_auth: {{method: none}}\n{extra}")


def _assertion(signer: Signer, client_id: str) -> str:
    now = int(time.time())
    return signer.sign({"alg": signer.alg, "kid": signer.kid},
                       {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now,
                        "exp": now + 60, "jti": uuid.uuid4().hex})


class Live:
    def __init__(self, gateway: Gateway, public: TestServer, admin: TestServer, path: Path,
                 backend: Backend) -> None:
        self.gateway, self.public, self.admin, self.path = gateway, public, admin, path
        self.backend = backend

    def write(self, extra: str) -> None:
        signer = make_signer("ES256")
        self.path.write_text(gateway_yaml(self.backend.url, {"keys": [signer.public_jwk]},
                                          extra=extra))

    async def token(self, signer: Signer, client_id: str) -> int:
        data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": _assertion(signer, client_id)}
        async with aiohttp.ClientSession() as session, session.post(
                str(self.public.make_url(TOKEN_PATH)), data=data) as response:
            return response.status

    async def post_reload(self) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.post(
                str(self.admin.make_url("/reload"))) as response:
            return response.status, await response.json()


@pytest.fixture
async def live(
    backend: Backend, aiohttp_server: ServerFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, gateway_server: GatewayStarter,
) -> Live:
    monkeypatch.setenv("CI_SECRET", "reload-test-secret")
    path = tmp_path / "gateway.yaml"
    signer = make_signer("ES256")
    path.write_text(gateway_yaml(backend.url, {"keys": [signer.public_jwk]}))
    gateway = create_gateway(load_settings(path), audit_stream=io.StringIO(), config_path=path)
    public = await gateway_server(gateway)
    admin = await aiohttp_server(gateway.admin)
    return Live(gateway, public, admin, path, backend)


async def test_reload_adds_a_client(live: Live) -> None:
    newcomer = make_signer("ES256", kid="new-key", slot=1)
    assert await live.token(newcomer, "newcomer") == 401
    live.write(_client_block("newcomer", newcomer))
    status, body = await live.post_reload()
    assert status == 200 and "newcomer" in body["clients"]
    assert await live.token(newcomer, "newcomer") == 200


async def test_invalid_file_is_refused_and_the_old_config_stays(live: Live) -> None:
    signer = make_signer("ES256")
    live.path.write_text(live.path.read_text() + "\nsurprise: 1\npolicy: {max_lifetime: 5}\n")
    status, body = await live.post_reload()
    assert status == 400 and body["status"] == "refused"
    paths = {problem["path"] for problem in body["problems"]}
    assert "surprise" in paths
    assert await live.token(signer, "ci-pipeline") == 200


async def test_removing_or_disabling_a_client_offboards_it_at_once(live: Live) -> None:
    partner = make_signer("ES256", kid="partner", slot=1)
    live.write(_client_block("partner", partner))
    await live.post_reload()
    assert await live.token(partner, "partner") == 200
    live.write(_client_block("partner", partner, "    enabled: false\n"))
    assert (await live.post_reload())[0] == 200
    assert await live.token(partner, "partner") == 401
    live.write("")
    assert (await live.post_reload())[0] == 200
    assert await live.token(partner, "partner") == 401
    assert "partner" not in live.gateway.runtime.clients


async def test_in_flight_requests_finish_on_the_old_configuration(live: Live) -> None:
    signer = make_signer("ES256")
    live.backend.delay = 0.5
    in_flight = asyncio.create_task(live.token(signer, "ci-pipeline"))
    await asyncio.sleep(0.2)  # authenticated, now waiting on the backend
    live.path.write_text(gateway_yaml(live.backend.url, {"keys": [make_signer(
        "ES256", kid="other", slot=2).public_jwk]}))
    assert (await live.post_reload())[0] == 200
    assert await in_flight == 200
    live.backend.delay = 0
    assert await live.token(signer, "ci-pipeline") == 401  # its key is gone now


async def test_reload_rereads_a_jwks_file(
    backend: Backend, aiohttp_server: ServerFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, gateway_server: GatewayStarter,
) -> None:
    monkeypatch.setenv("CI_SECRET", "reload-test-secret")
    old, new = make_signer("ES256", kid="old"), make_signer("ES256", kid="new", slot=1)
    keys = tmp_path / "partner.jwks.json"
    keys.write_text(json.dumps({"keys": [old.public_jwk]}))
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_yaml(backend.url, {"keys": [make_signer("ES256").public_jwk]},
                                 extra="\n  partner:\n    jwks_file: partner.jwks.json\n"
                                       "    backend_auth: {method: none}\n"))
    gateway = create_gateway(load_settings(path), audit_stream=io.StringIO(), config_path=path)
    live = Live(gateway, await gateway_server(gateway),
                await aiohttp_server(gateway.admin), path, backend)
    assert await live.token(old, "partner") == 200
    keys.write_text(json.dumps({"keys": [new.public_jwk]}))  # rotated on disk
    assert await live.token(new, "partner") == 401  # not before a reload
    assert (await live.post_reload())[0] == 200
    assert await live.token(new, "partner") == 200
    assert await live.token(old, "partner") == 401
