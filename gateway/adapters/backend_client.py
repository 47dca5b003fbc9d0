"""The backend's HTTP/1.1 client: a LIFO keep-alive pool, one llhttp parser per connection."""

from __future__ import annotations

import asyncio
import re
import select
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import urlsplit

import httptools

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Origin-form, already percent-encoded: printable ASCII, no space.
_PATH = re.compile(r"/[!-~]*")
_HOST = re.compile(r"[A-Za-z0-9.\-_:%]+")
# RFC 9110 §8.6: GET and HEAD give no meaning to content, so an empty one gets no Content-Length.
_BODYLESS_METHODS = frozenset({"GET", "HEAD"})
_FRAMING = frozenset({"content-length", "transfer-encoding"})
# RFC 9110 §9.2.2 lets a client retry an idempotent request automatically. Only the safe ones
# are: a token POST that reached the backend may have issued a token.
_RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TIMER_SLACK = 0.001  # seconds: loop timers run when due within the clock's resolution


class BackendUnavailable(Exception):
    """The backend refused, dropped, garbled or overfilled the exchange (the caller says 502)."""


class BackendTimeout(BackendUnavailable):
    """The backend did not answer within the request's budget (the caller says 504)."""


class UnsendableRequest(Exception):
    """The request line or a header cannot be written safely (the caller says 400).

    Raised before anything is written: the pooled connection stays usable.
    """


Stage = Literal["acquire", "connect", "write", "read"]
# The foreign failures the client meets, by where it meets them. Each becomes one of the
# client's own exceptions there; anything else propagates as it is (a bug, not the backend).
FOREIGN_FAILURES: dict[Stage, tuple[type[Exception], ...]] = {
    "acquire": (TimeoutError,),  # no pooled connection or free slot before the deadline
    "connect": (OSError,),  # refused, unreachable, TLS (ssl.SSLError), TimeoutError
    "write": (OSError, RuntimeError),  # uvloop refuses writes on a closing handle
    "read": (httptools.HttpParserError, httptools.HttpParserUpgrade),
}
_STAGE_REASONS: dict[Stage, str] = {
    "acquire": "backend_timeout", "connect": "backend_unreachable", "write": "backend_closed",
    "read": "bad_reply",
}


def backend_error_for(exc: BaseException, stage: Stage) -> BackendUnavailable | None:
    """The client's own exception for a foreign one met at ``stage``: BackendTimeout for a
    TimeoutError (an OSError too, so matched first), else BackendUnavailable; None for an
    exception ``stage`` does not expect."""
    if not isinstance(exc, FOREIGN_FAILURES[stage]):
        return None
    if isinstance(exc, TimeoutError):
        return BackendTimeout(f"backend_timeout: {stage}")
    return BackendUnavailable(f"{_STAGE_REASONS[stage]}: {type(exc).__name__}")


