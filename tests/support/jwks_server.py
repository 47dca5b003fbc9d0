"""A key server on 127.0.0.1 whose answers a test changes while it runs, and what it was asked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.adapters.remote_keys import CachingKeySource
from gateway.config.settings import JwksFetchSettings

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Asked:
    path: str
    headers: CIMultiDict[str]
    at: float  # loop time


@dataclass
class JwksServer:
    """Serves ``{"keys": keys}`` at any path unless a test changes the answer."""

    server: TestServer | None = None
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None          # raw body instead of the keys
    delay: float = 0.0
    etag: str | None = None            # sent, and a matching If-None-Match gets a 304
    chunked: bool = False
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    asked: list[Asked] = field(default_factory=list)

    @property
    def fetches(self) -> int:
        return len(self.asked)

    def url(self, path: str = "/jwks", host: str = "127.0.0.1") -> str:
        assert self.server is not None
        return f"{self.server.scheme}://{host}:{self.server.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(Asked(request.path_qs, CIMultiDict(request.headers),
                                asyncio.get_running_loop().time()))
        if request.path in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[request.path]})
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = dict(self.headers)
        if self.etag is not None:
            headers["ETag"] = self.etag
            if request.headers.get("If-None-Match") == self.etag:
                return web.Response(status=304, headers=headers)
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        if not self.chunked:
            return web.Response(status=self.status, body=body, headers=headers)
        response = web.StreamResponse(status=self.status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for start in range(0, len(body), 4096):
                await response.write(body[start:start + 4096])
            await response.write_eof()
        except ConnectionError:  # the client gave up on an oversized body, as it should
            pass
        return response


async def start_jwks_server(aiohttp_server: ServerFactory, keys: list[dict[str, Any]],
                            **server_kwargs: Any) -> JwksServer:
    """A JwksServer serving `keys`; `server_kwargs` go to the test server (e.g. ssl=...)."""
    state = JwksServer(keys=list(keys))
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", state.handle)
    state.server = await aiohttp_server(app, **server_kwargs)
    return state


def fetch_settings(**overrides: Any) -> JwksFetchSettings:
    """Settings for loopback tests: http and private networks allowed, short timeout."""
    values: dict[str, Any] = {"timeout": 2.0, "min_ttl": 60.0, "max_ttl": 3600.0,
                              "max_stale": 600.0, "unknown_kid_refresh": 30.0,
                              "allow_http": True, "allow_private_networks": True}
    return JwksFetchSettings(**{**values, **overrides})


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Watched:
    """A fetching key source under test and everything its callbacks reported."""

    source: CachingKeySource
    results: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    async def settle(self) -> None:
        await self.source.start()
        await asyncio.wait_for(self.source.wait_settled(), 3)

    def kids(self) -> set[str]:
        current = self.source.current()
        return set(current.by_kid) if current is not None else set()
