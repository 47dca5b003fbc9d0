"""The capped listening site: still in step with the aiohttp code it re-implements."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import textwrap
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.web.listener import CappedSite

# CappedSite.start is TCPSite.start of aiohttp 3.14.5 with a connection-counting protocol
# factory, and it calls BaseSite.start itself. Recorded from that release: any change
# upstream means CappedSite.start must be read again against the new code.
COPIED_FROM = "aiohttp 3.14.5"
UPSTREAM_SOURCE_SHA256 = {
    "TCPSite.start": "30c7a62953c35f7031eb53656099c81aafc1e9cb7594574a511510654b561db3",
    "BaseSite.start": "8be90b90bab83d7b2c44b0d53055ffde031acd51c0b4d33f7e716d4233f93293",
}
# The private attributes CappedSite.start reads or sets, and the class that declares each.
PRIVATE_ATTRIBUTES = {
    web.BaseSite: ("_runner", "_ssl_context", "_backlog", "_server"),
    web.TCPSite: ("_host", "_port", "_bound_port", "_reuse_address", "_reuse_port"),
}


def _normalised_source(function: Callable[..., Any]) -> str:
    # Indentation, trailing spaces and blank lines do not change what the code does.
    source = textwrap.dedent(inspect.getsource(function))
    return "\n".join(line.rstrip() for line in source.splitlines() if line.strip())


@pytest.mark.parametrize(
    ("name", "function"),
    [pytest.param("TCPSite.start", web.TCPSite.start, id="TCPSite.start"),
     pytest.param("BaseSite.start", web.BaseSite.start, id="BaseSite.start")],
)
def test_upstream_code_copied_by_capped_site_is_unchanged(
    name: str, function: Callable[..., Any]
) -> None:
    digest = hashlib.sha256(_normalised_source(function).encode()).hexdigest()
    assert digest == UPSTREAM_SOURCE_SHA256[name], (
        f"aiohttp.web.{name} differs from {COPIED_FROM} (installed: aiohttp "
        f"{aiohttp.__version__}). Re-check CappedSite.start in gateway/web/listener.py "
        f"against the new upstream code, port any change, then record the new digest "
        f"{digest} here and widen the aiohttp pin in pyproject.toml.")


def test_private_attributes_capped_site_uses_still_exist() -> None:
    for owner, names in PRIVATE_ATTRIBUTES.items():
        missing = sorted(set(names) - set(owner.__slots__))
        assert not missing, (
            f"aiohttp {aiohttp.__version__} {owner.__name__} no longer declares {missing}: "
            f"re-check CappedSite.start in gateway/web/listener.py against the new code.")


async def test_capped_site_binds_serves_and_answers_503_over_the_cap() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = CappedSite(runner, "127.0.0.1", 0, max_connections=1)
    try:
        await site.start()
        port = site.port
        assert port != 0 and site.name == f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert (response.status, await response.text()) == (200, "hello")
            await asyncio.sleep(0.05)  # the pooled keep-alive connection holds the one slot
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answer = await asyncio.wait_for(reader.read(), 5)  # closed by the server
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable"
        assert b"Connection: close" in head and b"Cache-Control: no-store" in head
        assert json.loads(body) == {
            "error": "temporarily_unavailable",
            "error_description": "The service is temporarily unable to handle the request."}
    finally:
        await runner.cleanup()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
