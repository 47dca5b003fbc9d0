"""The credential inventory (GET /inventory on the admin listener) of a real gateway.

Several credential kinds at once (registered keys with dates, a CA-anchored certificate, a
federated trust, a shared secret in migration mode, an offboarded client), used over real
sockets; the document must say what was used, when and how often, flag what the policy
flags as time passes (an injected clock), validate against the shipped JSON Schema and
never hold a secret or a token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.loading import load_settings
from gateway.web.app import create_gateway
from tests.conftest import ISSUER, TOKEN_PATH, Backend, GatewayFactory, GatewayStarter, Running
from tests.support.pki import CA, Issued
from tests.support.platform_issuer import PlatformIssuer
from tests.support.redis_servers import Servers
from tests.support.tokens import Signer, make_signer
from tests.web.test_federation import (
    BACKEND_SECRET,
    ENV,
    GHA_SUBJECT,
    Lab,
    Live,
    accepted,
    client,
    declared,
    refused,
    trust,
)

SCHEMA: Final = json.loads(
    (Path(__file__).resolve().parents[2] / "config" / "inventory.schema.json").read_text())
DAY: Final = 86400.0
KEYS: Final = "ci-pipeline"
ACME: Final = "partner-acme"
DEPLOY: Final = "deploy-api"
OLD: Final = "old-batch"
ACME_SUBJECT: Final = "CN=partner-acme,O=Acme Corp,C=DE"
POLICY: Final = {"key_max_age": "30d", "key_unused_after": "7d", "client_dormant_after": "30d"}


class Clock:
    """The gateway's wall clock for usage, key dates and the inventory; tests move it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Keys:
    """The registered keys of the test: two of the keyed client, one of the offboarded."""

    current = make_signer("ES256", kid="ci-2026", slot=0)
    previous = make_signer("ES256", kid="ci-2025", slot=1)
    offboarded = make_signer("ES256", kid="batch-2024", slot=2)


def thumbprint(signer: Signer) -> str:
    return str(signer.private_key.thumbprint())


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(document)


def clients_config(previous: Signer | None = Keys.previous,
                   offboarded: bool = True) -> dict[str, Any]:
    keys = [Keys.current.public_jwk] + ([previous.public_jwk] if previous else [])
    clients = {
        KEYS: client(jwks={"keys": keys}, owner="platform-team", contact="platform@example.com",
                     description="Nightly deploys", key_expiry={"ci-2026": "2099-12-31"},
                     retire={thumbprint(Keys.previous): "2099-06-30"},
                     legacy_auth={"allow": ["client_secret_basic"], "until": "2099-01-01"}),
        ACME: client(certificate={"ca_file": "ca.pem", "subject": ACME_SUBJECT}),
        DEPLOY: client(trust("gha-production", "github", GHA_SUBJECT)),
    }
    if offboarded:
        clients[OLD] = client(jwks={"keys": [Keys.offboarded.public_jwk]}, enabled=False,
                              owner="legacy-team")
    return clients


