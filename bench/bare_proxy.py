"""Benchmark baseline: a bare aiohttp pass-through proxy doing what the gateway does minus auth."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from backend import run, serve

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones aiohttp recomputes for each message.
DROPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

SESSION = web.AppKey("session", aiohttp.ClientSession)
BACKEND_URL = web.AppKey("backend_url", str)


def end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers minus hop-by-hop ones (and those named by Connection)."""
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",") if token}
    return {
        name: value
        for name, value in headers.items()
        if name.lower() not in DROPPED_HEADERS and name.lower() not in named
    }


async def forward(request: web.Request) -> web.Response:
    """Read the body, send it to the backend on the same path, return the whole answer."""
    body = await request.read()
    session = request.app[SESSION]
    async with session.request(
        request.method,
        request.app[BACKEND_URL] + request.path_qs,
        data=body,
        headers=end_to_end(request.headers),
        allow_redirects=False,
    ) as answer:
        payload = await answer.read()
        return web.Response(status=answer.status, body=payload, headers=end_to_end(answer.headers))


def create_app(backend_url: str) -> web.Application:
    """Build the proxy app with one shared keep-alive session."""
    app = web.Application()
    app[BACKEND_URL] = backend_url.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="e.g. http://127.0.0.1:8001")
    args = parser.parse_args()
    app = create_app(args.backend)
    run(lambda: serve(app, args.host, args.port, auto_decompress=False))


if __name__ == "__main__":
    main()
