"""The backend side: rewrite an approved request with the backend's credential, forward it."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import BadGateway, GatewayTimeout

BackendMethod = Literal["client_secret_basic", "client_secret_post", "none"]

# RFC 9110 §7.6.1 hop-by-hop fields, plus fields the gateway recomputes itself.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "transfer-encoding", "upgrade"}
)
_RECOMPUTED = frozenset({"host", "content-length"})
_REPLY_SKIP = HOP_BY_HOP | {"content-length"}
# Replies up to this size are read whole and answered in one write; larger ones are streamed.
BUFFERED_REPLY_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 64 * 1024


def _form_urlencode(value: str) -> str:
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before they go into Basic.
    return quote(value, safe="*-._~").replace("%20", "+")


@dataclass(frozen=True, slots=True)
class BackendCredential:
    """How the gateway authenticates a client to the backend; built once per client at load."""

    client_id: str
    method: BackendMethod
    secret: str | None = None

    # The Authorization header value for client_secret_basic (else None), built once.
    authorization: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.method != "none" and not self.secret:
            raise ValueError(f"{self.method} needs a secret")
        if self.method == "client_secret_basic" and self.secret is not None:
            raw = f"{_form_urlencode(self.client_id)}:{_form_urlencode(self.secret)}"
            basic = "Basic " + base64.b64encode(raw.encode()).decode("ascii")
            object.__setattr__(self, "authorization", basic)

    def __repr__(self) -> str:
        return f"BackendCredential(client_id={self.client_id!r}, method={self.method!r})"

    def body(self, params: Iterable[tuple[str, str]]) -> bytes:
        """A fresh urlencoded body: the client's parameters plus exactly one credential."""
        items = list(params)
        if self.method == "client_secret_post":
            items += [("client_id", self.client_id), ("client_secret", self.secret or "")]
        elif self.method == "none":
            items.append(("client_id", self.client_id))
        return urlencode(items).encode("ascii")


def _connection_named(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def skipped_request_headers(extra: Iterable[str] = ()) -> frozenset[str]:
    """Lower-cased names never copied from the inbound request (built once per route kind)."""
    return HOP_BY_HOP | _RECOMPUTED | {name.lower() for name in extra}


def forwarded_request_headers(
    request: web.Request, *, skip: frozenset[str], request_id: str
) -> CIMultiDict[str]:
    """The inbound headers minus ``skip`` and Connection-named ones, plus X-Forwarded-*."""
    named = _connection_named(request.headers)
    if named:
        skip = skip | named
    headers: CIMultiDict[str] = CIMultiDict(
        [(name, value) for name, value in request.headers.items() if name.lower() not in skip]
    )
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    if request.host:
        headers["X-Forwarded-Host"] = request.host
    headers["X-Request-Id"] = request_id
    return headers


def _reply_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    skip = _REPLY_SKIP | _connection_named(upstream.headers)
    return CIMultiDict(
        [(name, value) for name, value in upstream.headers.items() if name.lower() not in skip]
    )


class StreamAborted(BadGateway):
    """The backend failed after the answer had started: the client connection is cut."""


class Upstream:
    """Forwards requests to the backend over one shared keep-alive ClientSession."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def forward(
        self,
        request: web.Request,
        *,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> tuple[web.StreamResponse, int]:
        """Send one request and relay the answer; returns the response and the backend status.

        Raises BadGateway when the backend refuses or drops the connection before answering,
        GatewayTimeout when it does not answer within the timeout.
        """
        try:
            async with self._session.request(
                request.method,
                self._base + path_qs,
                headers=headers,
                data=body if body or request.method not in ("GET", "HEAD") else None,
                timeout=self._timeout,
                allow_redirects=False,
            ) as upstream:
                relayed = await self._relay(request, upstream, headers.get("X-Request-Id"))
                return relayed, upstream.status
        except StreamAborted:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise GatewayTimeout("backend_timeout", type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise BadGateway("backend_unreachable", type(exc).__name__) from exc

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, request_id: str | None
    ) -> web.StreamResponse:
        headers = _reply_headers(upstream)
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        length = upstream.content_length
        if length is not None and length <= BUFFERED_REPLY_BYTES:
            body = await upstream.read()
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers,
                                body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(STREAM_CHUNK_BYTES):
                await response.write(chunk)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            # The status line is already sent: the only honest signal left is a cut connection.
            raise StreamAborted("backend_stream_aborted", type(exc).__name__) from exc
        return response


# Node's http server (many IdPs) closes idle connections after 5 s, and a POST is never retried
# on a stale connection: keep our idle time below the backend's.
DEFAULT_BACKEND_KEEPALIVE = 4.0


def new_backend_session(
    limit: int = 256, keepalive: float = DEFAULT_BACKEND_KEEPALIVE
) -> aiohttp.ClientSession:
    """The one ClientSession for backend traffic: keep-alive, no automatic headers or decoding."""
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=keepalive)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