@dataclass(slots=True)
class BackendReply:
    """A complete reply. `headers` are as received (Transfer-Encoding and Content-Length
    included, trailers dropped) while `body` is already de-chunked: drop hop-by-hop fields."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection: its parser and the one exchange in flight on it."""

    __slots__ = ("body", "client", "closed", "deadline", "done", "exchanges", "fd", "head",
                 "headers", "headers_done", "idle_since", "loop", "parser", "reason",
                 "received", "reusable", "status", "transport", "waiter")

    def __init__(self, client: BackendClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client, self.loop = client, loop
        self.transport: asyncio.Transport | None = None
        self.fd = -1  # the socket's descriptor, polled before an idle connection is reused
        self.exchanges = 0  # requests sent on this connection
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[BackendReply] | None = None
        self.deadline = 0.0  # loop time by which the exchange in flight must be answered
        self.head = self.headers_done = self.reusable = False
        self.received = self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.done: BackendReply | None = None

    def exchange(self, data: bytes, head: bool, deadline: float) -> asyncio.Future[BackendReply]:
        self.waiter = waiter = self.loop.create_future()
        # No timer per request: the client's one sweeper fails exchanges past their deadline.
        self.deadline = deadline
        self.client._watch_deadline(deadline)
        self.head, self.received, self.done = head, 0, None
        self.reusable = self.client._keepalive > 0
        self.exchanges += 1
        try:
            cast(asyncio.Transport, self.transport).write(data)
        except Exception as exc:
            failure = backend_error_for(exc, "write")
            if failure is None:
                raise
            self.fail(failure)
        return waiter

    def still_open(self) -> bool:
        """Whether this idle connection can carry a request: not closing, nothing to read.

        The backend may have hung up an instant ago: its FIN (or a reset, or a 408 sent
        before hanging up) is already in the socket while the loop has not read it yet, so
        eof_received has not run. Then the socket is readable; a request sent there fails.
        """
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if self.fd < 0:
            return True
        poller = select.poll()  # not select.select: descriptors past 1023 are common here
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)

    def failed_before_answer(self) -> bool:
        """Whether the last exchange failed on a reused connection before any byte came back:
        the backend's hang-up raced the request (it may still have read the request)."""
        return self.exchanges > 1 and self.received == 0

    def time_out(self) -> None:
        self.fail(BackendTimeout("backend_timeout"))

    def abandon(self, waiter: asyncio.Future[BackendReply]) -> None:
        # The caller was cancelled mid-exchange: the reply may still come, so the line is spoilt.
        if self.waiter is waiter:
            self.fail(BackendUnavailable("cancelled"))

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            cast(asyncio.Transport, self.transport).abort()

    def fail(self, exc: BackendUnavailable) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def finish(self, reply: BackendReply) -> None:
        waiter, self.waiter = self.waiter, None
        if self.head:
            # llhttp cannot be told a reply answers HEAD; it waits for the announced body.
            self.parser = httptools.HttpResponseParser(self)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)
        if self.reusable and not self.closed:
            self.client._hand_on(self)
        else:
            self.abort()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
        self.client._conns.add(self)

    def eof_received(self) -> None:
        if self.waiter is None:  # the backend hung up an idle connection: out of the pool now
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for (often a 408 just before the backend hangs up).
            self.abort()
            return
        self.received += len(data)
        if self.received > self.client._max_reply:
            self.fail(BackendUnavailable("reply_too_large"))
            return
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            failure = backend_error_for(exc, "read")
            if failure is None:
                raise
            self.fail(failure)
            return
        if self.done is not None:
            self.finish(self.done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            if exc is None and self.headers_done and self.done is None and self._by_close():
                self._complete()
            if self.done is not None:
                self.finish(self.done)
            else:
                self.fail(BackendUnavailable("backend_closed"))
        self.client._forget(self)

    def _by_close(self) -> bool:  # no length, not chunked: the reply ends when the line does
        if self.head or self.status < 200 or self.status in (204, 304):
            return False
        return not any(name.lower() in _FRAMING for name, _ in self.headers)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.done is not None:  # a second reply to one request: the stream is out of step
            self.reusable = False
        self.reason, self.headers, self.body, self.headers_done = b"", [], [], False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # trailers are not forwarded
            # Decoded as aiohttp decodes them, so the caller sees the same strings as before.
            self.headers.append((name.decode("utf-8", "surrogateescape"),
                                 value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()
        if self.head and self.status >= 200:
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.done is not None:  # a body after a HEAD reply
            self.reusable = False
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        # 1xx replies (100 Continue) are interim: the final one follows on the same stream.
        if self.status >= 200 and self.done is None:
            self._complete()

    def _complete(self) -> None:
        parser = self.parser
        self.reusable = (self.reusable and parser.should_keep_alive()
                         and parser.get_http_version() == "1.1")
        self.done = BackendReply(self.status, self.reason.decode("latin-1"), self.headers,
                                 b"".join(self.body))


class BackendClient:
    """Sends requests to one backend origin over a bounded LIFO pool of keep-alive connections.

    An idle connection is kept for ``keepalive`` seconds, then closed; 0 means none is kept
    (each request on a new connection, sent with ``Connection: close``). Keep it below the
    backend's own idle timeout: a POST is never retried, so one sent on a connection the
    backend is closing at that moment fails. A connection the backend has already closed is
    noticed before reuse (see _Connection.still_open).
    """

    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float | None = None,
                 max_connections: int = 256, keepalive: float = 4.0,
                 max_reply_bytes: int = 4 * 1024 * 1024, ssl_context: ssl.SSLContext | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Raises ValueError unless base_url is exactly http[s]://host[:port]."""
        url = urlsplit(base_url)
        host = url.hostname or ""
        if (url.scheme not in ("http", "https") or not _HOST.fullmatch(host) or url.query
                or url.path not in ("", "/") or url.fragment or url.username is not None):
            raise ValueError(f"backend url must be http[s]://host[:port], not {base_url!r}")
        tls = url.scheme == "https"
        default_port = 443 if tls else 80
        self._host, self._port = host, url.port or default_port
        authority = f"[{host}]" if ":" in host else host
        if self._port != default_port:
            authority += f":{self._port}"
        self._request_tail = f" HTTP/1.1\r\nHost: {authority}\r\n"
        if keepalive <= 0:  # RFC 9112 §9.6: a client that will not reuse the connection says so
            self._request_tail += "Connection: close\r\n"
        self._tail_breaks = self._request_tail.count("\n")
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._max, self._keepalive, self._max_reply = max_connections, keepalive, max_reply_bytes
        self._loop = loop
        self._idle: list[_Connection] = []  # LIFO: the warmest connection is the safest to reuse
        self._conns: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._open = 0  # connections open or being opened: each holds one of max_connections
        self._closed = False
        self._gone: asyncio.Future[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None  # set while an exchange is in flight
        self._reaper: asyncio.TimerHandle | None = None  # set while a connection is idle

    async def request(self, method: str, path_qs: str, headers: Sequence[tuple[str, str]],
                      body: bytes) -> BackendReply:
        """Send one request and read the whole reply.

        Never retried (it may have arrived), except a GET, HEAD or OPTIONS that a reused
        connection lost before any byte of the answer came back: that one is sent once more on
        another connection, within the same budget.

        Raises UnsendableRequest before anything is written if the request cannot be written
        safely, BackendTimeout when the budget runs out, BackendUnavailable on any other failure.
        """
        data = self._encode(method, path_qs, headers, body)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self._timeout
        conn = self._take_idle(now)
        if conn is None:
            conn = await self._acquire(loop, deadline)
        head = method == "HEAD"
        try:
            return await self._exchange(conn, data, head, deadline)
        except BackendUnavailable as exc:
            if (isinstance(exc, BackendTimeout) or method not in _RETRIED_METHODS
                    or not conn.failed_before_answer() or self._closed):
                raise
        conn = await self._acquire(loop, deadline)
        return await self._exchange(conn, data, head, deadline)

    @staticmethod
    async def _exchange(conn: _Connection, data: bytes, head: bool,
                        deadline: float) -> BackendReply:
        waiter = conn.exchange(data, head, deadline)
        try:
            return await waiter
        except asyncio.CancelledError:
            conn.abandon(waiter)
            raise

    async def close(self) -> None:
        """Close every connection, idle or busy; requests in flight fail with BackendUnavailable."""
        self._closed = True
        for timer in (self._sweeper, self._reaper):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._reaper = None
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(BackendUnavailable("client_closed"))
        if self._conns and self._loop is not None:
            self._gone = self._loop.create_future()
            for conn in list(self._conns):
                conn.fail(BackendUnavailable("client_closed"))
            await asyncio.wait([self._gone], timeout=1.0)  # connection_lost is one loop turn away

    def _encode(self, method: str, path_qs: str, headers: Sequence[tuple[str, str]],
                body: bytes) -> bytes:
        if _TOKEN.fullmatch(method) is None or _PATH.fullmatch(path_qs) is None:
            raise UnsendableRequest(f"cannot send request line {method!r} {path_qs!r}")
        lines = [method, " ", path_qs, self._request_tail]
        for name, value in headers:
            if _TOKEN.fullmatch(name) is None:
                raise UnsendableRequest(f"bad header name {name!r}")
            lines.append(f"{name}: {value}\r\n")
        if body or method not in _BODYLESS_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        try:
            head = "".join(lines).encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:  # a lone surrogate outside surrogateescape's range
            raise UnsendableRequest("a surrogate in the request line or a header") from exc
        # A CR or LF we did not write is how requests get smuggled; checked after encoding
        # because surrogateescape can turn "\udc0d" into a raw CR.
        breaks = len(lines) - 4 + self._tail_breaks
        if head.count(b"\r") != breaks or head.count(b"\n") != breaks or b"\0" in head:
            raise UnsendableRequest("CR, LF or NUL in the request line or a header")
        return head + body if body else head

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            # Past keepalive the backend may hang up while our POST is in flight: never risk it.
            if now - conn.idle_since < self._keepalive and conn.still_open():
                return conn
            conn.abort()
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                while not self._closed:
                    if self._open < self._max:
                        self._open += 1
                        return await self._connect(loop, deadline)
                    turn: asyncio.Future[_Connection | None] = loop.create_future()
                    self._waiters.append(turn)
                    try:
                        conn = await turn
                    except BaseException:
                        if turn.done() and not turn.cancelled() and turn.exception() is None:
                            self._hand_on(turn.result())  # handed to us just as we gave up
                        raise
                    if conn is None:  # a freed slot was handed to us
                        return await self._connect(loop, deadline)
                    if conn.still_open():  # the backend may hang up right after answering
                        return conn
                    conn.abort()
        except Exception as exc:
            failure = backend_error_for(exc, "acquire")
            if failure is None:
                raise
            raise failure from exc
        raise BackendUnavailable("client_closed")

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        conn = _Connection(self, loop)
        limit = deadline
        if self._connect_timeout is not None:
            limit = min(deadline, loop.time() + self._connect_timeout)
        try:
            async with asyncio.timeout_at(limit):
                await loop.create_connection(lambda: conn, self._host, self._port, ssl=self._ssl,
                                             server_hostname=self._host if self._ssl else None)
        except BaseException as exc:
            if conn.transport is None:  # otherwise connection_lost gives the slot back
                self._hand_on(None)
            failure = backend_error_for(exc, "connect")
            if failure is None:
                raise
            raise failure from exc
        if self._closed:
            conn.abort()
            raise BackendUnavailable("client_closed")
        return conn

    def _hand_on(self, conn: _Connection | None) -> None:
        """Give a free connection (or, for None, a free slot) to the first waiter, else keep it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._open -= 1
        elif self._closed:
            conn.abort()
        else:
            conn.idle_since = now = conn.loop.time()
            self._idle.append(conn)
            if self._reaper is None:
                self._reaper = conn.loop.call_at(now + self._keepalive, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for keepalive, so that we hang up before the backend
        does; wait for the next one to come due."""
        self._reaper = None
        idle, keepalive = self._idle, self._keepalive
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        now = loop.time() + _TIMER_SLACK
        while idle and now - idle[0].idle_since >= keepalive:  # the coldest first
            idle.pop(0).abort()
        if idle:
            self._reaper = loop.call_at(idle[0].idle_since + keepalive, self._reap)

    def _watch_deadline(self, deadline: float) -> None:
        """Make sure an exchange due by ``deadline`` is failed if it is still waiting then.

        Every request has the same budget, so a new deadline is rarely earlier than those
        already in flight (only after a wait for a pooled connection): one timer at the
        earliest one serves them all.
        """
        sweeper, loop = self._sweeper, self._loop
        if loop is None or (sweeper is not None and sweeper.when() <= deadline):
            return
        if sweeper is not None:
            sweeper.cancel()
        self._sweeper = loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        """Fail every exchange past its deadline; wait for the next one still in flight."""
        self._sweeper = None
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        now = loop.time() + _TIMER_SLACK  # timers may fire a clock tick early
        earliest: float | None = None
        for conn in list(self._conns):
            if conn.waiter is None:
                continue
            if conn.deadline <= now:
                conn.time_out()
            elif earliest is None or conn.deadline < earliest:
                earliest = conn.deadline
        if earliest is not None:
            self._sweeper = loop.call_at(earliest, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._hand_on(None)
        if self._gone is not None and not self._conns and not self._gone.done():
            self._gone.set_result(None)
