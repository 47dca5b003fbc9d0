"""The backend client over real loopback sockets: framing, keep-alive, limits and failures."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.adapters.backend_client import (
    BackendClient,
    BackendReply,
    BackendTimeout,
    BackendUnavailable,
    UnsendableRequest,
)

ServerFactory = Callable[..., Awaitable[TestServer]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FORM = b"grant_type=client_credentials&scope=a+b"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Recorder:
    """An aiohttp backend that records each request's raw headers and its connection."""

    server: TestServer
    raw_headers: list[list[tuple[str, str]]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def recorder(aiohttp_server: ServerFactory) -> Recorder:
    state: list[Recorder] = []

    async def record(request: web.Request) -> web.StreamResponse:
        me = state[0]
        me.raw_headers.append([(n.decode(), v.decode()) for n, v in request.raw_headers])
        assert request.transport is not None
        me.peers.append(request.transport.get_extra_info("peername"))
        me.bodies.append(await request.read())
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        if request.path == "/empty":
            return web.Response(status=204)
        response = web.json_response({"access_token": "at"}, headers={"X-Seen": request.method})
        if request.path == "/close":
            response.force_close()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    state.append(Recorder(await aiohttp_server(app)))
    return state[0]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A scripted backend for replies aiohttp will not produce; yields its url and connections."""
    conns: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", conns
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)  # let the handlers see the client's close and finish


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.partition(b":")[2])
    return head, await reader.readexactly(length)


def scripted(*replies: bytes, then_close: bool = False) -> Handler:
    """Answer each request on a connection with the next reply; optionally hang up after."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            await read_request(reader)
            writer.write(reply)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client hangs up

    return handler


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., BackendClient]]:
    made: list[BackendClient] = []

    def make(url: str, **options: object) -> BackendClient:
        options.setdefault("timeout", 2.0)
        made.append(BackendClient(url, **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def test_post_round_trip_sends_exactly_the_given_headers(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    headers = [("Authorization", "Basic YTpi"),
               ("content-type", "application/x-www-form-urlencoded"),
               ("X-Request-Id", "r-1"), ("X-Dup", "1"), ("X-Dup", "2")]
    reply = await client.request("POST", "/oauth2/token?x=1", headers, FORM)
    port = recorder.server.port
    assert recorder.raw_headers == [[("Host", f"127.0.0.1:{port}"), *headers,
                                     ("Content-Length", str(len(FORM)))]]
    assert recorder.bodies == [FORM]
    assert (reply.status, reply.reason, reply.body) == (200, "OK", b'{"access_token": "at"}')
    assert ("X-Seen", "POST") in reply.headers


async def test_empty_post_has_content_length_and_get_has_none(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    await client.request("POST", "/", [], b"")
    await client.request("GET", "/", [], b"")
    assert [dict(h).get("Content-Length") for h in recorder.raw_headers] == ["0", None]


async def test_sequential_requests_reuse_one_connection(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    for _ in range(5):
        assert (await client.request("POST", "/t", [], FORM)).status == 200
    assert len(set(recorder.peers)) == 1


async def test_idle_connection_past_keepalive_is_not_reused(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url, keepalive=0.2)
    await client.request("POST", "/t", [], FORM)
    await asyncio.sleep(0.3)
    await client.request("POST", "/t", [], FORM)
    assert len(set(recorder.peers)) == 2


async def test_backend_closing_an_idle_connection_means_a_fresh_one(
    client_for: Callable[..., BackendClient]
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(scripted(ok, then_close=True)) as (url, conns):
        client = client_for(url)
        await client.request("POST", "/t", [], FORM)
        await asyncio.sleep(0.05)  # the backend's idle close reaches us
        assert (await client.request("POST", "/t", [], FORM)).body == b"ok"
        assert len(conns) == 2


async def test_connection_close_reply_is_not_reused(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    reply = await client.request("POST", "/close", [], FORM)
    assert ("Connection", "close") in reply.headers
    await client.request("POST", "/t", [], FORM)
    assert len(set(recorder.peers)) == 2


async def test_chunked_reply_is_dechunked_and_the_connection_kept(
    client_for: Callable[..., BackendClient]
) -> None:
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
               b"5\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(scripted(chunked, ok)) as (url, conns):
        client = client_for(url)
        reply = await client.request("POST", "/t", [], FORM)
        assert reply == BackendReply(201, "Created",
                                     [("Transfer-Encoding", "chunked"), ("X-A", "1")],
                                     b"hello, world")
        assert (await client.request("POST", "/t", [], FORM)).body == b"ok"
        assert len(conns) == 1


async def test_close_delimited_reply_is_read_to_the_end(
    client_for: Callable[..., BackendClient]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"second")

    async with raw_server(handler) as (url, conns):
        client = client_for(url)
        reply = await client.request("GET", "/", [], b"")
        assert (reply.status, reply.body) == (200, b"first second")
        await client.request("GET", "/", [], b"")
        assert len(conns) == 2


async def test_head_reply_has_no_body_and_keeps_the_connection(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    reply = await client.request("HEAD", "/t", [], b"")
    assert reply.status == 200 and reply.body == b""
    assert int(dict(reply.headers)["Content-Length"]) > 0
    assert (await client.request("POST", "/t", [], FORM)).body == b'{"access_token": "at"}'
    assert len(set(recorder.peers)) == 1


async def test_204_has_no_body_and_keeps_the_connection(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    reply = await client.request("POST", "/empty", [], FORM)
    assert (reply.status, reply.body) == (204, b"")
    assert (await client.request("POST", "/t", [], FORM)).status == 200
    assert len(set(recorder.peers)) == 1


async def test_interim_100_continue_is_skipped(client_for: Callable[..., BackendClient]) -> None:
    reply = (b"HTTP/1.1 100 Continue\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Final: yes\r\n\r\ndone")
    async with raw_server(scripted(reply)) as (url, _):
        client = client_for(url)
        got = await client.request("POST", "/t", [], FORM)
        assert got == BackendReply(200, "OK", [("Content-Length", "4"), ("X-Final", "yes")],
                                   b"done")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [("POST", "/t", [("X-A", "v\r\nX-Injected: 1")]), ("POST", "/t", [("X-A", "v\n")]),
     ("POST", "/t", [("X-A", "v\rw")]), ("POST", "/t", [("X-A", "v\x00")]),
     ("POST", "/t", [("X-A", "v\udc0a")]), ("POST", "/t", [("X-A\r\nX-B", "v")]),
     ("POST", "/t", [("X-A:", "v")]), ("POST", "/t", [("", "v")]),
     ("POST", "/t HTTP/1.1\r\nX: y", []), ("POST", "/t x", []), ("PO ST", "/t", []),
     ("POST", "http://evil/", []), ("POST", "/t", [("X-A", "v\ud800")])],
    ids=["crlf-value", "lf-value", "cr-value", "nul-value", "escaped-lf", "crlf-name",
         "colon-name", "empty-name", "crlf-path", "space-path", "bad-method", "absolute-path",
         "lone-surrogate"],
)
async def test_unsafe_request_is_refused_before_anything_is_written(
    client_for: Callable[..., BackendClient], method: str, path: str,
    headers: list[tuple[str, str]],
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            seen.append(head)
            writer.write(ok)

    async with raw_server(handler) as (url, conns):
        client = client_for(url)
        await client.request("POST", "/warm", [], b"")  # a pooled connection it could misuse
        with pytest.raises(UnsendableRequest):
            await client.request(method, path, headers, FORM)
        await client.request("POST", "/after", [], b"")
        assert [h.split(b" ")[1] for h in seen] == [b"/warm", b"/after"]
        assert len(conns) == 1


async def test_connection_refused_is_unavailable_at_once(
    client_for: Callable[..., BackendClient]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await client.request("POST", "/t", [], FORM)
    assert not isinstance(caught.value, BackendTimeout)
    assert time.monotonic() - started < 0.5


async def test_silent_backend_times_out_within_the_budget(
    client_for: Callable[..., BackendClient]
) -> None:
    hung_up: list[float] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        hung_up.append(time.monotonic())

    async with raw_server(silent) as (url, _):
        client = client_for(url, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(BackendTimeout):
            await client.request("POST", "/t", [], FORM)
        assert 0.25 < time.monotonic() - started < 0.8
        await asyncio.sleep(0.05)
        assert len(hung_up) == 1 and hung_up[0] - started < 0.8  # the connection was dropped


async def test_each_exchange_times_out_at_its_own_deadline(
    client_for: Callable[..., BackendClient]
) -> None:
    # One sweeper serves every exchange in flight: staggered requests each get their budget,
    # and an answered one does not keep the others from timing out.
    async def answers_fast_path_only(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r")[0]))
            if b"/fast" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with raw_server(answers_fast_path_only) as (url, _):
        client = client_for(url, timeout=0.4)
        loop = asyncio.get_running_loop()

        async def timed(path: str, delay: float) -> tuple[float, str]:
            await asyncio.sleep(delay)
            started = loop.time()
            try:
                await client.request("POST", path, [], FORM)
                outcome = "answered"
            except BackendTimeout:
                outcome = "timeout"
            return loop.time() - started, outcome

        results = await asyncio.gather(timed("/slow", 0), timed("/slow", 0.15),
                                       timed("/fast", 0.2), timed("/slow", 0.3))
    assert [outcome for _, outcome in results] == ["timeout", "timeout", "answered", "timeout"]
    for elapsed, outcome in results:
        if outcome == "timeout":
            assert 0.35 < elapsed < 0.9, results


async def test_keepalive_zero_opens_a_connection_per_request_and_says_so(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url, keepalive=0)
    for _ in range(3):
        assert (await client.request("POST", "/t", [("X-A", "1")], FORM)).status == 200
    assert len(set(recorder.peers)) == 3
    assert all(headers[1:] == [("Connection", "close"), ("X-A", "1"),
                               ("Content-Length", str(len(FORM)))]
               for headers in recorder.raw_headers)
    with pytest.raises(UnsendableRequest):  # the extra line does not loosen the CR/LF check
        await client.request("POST", "/t", [("X-A", "v\r\nX-Injected: 1")], FORM)


async def answers_once_then_drops_the_next(reader: asyncio.StreamReader,
                                           writer: asyncio.StreamWriter) -> None:
    """The backend's hang-up crossing a request on the wire: read, then gone unanswered."""
    await read_request(reader)
    writer.write(OK)
    await writer.drain()
    await read_request(reader)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_a_safe_request_lost_on_a_reused_connection_is_sent_once_more(
    client_for: Callable[..., BackendClient], method: str
) -> None:
    async with raw_server(answers_once_then_drops_the_next) as (url, conns):
        client = client_for(url)
        await client.request("GET", "/warm", [], b"")
        reply = await client.request(method, "/again", [], b"")
        assert (reply.status, len(conns)) == (200, 2)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_an_unsafe_request_lost_on_a_reused_connection_is_never_resent(
    client_for: Callable[..., BackendClient], method: str
) -> None:
    async with raw_server(answers_once_then_drops_the_next) as (url, conns):
        client = client_for(url)
        await client.request("POST", "/warm", [], FORM)
        with pytest.raises(BackendUnavailable, match="backend_closed"):
            await client.request(method, "/token", [], FORM)
        assert len(conns) == 1


async def test_a_request_lost_on_a_new_connection_is_not_resent(
    client_for: Callable[..., BackendClient]
) -> None:
    async def drops_everything(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(drops_everything) as (url, conns):
        client = client_for(url)
        with pytest.raises(BackendUnavailable, match="backend_closed"):
            await client.request("GET", "/", [], b"")
        assert len(conns) == 1


async def test_a_safe_request_is_not_resent_once_part_of_the_answer_came(
    client_for: Callable[..., BackendClient]
) -> None:
    async def cuts_the_second_answer(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")

    async with raw_server(cuts_the_second_answer) as (url, conns):
        client = client_for(url)
        await client.request("GET", "/", [], b"")
        with pytest.raises(BackendUnavailable):
            await client.request("GET", "/", [], b"")
        assert len(conns) == 1


@pytest.mark.parametrize(
    "partial",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part",
     b"HTTP/1.1 200 OK\r\nContent-Le",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
     b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     b"NOT HTTP AT ALL\r\n\r\n"],
    ids=["short-body", "half-headers", "cut-chunk", "conflicting-length", "garbage"],
)
async def test_broken_reply_is_unavailable(
    client_for: Callable[..., BackendClient], partial: bytes
) -> None:
    async with raw_server(scripted(partial, then_close=True)) as (url, _):
        client = client_for(url)
        with pytest.raises(BackendUnavailable) as caught:
            await client.request("POST", "/t", [], FORM)
        assert not isinstance(caught.value, BackendTimeout)


async def test_oversize_reply_is_unavailable(client_for: Callable[..., BackendClient]) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    async with raw_server(scripted(big)) as (url, _):
        client = client_for(url, max_reply_bytes=1000)
        with pytest.raises(BackendUnavailable, match="too_large"):
            await client.request("POST", "/t", [], FORM)


async def test_requests_above_max_connections_wait_their_turn(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url, max_connections=2)
    replies = await asyncio.gather(*(client.request("POST", "/slow", [], FORM) for _ in range(10)))
    assert [r.status for r in replies] == [200] * 10
    assert len(set(recorder.peers)) == 2


async def test_waiting_for_a_connection_counts_against_the_budget(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url, max_connections=1, timeout=0.03)
    results = await asyncio.gather(client.request("POST", "/slow", [], FORM),
                                   client.request("POST", "/t", [], FORM),
                                   return_exceptions=True)
    assert all(isinstance(r, BackendTimeout) for r in results)
    client = client_for(recorder.url, max_connections=1)
    assert (await client.request("POST", "/t", [], FORM)).status == 200


async def test_cancelled_request_does_not_return_its_connection(
    recorder: Recorder, client_for: Callable[..., BackendClient]
) -> None:
    client = client_for(recorder.url)
    task = asyncio.create_task(client.request("POST", "/slow", [], FORM))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.request("POST", "/t", [], FORM)
    assert len(set(recorder.peers)) == 2


async def test_close_closes_pooled_and_busy_connections(
    client_for: Callable[..., BackendClient]
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    hung_up: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, _ = await read_request(reader)
                if b"/hang" not in head:
                    writer.write(ok)
        except asyncio.IncompleteReadError as eof:
            hung_up.append(eof.partial == b"")

    async with raw_server(handler) as (url, conns):
        client = client_for(url)
        await asyncio.gather(*(client.request("POST", "/t", [], FORM) for _ in range(3)))
        busy = asyncio.create_task(client.request("POST", "/hang", [], FORM))
        await asyncio.sleep(0.02)
        await client.close()
        with pytest.raises(BackendUnavailable):
            await busy
        await asyncio.sleep(0.05)
        assert len(conns) == 3 and hung_up == [True] * 3
        with pytest.raises(BackendUnavailable):
            await client.request("POST", "/t", [], FORM)


async def test_https_with_a_private_ca(
    aiohttp_server: ServerFactory, client_for: Callable[..., BackendClient]
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_post("/t", hello)
    server = await aiohttp_server(app, ssl=server_ctx, host="localhost")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client = client_for(f"https://localhost:{server.port}", ssl_context=client_ctx)
    for _ in range(2):
        assert (await client.request("POST", "/t", [], FORM)).body == b"over tls"
    untrusting = client_for(f"https://localhost:{server.port}")
    with pytest.raises(BackendUnavailable, match="SSL"):
        await untrusting.request("POST", "/t", [], FORM)


@pytest.mark.parametrize("url", ["ftp://h", "http://h/prefix", "http://u:p@h", "http://h?q=1",
                                 "http://", "http://h:99999", "http://a b"])
def test_only_a_bare_origin_is_accepted(url: str) -> None:
    with pytest.raises(ValueError):
        BackendClient(url, timeout=1)
