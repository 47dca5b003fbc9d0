"""A backend that hangs up keep-alive connections left idle, as gunicorn (2 s) and Node (5 s) do."""

from __future__ import annotations

import asyncio
import select
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class IdleClosingBackend:
    """HTTP/1.1 on 127.0.0.1: answers every request 200 "ok" and hangs up a connection once
    it has been idle for ``idle_close`` seconds (or when told to, by ``hang_up_idle``).

    A hang-up is decided and done within one loop callback: nothing had arrived, then the
    socket is shut at once, so its FIN reaches the client before any other callback runs. A
    client on the same loop thus meets what a real backend's idle close presents, the FIN in
    its socket before its loop has read it, and never a request that crossed the hang-up on
    the wire (a race no client can avoid, which keeping its keep-alive shorter prevents).

    ``counts``: "connections", "requests", "reused" (requests on a connection that had
    answered before), "hung_up" (closed here while idle) and "peer_closed" (by the client).
    """

    def __init__(self, idle_close: float) -> None:
        self.idle_close = idle_close
        self.counts: Counter[str] = Counter()
        self.url = ""
        self._served: set[_Served] = set()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[IdleClosingBackend]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Served(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            for served in list(self._served):
                served.transport.abort()
            await server.wait_closed()

    def hang_up_idle(self, *, say_408: bool = False) -> int:
        """Hang up every idle connection now (first sending a 408, as some servers do);
        returns how many."""
        idle = [served for served in self._served if served.idle()]
        for served in idle:
            served.hang_up(say_408)
        return len(idle)

    async def wait_for(self, name: str, count: int, timeout: float = 5.0) -> None:
        """Wait until counts[name] reaches ``count``; raises TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while self.counts[name] < count:
                await asyncio.sleep(0.005)


class _Served(asyncio.Protocol):
    def __init__(self, backend: IdleClosingBackend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport
        self.buffer = b""
        self.answered = 0
        self.timer: asyncio.TimerHandle | None = None
        self.hung_up = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.backend._served.add(self)
        self.backend.counts["connections"] += 1
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._disarm()
        self.buffer += data
        while (length := self._complete_request()) is not None:
            self.buffer = self.buffer[length:]
            self.backend.counts["requests"] += 1
            if self.answered:
                self.backend.counts["reused"] += 1
            self.answered += 1
            self.transport.write(OK)
        if not self.buffer:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.backend._served.discard(self)
        if not self.hung_up:
            self.backend.counts["peer_closed"] += 1

    def idle(self) -> bool:
        return (not self.hung_up and not self.buffer and not self.transport.is_closing()
                and not _readable(self.transport.get_extra_info("socket").fileno()))

    def hang_up(self, say_408: bool = False) -> None:
        self.hung_up = True
        self._disarm()
        self.backend.counts["hung_up"] += 1
        if say_408:
            self.transport.write(TIMEOUT_408)  # written at once: nothing else is queued
        self.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # the FIN, now
        self.transport.close()

    def _on_idle(self) -> None:
        self.timer = None
        if self.idle():
            self.hang_up()
        # Otherwise a request is arriving: data_received re-arms after answering it.

    def _arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.backend.idle_close, self._on_idle)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _complete_request(self) -> int | None:
        """The length of the first whole request in the buffer, or None."""
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return None
        return len(head) + 4 + length