class Inventory:
    """A gateway with every credential kind, its admin listener and its movable clock."""

    def __init__(self, live: Live, admin: TestServer, clock: Clock, lab: Lab,
                 github: PlatformIssuer) -> None:
        self.live, self.admin, self.clock, self.lab = live, admin, clock, lab
        self.github = github

    async def get(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(
                self.admin.make_url("/inventory")) as answer:
            assert answer.status == 200 and answer.content_type == "application/json"
            assert answer.headers["Cache-Control"] == "no-store"
            document: dict[str, Any] = await answer.json()
        validate(document)
        return document

    async def clients(self) -> dict[str, dict[str, Any]]:
        return {entry["client_id"]: entry for entry in (await self.get())["clients"]}

    async def reload(self, clients: dict[str, Any]) -> None:
        await self.live.reload(config(self.lab, self.github, clients))


def config(lab: Lab, github: PlatformIssuer, clients: dict[str, Any]) -> str:
    """The lab's config (JSON, which YAML reads), dates unquoted: YAML dates, not strings."""
    text = lab.config({"github": declared(github)}, clients, **POLICY)
    return re.sub(r'"([0-9]{4}-[0-9]{2}-[0-9]{2})"', r"\1", text)


@pytest.fixture(scope="module")
def root() -> CA:
    return CA("Partners Root CA")


@pytest.fixture(scope="module")
def leaf(root: CA) -> Issued:
    return root.issue(ACME_SUBJECT)


@pytest.fixture
async def inventory(lab: Lab, github: PlatformIssuer, root: CA, tmp_path: Path,
                    gateway_server: GatewayStarter,
                    aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Inventory:
    (tmp_path / "ca.pem").write_bytes(root.pem)
    path = tmp_path / "gateway.yaml"
    path.write_text(config(lab, github, clients_config()))
    clock, audit = Clock(), io.StringIO()
    gateway = create_gateway(load_settings(path, env=ENV), audit_stream=audit,
                             config_path=path, clock=clock)
    server = await gateway_server(gateway)
    live = Live(gateway, str(server.make_url("")).rstrip("/"), audit, lab.backend, path)
    await live.settled()
    return Inventory(live, await aiohttp_server(gateway.admin), clock, lab, github)


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def use_every_credential(inv: Inventory, leaf: Issued, root: CA) -> list[str]:
    """Real requests with each credential; returns the tokens sent (none may leak)."""
    live, now = inv.live, time.time()
    tokens = [Keys.current.assertion(KEYS, ISSUER, now=now) for _ in range(2)]
    tokens.append(Keys.previous.assertion(KEYS, ISSUER, now=now))
    tokens.append(leaf.signer().assertion(ACME, ISSUER, now=now,
                                          header={"x5c": root.chain(leaf)}))
    for token in tokens:
        await accepted(live, token)
    github_token = inv.github.github_token(ISSUER, environment="production")
    await accepted(live, github_token, client_id=DEPLOY)
    stale = Keys.offboarded.assertion(OLD, ISSUER, now=now)
    await refused(live, stale, "client_disabled")
    async with aiohttp.ClientSession() as session, session.post(
            live.url + TOKEN_PATH, data={"grant_type": "client_credentials"},
            headers={"Authorization": _basic(KEYS, "legacy-secret-value")}) as answer:
        assert answer.status == 200  # migration mode: the backend checked the secret
    return [*tokens, github_token, stale, "legacy-secret-value"]


def by_ref(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {credential["ref"]: credential for credential in entry["credentials"]}


async def test_every_credential_kind_is_listed_with_its_use(
    inventory: Inventory, leaf: Issued, root: CA, backend: Backend
) -> None:
    sent = await use_every_credential(inventory, leaf, root)
    document = await inventory.get()
    assert document["version"] == 1 and document["usage"] == "process"
    assert [entry["client_id"] for entry in document["clients"]] == sorted(
        [KEYS, ACME, DEPLOY, OLD])
    clients = {entry["client_id"]: entry for entry in document["clients"]}

    keyed = clients[KEYS]
    assert {name: keyed[name] for name in ("state", "owner", "contact", "description",
                                           "methods", "flags")} == {
        "state": "active", "owner": "platform-team", "contact": "platform@example.com",
        "description": "Nightly deploys", "methods": ["private_key_jwt", "client_secret_basic"],
        "flags": []}
    assert keyed["legacy"] == {"methods": ["client_secret_basic"], "until": "2099-01-01",
                               "sunset": "2099-01-02T00:00:00Z", "expired": False}
    assert keyed["key_source"]["kind"] == "jwks" and keyed["key_source"]["ready"] is True
    assert keyed["last_success"] is not None
    credentials = by_ref(keyed)
    current = credentials[f"key:{thumbprint(Keys.current)}"]
    assert {name: current[name] for name in (
        "kind", "present", "source", "kid", "algorithms", "thumbprint", "expiry", "retire",
        "uses", "flags")} == {
        "kind": "key", "present": True, "source": "jwks", "kid": "ci-2026",
        "algorithms": ["ES256"], "thumbprint": thumbprint(Keys.current),
        "expiry": "2099-12-31", "retire": None, "uses": 2, "flags": []}
    assert current["first_seen"] <= current["last_used"]
    previous = credentials[f"key:{thumbprint(Keys.previous)}"]
    assert (previous["uses"], previous["retire"], previous["flags"]) == (
        1, "2099-06-30", ["retiring"])  # the overlap runs: its last use is what matters
    [secret] = keyed["secrets"]
    assert (secret["method"], secret["uses"]) == ("client_secret_basic", 1)

    [certificate] = clients[ACME]["credentials"]
    assert {name: certificate[name] for name in (
        "kind", "ref", "source", "subject", "algorithms", "uses", "present")} == {
        "kind": "certificate", "ref": f"certificate:{hashlib.sha256(leaf.der).hexdigest()}",
        "source": "x5c", "subject": ACME_SUBJECT, "algorithms": ["ES256"], "uses": 1,
        "present": True}
    assert certificate["not_after"] == leaf.cert.not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert clients[ACME]["methods"] == ["certificate"]

    [federated] = clients[DEPLOY]["credentials"]
    assert {name: federated[name] for name in (
        "kind", "ref", "name", "issuer", "subject", "mode", "source", "algorithms", "uses")} == {
        "kind": "trust", "ref": "trust:gha-production", "name": "gha-production",
        "issuer": "github", "subject": GHA_SUBJECT, "mode": "enforce", "source": "federation",
        "algorithms": [inventory.github.alg], "uses": 1}

    # Offboarded: listed as such, with the key it still has configured and never used here.
    old = clients[OLD]
    assert (old["state"], old["owner"], old["last_success"], old["key_source"]) == (
        "offboarded", "legacy-team", None, None)
    [kept] = old["credentials"]
    assert (kept["thumbprint"], kept["uses"], kept["present"]) == (
        thumbprint(Keys.offboarded), 0, True)

    text = json.dumps(document)
    for secret_value in (BACKEND_SECRET, *sent):
        assert secret_value not in text
    assert len(backend.seen) == 6


async def test_flags_appear_as_time_passes(
    inventory: Inventory, leaf: Issued, root: CA
) -> None:
    await use_every_credential(inventory, leaf, root)
    inventory.clock.offset = 40 * DAY  # past key_max_age, key_unused_after, dormancy
    clients = await inventory.clients()
    keyed = clients[KEYS]
    assert keyed["flags"] == ["dormant"]
    current = by_ref(keyed)[f"key:{thumbprint(Keys.current)}"]
    assert current["flags"] == ["old", "unused"]
    assert by_ref(clients[DEPLOY])["trust:gha-production"]["flags"] == ["old", "unused"]
    # Closer to the key's own date than the warning (14 days): expiring; after it, expired.
    inventory.clock.offset = (_epoch("2099-12-31") + DAY - 10 * DAY) - time.time()
    current = by_ref((await inventory.clients())[KEYS])[f"key:{thumbprint(Keys.current)}"]
    assert "expiring" in current["flags"]
    inventory.clock.offset = (_epoch("2099-12-31") + DAY) - time.time()
    current = by_ref((await inventory.clients())[KEYS])[f"key:{thumbprint(Keys.current)}"]
    assert "expired" in current["flags"] and "expiring" not in current["flags"]


def _epoch(day: str) -> float:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


async def test_a_removed_key_stays_known_by_its_use_and_a_removed_client_is_absent(
    inventory: Inventory, leaf: Issued, root: CA
) -> None:
    await use_every_credential(inventory, leaf, root)
    await inventory.reload(clients_config(previous=None, offboarded=False))
    clients = await inventory.clients()
    assert OLD not in clients
    removed = by_ref(clients[KEYS])[f"key:{thumbprint(Keys.previous)}"]
    assert (removed["present"], removed["uses"], removed["kid"]) == (False, 1, None)
    assert removed["last_used"] is not None


async def _inventory_of(gw: Running, aiohttp_server: Callable[..., Awaitable[TestServer]],
                        ) -> Callable[[], Awaitable[dict[str, Any]]]:
    admin = await aiohttp_server(gw.gateway.admin)

    async def get() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(
                admin.make_url("/inventory")) as answer:
            document: dict[str, Any] = await answer.json()
        validate(document)
        return document

    return get


async def _send(gw: Running, count: int) -> None:
    for _ in range(count):
        token = gw.signer.assertion(gw.client_id, ISSUER, now=time.time())
        assert (await gw.post(gw.form(token)))[0] == 200


async def test_without_usage_tracking_the_inventory_says_so(
    start_gateway: GatewayFactory, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    gw = await start_gateway(extra="usage: {enabled: false}")
    get = await _inventory_of(gw, aiohttp_server)
    await _send(gw, 1)
    document = await get()
    [entry] = document["clients"]
    assert document["usage"] == "off" and entry["last_success"] is None
    assert [credential["uses"] for credential in entry["credentials"]] == [0]


async def test_two_gateways_sharing_redis_show_the_merged_counts(
    start_gateway: GatewayFactory, servers: Servers,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    redis = servers.start()
    extra = (f'replay: {{store: redis, redis_url: "{redis.url}"}}\n'
             "usage: {flush_interval: 1s}")
    signer = make_signer("ES256")
    first = await start_gateway(signer, extra=extra)
    second = await start_gateway(signer, extra=extra)
    inventories = [await _inventory_of(gw, aiohttp_server) for gw in (first, second)]
    await _send(first, 2)
    await _send(second, 3)
    deadline = time.monotonic() + 10
    for get in inventories:
        while True:
            document = await get()
            [entry] = document["clients"]
            [key] = entry["credentials"]
            if key["uses"] == 5:
                break
            assert time.monotonic() < deadline, f"never merged: {key['uses']} use(s)"
            await asyncio.sleep(0.2)
        assert document["usage"] == "shared" and entry["last_success"] == key["last_used"]
