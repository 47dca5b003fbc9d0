"""The public listener from a raw socket: framing, smuggling shapes, header abuse, timeouts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import ISSUER, TOKEN_PATH, Backend, Running
from tests.support.tokens import valid_claims

CLIENT = "ci-pipeline"
FORM = "application/x-www-form-urlencoded"
# Every wait is bounded: a test that hangs is a failed test, not a stuck run.
REPLY_TIMEOUT = 5.0
SLOW_BOUND = 10.0
SLOW_HEAD_BOUND = 15.0 + 3.0  # the default keep-alive timeout, plus scheduling slack


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes


def fresh_body(gw: Running, **extra: str) -> bytes:
    """A urlencoded token request carrying a valid, never used assertion."""
    assertion = gw.signer.sign(gw.signer.header(), valid_claims(CLIENT, ISSUER, now=time.time()))
    return urlencode(gw.form(assertion, **extra)).encode()


def head(request_line: str, *lines: str, host: str | None = "gw.test") -> bytes:
    """A request head exactly as given (no normalisation), ending with the blank line."""
    fields = ([f"Host: {host}"] if host is not None else []) + list(lines)
    return (request_line + "\r\n" + "".join(f"{line}\r\n" for line in fields) + "\r\n").encode(
        "latin-1")


def post(body: bytes, *lines: str, path: str = TOKEN_PATH) -> bytes:
    return head(f"POST {path} HTTP/1.1", f"Content-Type: {FORM}",
                f"Content-Length: {len(body)}", *lines) + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


async def read_reply(reader: asyncio.StreamReader, timeout: float = REPLY_TIMEOUT, *,
                     bodyless: bool = False) -> Reply | None:
    """One HTTP/1.1 reply (``bodyless`` for an answer to HEAD), or None when the server closed
    the connection without one."""
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = raw.decode("latin-1").split("\r\n")
            headers = CIMultiDict(line.split(": ", 1) for line in lines if line)
            length = int(headers.get("Content-Length", "0"))
            body = await reader.readexactly(length) if length and not bodyless else b""
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    return Reply(int(status_line.split(" ")[1]), headers, body)


async def connect(gw: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert gw.server.port is not None
    return await asyncio.open_connection("127.0.0.1", gw.server.port)


async def exchange(gw: Running, data: bytes, *, replies: int = 1,
                   bodyless: bool = False) -> list[Reply | None]:
    """Send ``data`` on a fresh connection and read up to ``replies`` replies."""
    reader, writer = await connect(gw)
    try:
        writer.write(data)
        await writer.drain()
        return [await read_reply(reader, bodyless=bodyless) for _ in range(replies)]
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it was still open."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def refused(reply: Reply | None, backend: Backend) -> None:
    """A 4xx (or a closed connection), never a 5xx, and nothing reached the backend."""
    if reply is not None:
        assert 400 <= reply.status < 500, (reply.status, reply.body)
    assert backend.seen == [], [seen.path_qs for seen in backend.seen]


# Hidden on a passthrough path: if any parser ever took it for a request, the backend sees it.
SMUGGLED = b"GET /.well-known/openid-configuration?smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def smuggling_shapes(body: bytes) -> dict[str, bytes]:
    """Requests whose length two parsers could read differently; a hidden request follows."""
    as_chunks = chunked(body) + SMUGGLED
    post_head = f"POST {TOKEN_PATH} HTTP/1.1"
    return {
        "content-length and chunked": head(
            post_head, f"Content-Type: {FORM}", f"Content-Length: {len(body)}",
            "Transfer-Encoding: chunked") + as_chunks,
        "chunked then content-length": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked",
            f"Content-Length: {len(as_chunks)}") + as_chunks,
        "two different content-lengths": head(
            post_head, f"Content-Type: {FORM}", f"Content-Length: {len(body)}",
            f"Content-Length: {len(body) + len(SMUGGLED)}") + body + SMUGGLED,
        "content-length list": head(
            post_head, f"Content-Type: {FORM}",
            f"Content-Length: {len(body)}, {len(body) + len(SMUGGLED)}") + body + SMUGGLED,
        "chunked, identity": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked, identity",
            f"Content-Length: {len(body)}") + as_chunks,
        "xchunked": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: xchunked",
            f"Content-Length: {len(body)}") + as_chunks,
        "xchunked alone": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: xchunked") + as_chunks,
        "space before colon": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding : chunked",
            f"Content-Length: {len(body)}") + as_chunks,
        "chunked twice": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked") + as_chunks,
        "gzip, chunked": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: gzip, chunked") + as_chunks,
        "invalid chunk size": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked")
        + b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        "overflowing chunk size": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked")
        + b"1" + b"0" * 20 + b"\r\n" + body + b"\r\n0\r\n\r\n",
        "chunk shorter than announced": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked")
        + b"%x\r\n" % (len(body) + 40) + body + b"\r\n0\r\n\r\n" + SMUGGLED,
        "chunk-size with bare LF": head(
            post_head, f"Content-Type: {FORM}", "Transfer-Encoding: chunked")
        + b"%x\n" % len(body) + body + b"\n0\n\n" + SMUGGLED,
    }


# 'gzip, chunked' among them: the parser would ignore the gzip coding, and an intermediary
# that applies it would see another body than the one the gateway authenticated.
SMUGGLING = list(smuggling_shapes(b"x"))


@pytest.mark.parametrize("shape", SMUGGLING)
async def test_ambiguous_framing_is_refused(gw: Running, backend: Backend, shape: str) -> None:
    data = smuggling_shapes(fresh_body(gw))[shape]
    # The second read gives a hidden request, should one ever be parsed, time to arrive.
    first, _ = await exchange(gw, data, replies=2)
    refused(first, backend)


@pytest.mark.parametrize("path", [TOKEN_PATH, "/.well-known/openid-configuration"])
async def test_a_broken_chunked_body_is_a_client_error(
    gw: Running, backend: Backend, path: str
) -> None:
    """The head is valid, so the handler is already running when the body turns out broken."""
    data = head(f"POST {path} HTTP/1.1", f"Content-Type: {FORM}",
                "Transfer-Encoding: chunked") + b"5\r\nshort\r\nzz\r\n"
    [reply] = await exchange(gw, data)
    refused(reply, backend)


def header_abuse(body: bytes) -> dict[str, bytes]:
    return {
        "obs-fold continuation": post(body, "X-Note: first", " folded-on"),
        "first header line folded": head(f"POST {TOKEN_PATH} HTTP/1.1", " X-Folded: yes",
                                         f"Content-Type: {FORM}",
                                         f"Content-Length: {len(body)}") + body,
        "folded content-length": post(body, "X-Note: a", " Content-Length: 0"),
        "NUL in a value": post(body, "X-Note: a\x00b"),
        "bare CR in a value": post(body, "X-Note: a\rInjected: b"),
        "NUL in a name": post(body, "X-No\x00te: a"),
        "space in a name": post(body, "X Note: a"),
        "empty name": post(body, ": a"),
        "HTTP/1.1 without Host": head(f"POST {TOKEN_PATH} HTTP/1.1", f"Content-Type: {FORM}",
                                      f"Content-Length: {len(body)}", host=None) + body,
        "two Host headers": post(body, "Host: evil.test"),
        "control character in the target": head(f"POST {TOKEN_PATH}\x01 HTTP/1.1",
                                                f"Content-Type: {FORM}",
                                                f"Content-Length: {len(body)}") + body,
        "unknown HTTP version": head(f"POST {TOKEN_PATH} HTTP/1.7", f"Content-Type: {FORM}",
                                     f"Content-Length: {len(body)}") + body,
        "HTTP/2 preface as HTTP/1": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    }


ABUSE = list(header_abuse(b"x"))


@pytest.mark.parametrize("case", ABUSE)
async def test_malformed_heads_are_refused(gw: Running, backend: Backend, case: str) -> None:
    [reply] = await exchange(gw, header_abuse(fresh_body(gw))[case])
    refused(reply, backend)


async def test_bare_lf_line_ends_do_not_hide_a_header(gw: Running, backend: Backend) -> None:
    """A bare LF either ends the line for both parsers or the request is refused."""
    data = post(fresh_body(gw), "X-Note: a\nX-Hidden: b")
    [reply] = await exchange(gw, data)
    assert reply is not None
    if reply.status == 200:
        [seen] = backend.seen
        assert seen.headers.get("X-Note") == "a" and seen.headers.get("X-Hidden") == "b"
    else:
        refused(reply, backend)


async def test_http10_without_host_is_served_on_the_configured_path(
    gw: Running, backend: Backend
) -> None:
    body = fresh_body(gw)
    data = head(f"POST {TOKEN_PATH} HTTP/1.0", f"Content-Type: {FORM}",
                f"Content-Length: {len(body)}", host=None) + body
    [reply] = await exchange(gw, data)
    assert reply is not None and reply.status == 200, reply
    [seen] = backend.seen
    assert seen.path_qs == TOKEN_PATH
    # Without a Host there is no host to pass on (never the listener's own address).
    assert "X-Forwarded-Host" not in seen.headers


@pytest.mark.parametrize("where", ["request line", "header"])
async def test_over_long_heads_are_refused(gw: Running, backend: Backend, where: str) -> None:
    body = fresh_body(gw)
    long = "a" * 9000
    data = (post(body, path=f"{TOKEN_PATH}?pad={long}") if where == "request line"
            else post(body, f"X-Pad: {long}"))
    [reply] = await exchange(gw, data)
    refused(reply, backend)


async def test_many_headers_are_refused(gw: Running, backend: Backend) -> None:
    data = post(fresh_body(gw), *(f"X-H{i}: v" for i in range(200)))
    [reply] = await exchange(gw, data)
    refused(reply, backend)


async def test_pipelined_replay_is_answered_once(gw: Running, backend: Backend) -> None:
    body = fresh_body(gw)
    first, second = await exchange(gw, post(body) + post(body), replies=2)
    assert first is not None and second is not None
    assert (first.status, second.status) == (200, 401), (first.body, second.body)
    assert len(backend.seen) == 1


async def test_pipelined_requests_are_answered_in_order(gw: Running, backend: Backend) -> None:
    data = post(fresh_body(gw, scope="one")) + post(fresh_body(gw, scope="two"))
    first, second = await exchange(gw, data, replies=2)
    assert first is not None and second is not None
    assert (first.status, second.status) == (200, 200)
    assert [seen.form()[-1] for seen in backend.seen] == [("scope", "one"), ("scope", "two")]
    assert b"at-1" in first.body and b"at-2" in second.body


@pytest.mark.slow
async def test_a_slow_head_is_cut_off(gw: Running, backend: Backend) -> None:
    """One header byte every 0.2 s: no head deadline exists, but the keep-alive timer armed at
    connect (limits.keepalive_timeout, 15 s) is not re-armed by head bytes and closes it."""
    reader, writer = await connect(gw)
    started = time.monotonic()
    closed_after: float | None = None
    try:
        writer.write(f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: gw.test\r\n".encode())
        trickle = b"X-Slow: " + b"a" * 1000
        for byte in trickle:
            if time.monotonic() - started > SLOW_HEAD_BOUND:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            closed_after = await closed_within(reader, 0.2)
            if closed_after is not None:
                break
    except ConnectionError:
        closed_after = time.monotonic() - started
    finally:
        writer.close()
    assert backend.seen == []
    assert closed_after is not None, "still open after a trickled head"
    assert time.monotonic() - started < SLOW_HEAD_BOUND


def keepalive_timeout(gw: Running) -> float:
    server = gw.server.runner.server  # type: ignore[union-attr]
    assert isinstance(server, web.Server)
    [handler] = server.connections
    return float(handler.keepalive_timeout)


async def test_an_idle_keepalive_connection_is_closed_within_75s(
    gw: Running, backend: Backend
) -> None:
    reader, writer = await connect(gw)
    try:
        writer.write(head("GET /.well-known/openid-configuration HTTP/1.1"))
        await writer.drain()
        reply = await read_reply(reader)
        assert reply is not None and reply.status == 200
        assert len(backend.seen) == 1
        # Still open a moment later; the timeout (limits.keepalive_timeout) is read from the
        # live handler rather than waited for.
        assert await closed_within(reader, 0.3) is None
        assert keepalive_timeout(gw) <= 75
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_stalled_body_is_cut_off(gw: Running, backend: Backend) -> None:
    """Half a body, then silence: limits.body_timeout (10 s by default) answers 400."""
    reader, writer = await connect(gw)
    body = fresh_body(gw)
    started = time.monotonic()
    try:
        writer.write(post(body)[: -len(body) // 2])
        await writer.drain()
        reply = await read_reply(reader, timeout=SLOW_BOUND + 3)
    finally:
        writer.close()
    assert reply is not None and reply.status == 400, reply
    assert time.monotonic() - started < SLOW_BOUND + 3
    assert backend.seen == []
