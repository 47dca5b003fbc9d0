"""Key-change events in the audit log of a running gateway: start-up, reloads, fetches, time."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.loading import load_settings
from gateway.core.keyset import prepare_keyset
from gateway.core.usage import Usage, key_ref, trust_ref
from gateway.web.app import Gateway, create_gateway
from tests.conftest import ISSUER, ROOMY_LIMITS, TOKEN_PATH, Backend, GatewayStarter
from tests.support.jwks_server import FakeClock, start_jwks_server
from tests.support.key_certificates import DAY, with_certificate
from tests.support.tokens import Signer, make_signer

ServerFactory = Callable[..., Awaitable[TestServer]]
A, B, C = (make_signer("ES256", kid=kid, slot=slot) for slot, kid in enumerate("abc"))
D = make_signer("ES256", kid="d", slot=3)
REMOTE = "jwks_uri"
WAIT = 5.0  # seconds any awaited event may take (each arrives in well under one)


def thumbprints(*signers: Signer) -> list[str]:
    return sorted(key.thumbprint for key in prepare_keyset([s.public_jwk for s in signers]).keys)


def jwks(*signers: Signer) -> str:
    return json.dumps({"keys": [signer.public_jwk for signer in signers]})


def config_text(backend_url: str, clients: dict[str, str], *, policy: str = "",
                extra: str = "") -> str:
    """A config with ``clients`` (id -> its key lines), loopback fetching allowed."""
    blocks = "".join(f"  {client_id}:\n    {lines}\n    backend_auth: {{method: none}}\n"
                     for client_id, lines in clients.items())
    return f"""{ROOMY_LIMITS}
