"""A platform's discovery and key endpoints on https://127.0.0.1, names that reach it, and
issuer key sources under watch."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.adapters.issuer_keys import IssuerKeySource, build_issuer_source
from gateway.adapters.jwks_fetch import FETCH_RESULTS
from gateway.config.federation import FederationIssuerSettings
from gateway.config.settings import JwksFetchSettings
from tests.support.jwks_server import Asked, ServerFactory, Watched, fetch_settings

# Names the test resolver sends to loopback; the server's certificate covers them.
ISSUER_HOST = "issuer.test"
KEYS_HOST = "keys.test"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# The rules of production: https only, no private addresses unless the issuer opts in.
STRICT_FETCH = fetch_settings(allow_http=False, allow_private_networks=False)


@dataclass(frozen=True)
class Tls:
    """A test CA and the server context of a certificate it issued for the test names."""

    ca: trustme.CA
    server_context: ssl.SSLContext


def make_tls() -> Tls:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(ISSUER_HOST, KEYS_HOST, "localhost", "127.0.0.1").configure_cert(context)
    return Tls(ca, context)


@dataclass
class Answer:
    """What one path answers: `body` is sent as JSON unless it is bytes already."""

    body: Any
    status: int = 200
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None  # sent, and a matching If-None-Match gets a 304


@dataclass
class Platform:
    """Answers a GET by its path from `answers` (404 otherwise); records what it was asked."""

    server: TestServer | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    asked: list[Asked] = field(default_factory=list)

    def url(self, path: str = "", host: str = ISSUER_HOST) -> str:
        assert self.server is not None
        return f"https://{host}:{self.server.port}{path}"

    def paths(self) -> list[str]:
        return [asked.path for asked in self.asked]

    def serve_discovery(self, issuer: str | None, jwks_uri: object, *,
                        at: str = DISCOVERY_PATH) -> Answer:
        """Publish a discovery document (None leaves a member out); returns its answer."""
        document = {"issuer": issuer, "jwks_uri": jwks_uri}
        self.answers[at] = Answer({k: v for k, v in document.items() if v is not None})
        return self.answers[at]

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append(Asked(request.path_qs, CIMultiDict(request.headers),
                                asyncio.get_running_loop().time()))
        answer = self.answers.get(request.path)
        if answer is None:
            return web.Response(status=404)
        headers = dict(answer.headers)
        if answer.etag is not None:
            headers["ETag"] = answer.etag
            if request.headers.get("If-None-Match") == answer.etag:
                return web.Response(status=304, headers=headers)
        if answer.content_type is not None:
            headers["Content-Type"] = answer.content_type
        body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        return web.Response(status=answer.status, body=body, headers=headers)


async def start_platform(aiohttp_server: ServerFactory, tls: Tls) -> Platform:
    platform = Platform()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", platform.handle)
    platform.server = await aiohttp_server(app, ssl=tls.server_context)
    return platform


class LoopbackResolver(AbstractResolver):
    """Every name resolves to 127.0.0.1, as an in-cluster or private name would to its address."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.names.append(host)
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def watch(
    name: str, issuer: FederationIssuerSettings, fetch: JwksFetchSettings = STRICT_FETCH, *,
    resolver: AbstractResolver | None = None, clock: Callable[[], float] = time.time,
) -> Watched:
    """Build the remote source of `issuer` and record what it reports; the caller closes it."""
    results: list[str] = []
    counts: list[int] = []

    def on_fetch(reported: str, result: str) -> None:
        assert reported == name and result in FETCH_RESULTS
        results.append(result)

    def on_keys(reported: str, count: int) -> None:
        assert reported == name
        counts.append(count)

    source = build_issuer_source(name, issuer, fetch, resolver=resolver, on_fetch=on_fetch,
                                 on_keys=on_keys, clock=clock)
    assert isinstance(source, IssuerKeySource)
    return Watched(source, results, counts)
