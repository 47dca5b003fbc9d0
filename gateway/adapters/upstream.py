"""The backend side: forward an approved request over the pool and relay the answer."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import perf_counter

from aiohttp import web
from multidict import CIMultiDict

from gateway.adapters.backend_client import (
    BackendClient,
    BackendReply,
    BackendTimeout,
    BackendUnavailable,
    UnsendableRequest,
)
from gateway.adapters.metrics import GatewayMetrics, status_class
from gateway.config.settings import BackendSettings
from gateway.core.client_address import ClientOrigin
from gateway.core.errors import BadGateway, GatewayError, GatewayTimeout, InvalidRequest
from gateway.core.reasons import Reason

# RFC 9110 §7.6.1 hop-by-hop fields, plus fields the gateway recomputes itself.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "transfer-encoding", "upgrade"}
)
# What a client says about where a request came from is never passed on: the gateway sets
# X-Forwarded-For, -Proto, -Host and X-Real-IP itself (from the peer, or what trusted proxies
# vouch for), and the rest of the family would let a client choose how the backend builds its
# URLs. Forwarded (RFC 7239) is dropped and not set: the backend reads one dialect.
FORWARDING_FIELDS = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip",
     "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server", "x-forwarded-ssl",
     "x-forwarded-scheme", "x-forwarded-protocol"}
)
# Expect: 100-continue was answered by our own server already; the backend gets the whole body.
_RECOMPUTED = frozenset({"host", "content-length", "expect"}) | FORWARDING_FIELDS
_REPLY_SKIP = HOP_BY_HOP | {"content-length"}
# What each failure the backend client reports becomes, most specific first (a BackendTimeout
# is a BackendUnavailable). Anything else it raises is a bug and surfaces as a 500.
BACKEND_FAILURES: tuple[tuple[type[Exception], type[GatewayError], Reason], ...] = (
    (BackendTimeout, GatewayTimeout, Reason.BACKEND_TIMEOUT),
    (BackendUnavailable, BadGateway, Reason.BACKEND_UNREACHABLE),
    (UnsendableRequest, InvalidRequest, Reason.UNFORWARDABLE),
)
_CAUGHT = tuple(kind for kind, _, _ in BACKEND_FAILURES)
# The backend failing, not the request: logged here at warning level, once per request.
BACKEND_OUTAGES = frozenset({Reason.BACKEND_UNREACHABLE, Reason.BACKEND_TIMEOUT})
log = logging.getLogger("gateway.backend")


def gateway_error_for(exc: BaseException) -> GatewayError | None:
    """The answer for a failure the backend client reported; None for any other exception."""
    for kind, error, reason in BACKEND_FAILURES:
        if isinstance(exc, kind):
            return error(reason, str(exc)[:120])  # may quote a client's header name
    return None


def _connection_named(values: Iterable[str]) -> frozenset[str]:
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def skipped_request_headers(extra: Iterable[str] = ()) -> frozenset[str]:
    """Lower-cased names never copied from the inbound request (built once per route kind)."""
    return HOP_BY_HOP | _RECOMPUTED | {name.lower() for name in extra}


def forwarded_request_headers(
    request: web.BaseRequest, *, skip: frozenset[str], request_id: str, origin: ClientOrigin
) -> list[tuple[str, str]]:
    """The inbound headers minus ``skip``, Connection-named ones and every forwarding field,
    plus the gateway's own forwarding fields for ``origin``."""
    inbound = request.headers
    connection = inbound.getall("Connection", ())
    if connection:
        skip = skip | _connection_named(connection)
    headers = [(name, value) for name, value in inbound.items() if name.lower() not in skip]
    if origin.chain:
        headers.append(("X-Forwarded-For", origin.chain))
    headers.append(("X-Forwarded-Proto", origin.scheme))
    host = inbound.get("Host")
    if host:  # never the listener's own address, which request.host falls back to
        headers.append(("X-Forwarded-Host", host))
    if origin.address:
        headers.append(("X-Real-IP", origin.address))
    headers.append(("X-Request-Id", request_id))
    return headers


def reply_headers(reply: BackendReply, request_id: str) -> CIMultiDict[str]:
    """The backend's headers for the client: hop-by-hop, Connection-named and Content-Length
    dropped (the gateway frames its own answer), X-Request-Id set."""
    skip = _REPLY_SKIP
    connection = [value for name, value in reply.headers if name.lower() == "connection"]
    if connection:
        skip = skip | _connection_named(connection)
    headers = CIMultiDict([(n, v) for n, v in reply.headers if n.lower() not in skip])
    headers["X-Request-Id"] = request_id
    return headers


class Upstream:
    """Forwards requests to the backend over one keep-alive connection pool.

    Replies are relayed whole, up to the client's reply limit: token, introspection and
    discovery answers are small, and a bounded buffer keeps a misbehaving backend from
    holding unbounded memory or a client connection open.
    """

    def __init__(self, client: BackendClient, metrics: GatewayMetrics | None = None) -> None:
        self._client = client
        self._metrics = metrics

    async def forward(
        self, method: str, endpoint: str, path_qs: str, headers: list[tuple[str, str]],
        body: bytes, *, request_id: str,
    ) -> tuple[web.Response, int]:
        """Send one request on the path as matched (the raw query string kept as it came),
        count it under ``endpoint``, and build the relayed answer with the backend status.

        Raises as ``exchange`` does.
        """
        reply = await self.exchange(method, endpoint, path_qs, headers, body)
        response = web.Response(status=reply.status, reason=reply.reason or None,
                                headers=reply_headers(reply, request_id), body=reply.body)
        return response, reply.status

    async def exchange(
        self, method: str, endpoint: str, path_qs: str, headers: list[tuple[str, str]],
        body: bytes,
    ) -> BackendReply:
        """Send one request and return the whole reply, counted under ``endpoint``.

        Raises BadGateway when the backend refuses, drops the connection or answers with
        something that is not HTTP; GatewayTimeout when it does not answer in time;
        InvalidRequest when the request cannot be sent safely (see gateway_error_for).
        """
        metrics = self._metrics
        started = perf_counter()
        try:
            reply = await self._client.request(method, path_qs, headers, body)
        except _CAUGHT as exc:
            if metrics is not None:
                metrics.observe_backend(endpoint, "error", perf_counter() - started)
            error = gateway_error_for(exc)
            if error is None:  # not reached: _CAUGHT is the table's own first column
                raise
            if error.reason in BACKEND_OUTAGES:
                log.warning("backend failed: %s on %s %s (%s)", error.reason, method, endpoint,
                            error.detail)
            raise error from exc
        if metrics is not None:
            metrics.observe_backend(endpoint, status_class(reply.status),
                                    perf_counter() - started)
        return reply

    async def close(self) -> None:
        await self._client.close()


def new_upstream(settings: BackendSettings, metrics: GatewayMetrics | None = None) -> Upstream:
    """The backend connection pool for the settings (created inside the running loop)."""
    return Upstream(BackendClient(settings.url, timeout=settings.timeout,
                                  keepalive=settings.keepalive), metrics)
