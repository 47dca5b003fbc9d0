"""The public listening socket, with a cap on open client connections."""

from __future__ import annotations

import asyncio

from aiohttp import web

_BODY = (b'{"error": "temporarily_unavailable", '
         b'"error_description": "The service is temporarily unable to handle the request."}')
# Sent to a connection over the cap before it is closed: a plain answer, no request read.
_OVER_CAPACITY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                  b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


class _Refusal(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_OVER_CAPACITY)
        transport.close()


class CappedSite(web.TCPSite):
    """A TCP site that answers 503 and closes connections beyond ``max_connections``.

    Each open connection costs a file descriptor and buffers whether or not it ever sends
    a request; idle ones are closed by the keep-alive timeout, this bounds how many exist.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 max_connections: int, **kwargs: object) -> None:
        super().__init__(runner, host, port, **kwargs)  # type: ignore[arg-type]
        self._max_connections = max_connections

    async def start(self) -> None:
        server = self._runner.server
        assert server is not None
        limit = self._max_connections

        def factory() -> asyncio.BaseProtocol:
            if len(server.connections) >= limit:
                return _Refusal()
            return server()

        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
