"""Usage shared across replicas: two real `serve` processes on one Redis, several keys per
client, then restarted; the inventory of either shows the merged counts and times."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import ASSERTION_TYPE, BACKEND_SECRET, ISSUER, Backend, gateway_yaml
from tests.support.ports import free_port
from tests.support.redis_servers import Servers
from tests.support.serving import Served, listeners, serving
from tests.support.tokens import Signer, make_signer

CLIENT = "ci-pipeline"
KEYS = {"k1": make_signer("ES256", kid="k1", slot=5), "k2": make_signer("ES256", kid="k2", slot=6)}
ENV = {"CI_SECRET": BACKEND_SECRET}
SETTLE_SECONDS = 20.0  # room for a loaded machine; flush_interval is 1s


def config(tmp_path: Path, name: str, backend: Backend, redis_url: str) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    path = tmp_path / f"{name}.yaml"
    path.write_text(gateway_yaml(
        backend.url, {"keys": [signer.public_jwk for signer in KEYS.values()]},
        extra=listeners(port, admin) + f"replay: {{store: redis, redis_url: '{redis_url}', "
                                       "timeout: 2s}\nusage: {flush_interval: 1s}\n"))
    return path, port, admin


async def authenticate(served: Served, signer: Signer) -> None:
    now = int(time.time())
    assertion = signer.sign(signer.header(), {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER,
                                              "iat": now, "exp": now + 60,
                                              "jti": uuid.uuid4().hex})
    async with aiohttp.ClientSession() as session, session.post(served.token_url, data={
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}) as response:
        assert response.status == 200


async def keys_of(served: Served) -> dict[str, dict[str, Any]]:
    """The client's keys in the inventory, by kid."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{served.admin}/inventory") as response:
        assert response.status == 200
        document = await response.json()
    assert document["usage"] == "shared"
    (client,) = [c for c in document["clients"] if c["client_id"] == CLIENT]
    return {c["kid"]: c for c in client["credentials"] if c["kind"] == "key"}


async def until_uses(served: Served, expected: dict[str, int]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        keys = await keys_of(served)
        if {kid: key["uses"] for kid, key in keys.items()} == expected:
            return keys
        assert time.monotonic() < deadline, f"uses {keys} never became {expected}"
        await asyncio.sleep(0.2)


def epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


async def test_two_replicas_merge_usage_and_keep_it_across_restarts(
    backend: Backend, tmp_path: Path, servers: Servers,
) -> None:
    redis = servers.start()
    one, two = (config(tmp_path, name, backend, redis.url) for name in ("one", "two"))
    started = int(time.time())
    async with serving(*one, ENV) as first, serving(*two, ENV) as second:
        for signer in ("k1", "k1", "k1"):
            await authenticate(first, KEYS[signer])
        for signer in ("k2", "k2", "k1"):
            await authenticate(second, KEYS[signer])
        merged = {"k1": 4, "k2": 2}
        seen_first = await until_uses(first, merged)
        seen_second = await until_uses(second, merged)
        assert seen_first == seen_second  # same counts, times and flags on either replica
        assert first.stop() == 0 and second.stop() == 0  # each flushes on its way out
    used = int(time.time())
    for key in seen_first.values():
        assert started - 1 <= epoch(key["first_seen"]) <= epoch(key["last_used"]) <= used + 1

    # Both restarted: the shared view is read back; new uses add to it.
    async with serving(*two, ENV) as again, serving(*one, ENV) as other:
        restored = await until_uses(again, merged)
        assert {kid: (k["first_seen"], k["last_used"]) for kid, k in restored.items()} == {
            kid: (k["first_seen"], k["last_used"]) for kid, k in seen_first.items()}
        await authenticate(other, KEYS["k2"])
        after = await until_uses(again, {"k1": 4, "k2": 3})
        assert after["k2"]["first_seen"] == seen_first["k2"]["first_seen"]
        assert epoch(after["k2"]["last_used"]) >= epoch(seen_first["k2"]["last_used"])
