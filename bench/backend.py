"""Benchmark stand-in for the legacy IdP: a cheap token endpoint that counts what it receives."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

STATS_PATH = "/_bench/stats"
TOKEN_BODY = json.dumps(
    {"access_token": "bench-access-token", "token_type": "Bearer", "expires_in": 300}
).encode()

# Plain module state: this process serves one benchmark and nothing else.
COUNTS = {"requests": 0, "basic_auth": 0, "with_assertion": 0}


async def token(request: web.Request) -> web.Response:
    """Answer every POST with the same token; count rewritten and raw requests."""
    body = await request.read()
    COUNTS["requests"] += 1
    if request.headers.get("Authorization", "").startswith("Basic "):
        COUNTS["basic_auth"] += 1
    if b"client_assertion=" in body:
        COUNTS["with_assertion"] += 1
    return web.Response(
        body=TOKEN_BODY,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def stats(request: web.Request) -> web.Response:
    """Report the counters (read by the harness after each run)."""
    return web.json_response(COUNTS)


async def reset(request: web.Request) -> web.Response:
    """Zero the counters (called by the harness before each run)."""
    for name in COUNTS:
        COUNTS[name] = 0
    return web.json_response(COUNTS)


def create_app() -> web.Application:
    """Build the backend app."""
    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    app.router.add_get(STATS_PATH, stats)
    app.router.add_post(STATS_PATH, reset)
    return app


async def serve(
    app: web.Application, host: str, port: int, *, auto_decompress: bool = True
) -> None:
    """Run an app without access log until the process is killed."""
    runner = web.AppRunner(app, access_log=None, auto_decompress=auto_decompress)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop when it is installed (it is what production uses)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run(lambda: serve(create_app(), args.host, args.port))


if __name__ == "__main__":
    main()
