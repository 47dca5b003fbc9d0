"""Shared fixtures: a recording backend, and the gateway in front of it over real sockets."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from multidict import CIMultiDict

from gateway.config.loading import parse_settings
from gateway.web.app import Gateway, create_gateway
from tests.support.redis_servers import Server, Servers
from tests.support.tokens import Signer, make_signer

ISSUER = "https://idp.example.test"
TOKEN_PATH = "/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BACKEND_SECRET = "backend-secret-for-tests-only"  # test-only fixture value


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes

    def form(self) -> list[tuple[str, str]]:
        from urllib.parse import parse_qsl

        return parse_qsl(self.body.decode(), keep_blank_values=True)


@dataclass
class Backend:
    """A legacy IdP stand-in on 127.0.0.1 that records everything it is sent."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)
    delay: float = 0.0
    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def backend(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Backend:
    state: dict[str, Backend] = {}

    async def record(request: web.Request) -> web.StreamResponse:
        me = state["backend"]
        me.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers),
                            await request.read()))
        if me.delay:
            await asyncio.sleep(me.delay)
        body = me.body if me.body is not None else json.dumps(
            {"access_token": "at-" + str(len(me.seen)), "token_type": "Bearer",
             "expires_in": 300}).encode()
        return web.Response(status=me.status, body=body, content_type="application/json",
                            headers=me.extra_headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    state["backend"] = Backend(server)
    return state["backend"]


@dataclass
class Running:
    """The gateway under test, reachable at ``url``; its audit lines and metrics are readable."""

    gateway: Gateway
    server: TestServer
    audit: io.StringIO
    signer: Signer
    client_id: str

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def audit_lines(self) -> list[dict[str, Any]]:
        """The decision lines (key-change events aside: see audit_events)."""
        return [line for line in self._audit() if "event" not in line]

    def audit_events(self) -> list[dict[str, Any]]:
        return [line for line in self._audit() if "event" in line]

    def _audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines()]

    def metric(self, name: str, **labels: str) -> float:
        self.gateway.metrics.flush()  # as a scrape of /metrics does
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def form(self, assertion: str, **extra: str) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion, **extra}

    async def post(
        self, data: dict[str, str] | bytes | str, *, path: str = TOKEN_PATH,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, CIMultiDict[str], Any]:
        async with aiohttp.ClientSession() as session, session.post(
                self.url + path, data=data, headers=headers) as response:
            raw = await response.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            return response.status, CIMultiDict(response.headers), body


# Most tests send many failures from 127.0.0.1 on purpose: the failure brakes stay out of
# their way unless a test sets its own limits.
ROOMY_LIMITS = ("limits: {failures_per_client: {rate: 1000, burst: 100000}, "
                "failures_per_address: {rate: 1000, burst: 100000}}")


def gateway_yaml(backend_url: str, jwks: dict[str, Any], *, policy: str = "",
                 client: str = "", extra: str = "", client_id: str = "ci-pipeline",
                 limits: str = ROOMY_LIMITS, backend: str = "") -> str:
    return f"""{limits}
issuer: {ISSUER}
backend: {{url: "{backend_url}", timeout: 1s{backend}}}
endpoints: [{TOKEN_PATH}, /oauth2/introspect]
passthrough: [/.well-known/openid-configuration]
policy: {{algorithms: [PS256, ES256, EdDSA, RS256], max_lifetime: 300s, clock_skew: 15s{policy}}}
clients:
  {client_id}:
    jwks: {json.dumps(jwks)}
    backend_auth: {{method: client_secret_basic, secret: !env CI_SECRET}}
    {client}
{extra}
"""


GatewayFactory = Callable[..., Awaitable[Running]]


class GatewayServer(BaseTestServer):
    """The gateway's public listener on a loopback port, as aiohttp's TestServer serves apps."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        self.gateway = gateway
        super().__init__(**kwargs)

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return self.gateway.public_runner(**kwargs)


GatewayStarter = Callable[[Gateway], Awaitable[GatewayServer]]


@pytest.fixture
async def gateway_server() -> AsyncIterator[GatewayStarter]:
    """Start gateways' public listeners (started and stopped with their gateway)."""
    servers: list[GatewayServer] = []

    async def start(gateway: Gateway) -> GatewayServer:
        server = GatewayServer(gateway)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def start_gateway(
    backend: Backend, aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path,
    gateway_server: GatewayStarter,
) -> GatewayFactory:
    """Start a gateway for one ES256 client (or the signer given) with YAML tweaks."""

    async def start(
        signer: Signer | None = None, backend_url: str | None = None, **yaml: Any
    ) -> Running:
        signer = signer or make_signer("ES256")
        text = gateway_yaml(backend_url or backend.url, {"keys": [signer.public_jwk]}, **yaml)
        settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": BACKEND_SECRET})
        audit = io.StringIO()
        gateway = create_gateway(settings, audit_stream=audit)
        server = await gateway_server(gateway)
        return Running(gateway, server, audit, signer, yaml.get("client_id", "ci-pipeline"))

    return start


@pytest.fixture
async def gw(start_gateway: GatewayFactory) -> Running:
    return await start_gateway()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """redis-server processes of this test's own, all killed (and checked) at teardown."""
    (tmp_path / "redis").mkdir()
    owned = Servers(tmp_path / "redis")
    yield owned
    assert owned.stop_all() == [], "redis-server processes left behind"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """A 3-master Redis Cluster shared by one test module."""
    owned = Servers(tmp_path_factory.mktemp("cluster"))
    try:
        yield owned.start_cluster(3)
    finally:
        assert owned.stop_all() == [], "redis-server processes left behind"
