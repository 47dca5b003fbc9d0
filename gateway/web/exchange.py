"""One exchange's plumbing: request ids, bounded body reads, and the one error renderer."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import secrets

from aiohttp import web

from gateway.core.errors import (
    GatewayError,
    InvalidClient,
    MethodNotAllowed,
    UntrustedFraming,
)
from gateway.core.reasons import Reason

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def request_id_of(request: web.BaseRequest) -> str:
    """The caller's X-Request-Id when it is sane, else a new one."""
    given = request.headers.get("X-Request-Id")
    if given is not None and REQUEST_ID_PATTERN.fullmatch(given):
        return given
    return _REQUEST_IDS.new()


class _RequestIds:
    """New request ids: 12 random hex digits taken once per process, then a hex counter.

    24 characters, like the 12 random bytes they replace, without a getrandom call per
    request. Two processes share a prefix with probability 2**-48 per pair; a forked child
    takes its own. They tell requests apart in logs; they are no secret (a caller may
    choose its own).
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


_REQUEST_IDS = _RequestIds()
os.register_at_fork(after_in_child=_REQUEST_IDS.renew)


def error_response(error: GatewayError, *, request_id: str, basic_challenge: bool) -> web.Response:
    """The only place an error becomes a response: fixed public text, never the private reason."""
    headers = {**_NO_STORE, "X-Request-Id": request_id}
    if isinstance(error, InvalidClient) and basic_challenge:
        headers["WWW-Authenticate"] = 'Basic realm="pkjwt-gateway", charset="UTF-8"'
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = "POST"
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    body = json.dumps({"error": error.code, "error_description": error.description})
    return web.Response(status=error.status, body=body.encode(), headers=headers,
                        content_type="application/json")


async def read_body(request: web.BaseRequest, limit: int, deadline: float) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``deadline`` seconds; raises
    UntrustedFraming (body_too_large, incomplete_body, body_timeout)."""
    length = request.content_length
    if length is not None and length <= limit and request.content.is_eof():
        # The parser has delivered the whole body already (a small body usually comes in
        # the same packets as the headers): there is nothing to wait for, so no deadline to
        # arm. Bytes missing at the end of the stream are what readexactly would report.
        body = request.content.read_nowait(length) if length else b""
        if len(body) != length:
            raise UntrustedFraming(Reason.INCOMPLETE_BODY, "the client stopped sending")
        return body
    try:
        async with asyncio.timeout(deadline):
            return await _read_body(request, limit)
    except TimeoutError as exc:  # a client trickling its body holds a connection for free
        raise UntrustedFraming(Reason.BODY_TIMEOUT, f"not sent within {deadline:g}s") from exc


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise UntrustedFraming(Reason.BODY_TOO_LARGE, f"content-length {length}")
    if length is not None:
        # The parser delivers exactly Content-Length bytes: one read, no limit loop.
        try:
            return await request.content.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as exc:
            raise UntrustedFraming(Reason.INCOMPLETE_BODY, "the client stopped sending") from exc
    body = await request.content.read(limit + 1)
    while len(body) <= limit and not request.content.at_eof():
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise UntrustedFraming(Reason.BODY_TOO_LARGE, "body exceeds the limit")
    return body