issuer: {ISSUER}
backend: {{url: "{backend_url}", timeout: 1s}}
endpoints: [{TOKEN_PATH}]
policy: {{algorithms: [ES256]{policy}}}
jwks_fetch: {{allow_http: true, allow_private_networks: true, timeout: 1s, min_ttl: 250ms,
             max_stale: 0s}}
{extra}
clients:
{blocks}"""


class Live:
    """A gateway running from a config file; its audit lines and admin listener."""

    def __init__(self, gateway: Gateway, admin: TestServer, path: Path,
                 audit: io.StringIO) -> None:
        self.gateway, self.admin, self.path, self.audit = gateway, admin, path, audit

    def events(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        return [line for line in lines if "event" in line]

    async def reload(self, text: str) -> None:
        self.path.write_text(text)
        async with aiohttp.ClientSession() as session, session.post(
                str(self.admin.make_url("/reload"))) as response:
            assert response.status == 200, await response.text()
        await asyncio.sleep(0)  # the lines written now are flushed at the iteration's end

    async def until(self, count: int) -> list[dict[str, Any]]:
        """The events once there are ``count`` of them (never more)."""
        deadline = time.monotonic() + WAIT
        while len(self.events()) < count:
            assert time.monotonic() < deadline, f"events so far: {self.events()}"
            await asyncio.sleep(0.02)
        events = self.events()
        assert len(events) == count, events
        return events


Starter = Callable[..., Awaitable[Live]]


@pytest.fixture
async def start(
    aiohttp_server: ServerFactory, tmp_path: Path, gateway_server: GatewayStarter,
) -> Starter:
    async def start_live(text: str, **options: Any) -> Live:
        path = tmp_path / "gateway.yaml"
        path.write_text(text)
        audit = io.StringIO()
        gateway = create_gateway(load_settings(path), audit_stream=audit, config_path=path,
                                 **options)
        await gateway_server(gateway)
        live = Live(gateway, await aiohttp_server(gateway.admin), path, audit)
        await asyncio.sleep(0)
        return live

    return start_live


def event(cause: str, added: list[str] | None = None, removed: list[str] | None = None, *,
          client: str = "acme", source: str = "jwks", owner: str = "client") -> dict[str, Any]:
    return {"event": "keys_changed", owner: client, "source": source, "cause": cause,
            "added": added or [], "removed": removed or []}


def without_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for line in events:
        assert line.pop("time").endswith("Z")
    return events


async def test_start_records_each_clients_set_once_and_an_unchanged_reload_nothing(
    start: Starter, backend: Backend, tmp_path: Path,
) -> None:
    (tmp_path / "keys.json").write_text(jwks(C))
    text = config_text(backend.url, {"acme": f"jwks: {jwks(A, B)}",
                                     "batch": "jwks_file: keys.json"})
    live = await start(text)
    assert without_time(await live.until(2)) == [
        event("start", thumbprints(A, B)),
        event("start", thumbprints(C), client="batch", source="jwks_file"),
    ]
    await live.reload(text)
    assert len(live.events()) == 2


async def test_a_reload_adding_and_removing_static_keys_records_both(
    start: Starter, backend: Backend, tmp_path: Path,
) -> None:
    (tmp_path / "keys.json").write_text(jwks(A, B))
    text = config_text(backend.url, {"acme": "jwks_file: keys.json", "other": f"jwks: {jwks(D)}"})
    live = await start(text)
    await live.until(2)
    (tmp_path / "keys.json").write_text(jwks(B, C))
    await live.reload(text)
    assert without_time((await live.until(3))[2:]) == [
        event("reload", thumbprints(C), thumbprints(A), source="jwks_file")]


async def test_offboarding_a_client_removes_its_keys_and_says_why(
    start: Starter, backend: Backend,
) -> None:
    keys = f"jwks: {jwks(A)}"
    live = await start(config_text(backend.url, {"acme": keys, "other": f"jwks: {jwks(B)}"}))
    await live.until(2)
    await live.reload(config_text(backend.url, {"acme": keys + "\n    enabled: false",
                                                "other": f"jwks: {jwks(B)}"}))
    await live.reload(config_text(backend.url, {"acme": keys + "\n    enabled: false"}))
    await live.reload(config_text(backend.url, {"acme": keys}))
    assert without_time((await live.until(5))[2:]) == [
        event("disabled", removed=thumbprints(A)),
        event("removed", removed=thumbprints(B), client="other"),
        event("reload", thumbprints(A)),
    ]


async def test_a_jwks_uri_that_adds_and_drops_keys_while_running_records_each_change(
    start: Starter, backend: Backend, aiohttp_server: ServerFactory,
) -> None:
    server = await start_jwks_server(aiohttp_server, [A.public_jwk])
    live = await start(config_text(backend.url, {"acme": f"jwks_uri: {server.url()}"}))
    assert without_time(await live.until(1)) == [event("fetch", thumbprints(A), source=REMOTE)]
    server.keys = [A.public_jwk, B.public_jwk]  # the next key published beside the old
    assert without_time((await live.until(2))[1:]) == [
        event("fetch", thumbprints(B), source=REMOTE)]
    server.keys = [B.public_jwk, C.public_jwk]  # the old one dropped, another added
    assert without_time((await live.until(3))[2:]) == [
        event("fetch", thumbprints(C), thumbprints(A), source=REMOTE)]
    server.status = 500  # the key server fails: with max_stale 0s the set goes at expiry
    assert without_time((await live.until(4))[3:]) == [
        event("unavailable", removed=thumbprints(B, C), source=REMOTE)]
    server.status = 200
    assert without_time((await live.until(5))[4:]) == [
        event("fetch", thumbprints(B, C), source=REMOTE)]
    fetched = server.fetches
    while server.fetches < fetched + 3:  # unchanged answers: no more events
        await asyncio.sleep(0.05)
    assert len(live.events()) == 5


async def test_a_reload_to_a_new_jwks_uri_records_only_what_differs(
    start: Starter, backend: Backend, aiohttp_server: ServerFactory,
) -> None:
    first = await start_jwks_server(aiohttp_server, [A.public_jwk, B.public_jwk])
    second = await start_jwks_server(aiohttp_server, [B.public_jwk])
    live = await start(config_text(backend.url, {"acme": f"jwks_uri: {first.url()}"}))
    await live.until(1)
    await live.reload(config_text(backend.url, {"acme": f"jwks_uri: {second.url()}"}))
    assert without_time((await live.until(2))[1:]) == [
        event("fetch", removed=thumbprints(A), source="jwks_uri")]


async def test_a_certificate_crossing_the_warning_is_recorded_once_then_its_expiry(
    start: Starter, backend: Backend,
) -> None:
    clock = FakeClock(time.time())
    not_after = int(clock.now + 20 * DAY)
    dated = with_certificate(A, not_after=not_after)
    live = await start(
        config_text(backend.url, {"acme": f"jwks: {jwks(dated, B)}"},
                    policy=", certificate_expiry_warning: 14d, refuse_expired_certificates: true"),
        clock=clock, key_check_interval=0.01)
    await live.until(1)
    clock.advance(5 * DAY)  # 15 days left: not yet within the warning
    await asyncio.sleep(0.1)
    assert len(live.events()) == 1
    clock.advance(2 * DAY)  # 13 days left
    expiring = await live.until(2)
    assert without_time(expiring[1:]) == [
        {**event("certificate_expiring"), "expiring": thumbprints(A),
         "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))}]
    clock.advance(DAY)
    await asyncio.sleep(0.1)
    assert len(live.events()) == 2  # once, not at every check
    clock.advance(13 * DAY)  # past notAfter and clock_skew: the key stops verifying
    assert without_time((await live.until(3))[2:]) == [
        event("certificate_expired", removed=thumbprints(A))]


async def test_a_federation_issuers_set_is_recorded_under_its_name(
    start: Starter, backend: Backend,
) -> None:
    def text(*signers: Signer) -> str:
        issuers = (f"federation:\n  issuers:\n    ci:\n      issuer: https://ci.example.test\n"
                   f"      algorithms: [ES256]\n      jwks: {jwks(*signers)}\n")
        trust = ("federated: [{name: deploy, issuer: ci, audience: " + ISSUER
                 + ", subject: 'repo:acme'}]")
        return config_text(backend.url, {"acme": trust}, extra=issuers)

    live = await start(text(A))
    await live.reload(text(A, B))
    assert without_time(await live.until(2)) == [
        event("start", thumbprints(A), owner="issuer", client="ci"),
        event("reload", thumbprints(B), owner="issuer", client="ci"),
    ]


@pytest.mark.parametrize(("worker", "written"), [(0, 1), (1, 0)], ids=["worker-0", "worker-1"])
async def test_of_several_workers_one_writes_the_events(
    start: Starter, backend: Backend, worker: int, written: int,
) -> None:
    live = await start(config_text(backend.url, {"acme": f"jwks: {jwks(A)}"}), worker=worker)
    await asyncio.sleep(0.05)
    assert len(live.events()) == written


async def test_keys_passing_their_key_expiry_and_retire_dates_are_recorded_then(
    start: Starter, backend: Backend,
) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp())

    def text(expiry: str) -> str:
        return config_text(backend.url, {"acme": (
            f"jwks: {jwks(A, B, C)}\n    key_expiry: {{a: {expiry}}}\n"
            f"    retire: {{{thumbprints(B)[0]}: 2026-03-12}}")})

    live = await start(text("2026-03-10"), clock=clock, key_check_interval=0.01)
    assert without_time(await live.until(1)) == [event("start", thumbprints(A, B, C))]
    clock.now = datetime(2026, 3, 11, tzinfo=UTC).timestamp() - 1  # a's last second
    await asyncio.sleep(0.1)
    assert len(live.events()) == 1
    clock.advance(1)
    assert without_time((await live.until(2))[1:]) == [event("expired", removed=thumbprints(A))]
    clock.advance(2 * DAY)  # through the 12th: b's rotation overlap is over
    assert without_time((await live.until(3))[2:]) == [event("retired", removed=thumbprints(B))]
    await live.reload(text("2026-12-31"))  # a's date moved on: usable again
    assert without_time((await live.until(4))[3:]) == [event("reload", thumbprints(A))]


async def test_the_usage_book_first_sees_each_key_and_trust_when_it_is_held(
    start: Starter, backend: Backend, aiohttp_server: ServerFactory,
) -> None:
    clock = FakeClock(time.time())
    started = clock.now
    server = await start_jwks_server(aiohttp_server, [A.public_jwk])
    issuers = (f"federation:\n  issuers:\n    ci:\n      issuer: https://ci.example.test\n"
               f"      algorithms: [ES256]\n      jwks: {jwks(D)}\n")
    trusts = "federated: [{name: deploy, issuer: ci, audience: " + ISSUER + ", subject: s}]"
    live = await start(config_text(backend.url, {"acme": f"jwks_uri: {server.url()}",
                                                 "ci-job": trusts}, extra=issuers),
                       clock=clock)
    await live.until(2)  # the issuer's start, acme's first fetch
    usage = live.gateway.usage
    assert set(usage.of_client("acme")) == {key_ref(thumbprints(A)[0])}
    assert usage.of_client("ci-job") == {trust_ref("deploy"): Usage(started, None, 0)}
    clock.advance(DAY)
    server.keys = [A.public_jwk, B.public_jwk]
    await live.until(3)
    assert usage.of_client("acme") == {key_ref(thumbprints(A)[0]): Usage(started, None, 0),
                                       key_ref(thumbprints(B)[0]): Usage(started + DAY, None, 0)}
