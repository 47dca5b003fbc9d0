"""Registered keys carrying certificates (x5c), through the running gateway: the expiry gauge
per client, and refuse_expired_certificates from the attacker's side."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp.test_utils import TestServer

from gateway.config.errors import ConfigError
from gateway.config.loading import parse_settings
from gateway.core.assertion import ParsedAssertion, VerifiedAssertion
from gateway.core.attempt import Attempt
from gateway.core.credentials import RegisteredKeys, ReplayEntry
from gateway.core.keysource import KeySource
from gateway.web.app import Gateway, create_gateway
from tests.conftest import (
    BACKEND_SECRET,
    ISSUER,
    Backend,
    GatewayFactory,
    GatewayStarter,
    Running,
    gateway_yaml,
)
from tests.support.jwks_server import start_jwks_server
from tests.support.key_certificates import DAY, with_certificate
from tests.support.tokens import Signer, make_signer

EXPIRY = "pkjwt_client_certificate_expiry_timestamp_seconds"
CLIENT = "ci-pipeline"
ServerFactory = Callable[..., Awaitable[TestServer]]


def assertion(signer: Signer, client_id: str = CLIENT) -> str:
    return signer.assertion(client_id, ISSUER, now=time.time())


def expiry(gateway: Gateway, client: str = CLIENT) -> float | None:
    gateway.metrics.flush()
    return gateway.metrics.registry.get_sample_value(EXPIRY, {"client": client})


async def refused_for(gw: Running, backend: Backend, token: str, reason: str) -> None:
    status, _, body = await gw.post(gw.form(token))
    assert (status, body) == (401, {"error": "invalid_client",
                                    "error_description": "Client authentication failed."})
    assert gw.audit_lines()[-1]["reason"] == reason
    assert backend.seen == []


# ---------------------------------------------------------------- refuse_expired_certificates


async def test_an_expired_key_certificate_is_only_watched_by_default(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    expired = with_certificate(make_signer("ES256"), not_after=time.time() - DAY)
    gw = await start_gateway(expired)
    status, _, _ = await gw.post(gw.form(assertion(expired)))
    assert status == 200 and len(backend.seen) == 1


@pytest.mark.parametrize(
    "yaml",
    [
        pytest.param({"policy": ", refuse_expired_certificates: true"}, id="policy"),
        pytest.param({"client": "refuse_expired_certificates: true"}, id="per-client"),
    ],
)
async def test_refuse_expired_certificates_stops_the_key_verifying(
    start_gateway: GatewayFactory, backend: Backend, yaml: dict[str, str]
) -> None:
    expired = with_certificate(make_signer("ES256"), not_after=time.time() - DAY)
    gw = await start_gateway(expired, **yaml)
    await refused_for(gw, backend, assertion(expired), "certificate_expired")
    assert gw.metric("pkjwt_client_auth_total", client=CLIENT, endpoint="/oauth2/token",
                     result="rejected", reason="certificate_expired",
                     method="private_key_jwt") == 1


async def test_the_clock_skew_applies_to_the_certificate(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    # Expired 5 s ago, with 15 s of skew allowed: still verifies.
    just_expired = with_certificate(make_signer("ES256"), not_after=time.time() - 5)
    gw = await start_gateway(just_expired, policy=", refuse_expired_certificates: true")
    assert (await gw.post(gw.form(assertion(just_expired))))[0] == 200


async def test_a_per_client_override_turns_refusal_off_for_that_client(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    expired = with_certificate(make_signer("ES256"), not_after=time.time() - DAY)
    gw = await start_gateway(expired, policy=", refuse_expired_certificates: true",
                             client="refuse_expired_certificates: false")
    assert (await gw.post(gw.form(assertion(expired))))[0] == 200


async def test_a_renewed_certificate_beside_the_expired_one_keeps_the_client_working(
    backend: Backend, tmp_path: Path, gateway_server: GatewayStarter
) -> None:
    signer = make_signer("ES256")
    old = with_certificate(signer, not_after=time.time() - DAY, serial=1)
    renewed = with_certificate(signer, not_after=time.time() + 90 * DAY, serial=2)
    text = gateway_yaml(backend.url, {"keys": [old.public_jwk, renewed.public_jwk]},
                        policy=", refuse_expired_certificates: true")
    gateway = create_gateway(parse_settings(text, base_dir=tmp_path,
                                            env={"CI_SECRET": BACKEND_SECRET}),
                             audit_stream=io.StringIO())
    server = await gateway_server(gateway)
    gw = Running(gateway, server, io.StringIO(), signer, CLIENT)
    assert (await gw.post(gw.form(assertion(signer))))[0] == 200


async def test_a_registered_key_with_a_certificate_of_another_key_is_refused_at_load(
    tmp_path: Path, backend: Backend
) -> None:
    signer, other = make_signer("ES256"), make_signer("ES256", slot=1)
    forged = signer.with_jwk(x5c=with_certificate(other, not_after=time.time() + DAY)
                             .public_jwk["x5c"])
    text = gateway_yaml(backend.url, {"keys": [forged.public_jwk]})
    settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": BACKEND_SECRET})
    with pytest.raises(ConfigError) as caught:
        create_gateway(settings, audit_stream=io.StringIO())
    assert caught.value.problems == [
        (f"clients.{CLIENT}.jwks.keys[0]",
         "'x5c' certifies another key than the JWK's own: the leaf must hold this key"),
        (f"clients.{CLIENT}.jwks", "holds no usable public signing key")]


# ---------------------------------------------------------------- the expiry gauge


async def test_the_gauge_holds_the_soonest_certificate_expiry_of_the_client(
    backend: Backend, tmp_path: Path, gateway_server: GatewayStarter
) -> None:
    now = float(int(time.time()))
    later = with_certificate(make_signer("ES256"), not_after=now + 90 * DAY)
    sooner = with_certificate(make_signer("ES256", slot=1), not_after=now + 10 * DAY)
    plain = make_signer("RS256")
    extra = (f"  without-certificates:\n    jwks: {{keys: [{json.dumps(plain.public_jwk)}]}}\n"
             f"    backend_auth: {{method: none}}\n")
    text = gateway_yaml(backend.url, {"keys": [later.public_jwk, sooner.public_jwk,
                                               plain.public_jwk]}, extra=extra)
    gateway = create_gateway(parse_settings(text, base_dir=tmp_path,
                                            env={"CI_SECRET": BACKEND_SECRET}),
                             audit_stream=io.StringIO())
    await gateway_server(gateway)
    assert expiry(gateway) == now + 10 * DAY
    assert expiry(gateway, "without-certificates") is None  # no series at all


async def test_a_reload_updates_and_drops_the_series(
    backend: Backend, tmp_path: Path, gateway_server: GatewayStarter
) -> None:
    now = float(int(time.time()))
    signer = make_signer("ES256")

    def settings(*keys: Signer, client_id: str = CLIENT) -> Any:
        text = gateway_yaml(backend.url, {"keys": [key.public_jwk for key in keys]},
                            client_id=client_id)
        return parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": BACKEND_SECRET})

    gateway = create_gateway(settings(with_certificate(signer, not_after=now + 3 * DAY)),
                             audit_stream=io.StringIO())
    await gateway_server(gateway)
    assert expiry(gateway) == now + 3 * DAY
    await gateway.reload(settings(with_certificate(signer, not_after=now + 60 * DAY)))
    assert expiry(gateway) == now + 60 * DAY  # renewed
    await gateway.reload(settings(signer))
    assert expiry(gateway) is None  # the key no longer carries a certificate
    await gateway.reload(settings(with_certificate(signer, not_after=now + DAY)))
    await gateway.reload(settings(signer, client_id="someone-else"))
    assert expiry(gateway) is None  # the client is gone


async def test_remote_keys_report_their_certificates_when_fetched(
    backend: Backend, tmp_path: Path, gateway_server: GatewayStarter,
    aiohttp_server: ServerFactory,
) -> None:
    now = float(int(time.time()))
    old = with_certificate(make_signer("ES256", kid="old"), not_after=now + 5 * DAY)
    jwks = await start_jwks_server(aiohttp_server, [old.public_jwk])
    gateway = _remote_gateway(backend, tmp_path, jwks.url(), io.StringIO())
    server = await gateway_server(gateway)
    await _settled(gateway)
    assert expiry(gateway, "partner") == now + 5 * DAY
    # The partner rotates to a key with a later certificate; its new kid forces a refetch.
    new = with_certificate(make_signer("ES256", kid="new", slot=1), not_after=now + 80 * DAY)
    jwks.keys = [new.public_jwk]
    gw = Running(gateway, server, io.StringIO(), new, "partner")
    assert (await gw.post(gw.form(assertion(new, "partner"))))[0] == 200
    assert expiry(gateway, "partner") == now + 80 * DAY


@pytest.mark.parametrize("renewed", [True, False], ids=["renewed-on-the-host", "not-renewed"])
async def test_an_expired_certificate_on_a_jwks_uri_refetches_once(
    backend: Backend, tmp_path: Path, gateway_server: GatewayStarter,
    aiohttp_server: ServerFactory, renewed: bool,
) -> None:
    signer = make_signer("ES256", kid="partner-key")
    expired = with_certificate(signer, not_after=time.time() - DAY, serial=1)
    jwks = await start_jwks_server(aiohttp_server, [expired.public_jwk])
    audit = io.StringIO()
    gateway = _remote_gateway(backend, tmp_path, jwks.url(), audit,
                              policy=", refuse_expired_certificates: true")
    gw = Running(gateway, await gateway_server(gateway), audit, signer, "partner")
    await _settled(gateway)
    fetched = jwks.fetches
    if renewed:  # the partner has published its key with the renewed certificate
        jwks.keys = [with_certificate(signer, not_after=time.time() + 90 * DAY,
                                      serial=2).public_jwk]
        assert (await gw.post(gw.form(assertion(signer, "partner"))))[0] == 200
    else:
        await refused_for(gw, backend, assertion(signer, "partner"), "certificate_expired")
    assert jwks.fetches == fetched + 1  # the refusal asked the key host once


async def test_a_ca_anchored_client_reports_the_leaf_it_presented(
    start_gateway: GatewayFactory, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = make_signer("ES256")
    gw = await start_gateway(signer)
    assert expiry(gw.gateway) is None
    presented: list[float] = [1_900_000_000.0]
    _swap_credential(gw.gateway, lambda registered: _LeafReporting(registered, presented))
    writes = _count_gauge_writes(gw.gateway, monkeypatch)
    for _ in range(3):
        assert (await gw.post(gw.form(assertion(signer))))[0] == 200
    assert expiry(gw.gateway) == 1_900_000_000.0
    assert writes == [CLIENT]  # written when it changed, not per request
    presented[0] = 1_950_000_000.0  # the client moved to its next certificate
    assert (await gw.post(gw.form(assertion(signer))))[0] == 200
    assert expiry(gw.gateway) == 1_950_000_000.0
    assert writes == [CLIENT, CLIENT]


# ---------------------------------------------------------------- helpers


def _remote_gateway(backend: Backend, tmp_path: Path, jwks_uri: str, audit: io.StringIO,
                    policy: str = "") -> Gateway:
    """A gateway whose client ``partner`` has a jwks_uri (beside ci-pipeline's own keys)."""
    extra = (f"  partner:\n    jwks_uri: {jwks_uri}\n    backend_auth: {{method: none}}\n"
             "jwks_fetch: {allow_http: true, allow_private_networks: true, timeout: 1s}\n")
    text = gateway_yaml(backend.url, {"keys": [make_signer("RS256").public_jwk]}, extra=extra,
                        policy=policy)
    return create_gateway(parse_settings(text, base_dir=tmp_path,
                                         env={"CI_SECRET": BACKEND_SECRET}),
                          audit_stream=audit)


async def _settled(gateway: Gateway) -> None:
    deadline = time.monotonic() + 5
    while not gateway.runtime.keys_settled():
        assert time.monotonic() < deadline, "the first fetch did not settle"
        await asyncio.sleep(0.02)


@dataclasses.dataclass(frozen=True)
class _LeafReporting:
    """A credential that verifies as the registered keys do and reports a leaf's notAfter,
    as a CA-anchored credential does for each verified assertion."""

    kind: ClassVar[str] = "certificate"
    registered: RegisteredKeys
    presented: list[float]

    @property
    def name(self) -> str:
        return "certificate"

    def key_sources(self) -> tuple[KeySource, ...]:
        return self.registered.key_sources()

    def matches(self, parsed: ParsedAssertion) -> bool:
        return self.registered.matches(parsed)

    def verify(self, parsed: ParsedAssertion, endpoint: str, now: float,
               attempt: Attempt) -> VerifiedAssertion:
        verified = self.registered.verify(parsed, endpoint, now, attempt)
        attempt.certificate_not_after = self.presented[0]
        return verified

    async def verify_after_refresh(self, parsed: ParsedAssertion, endpoint: str, now: float,
                                   attempt: Attempt) -> VerifiedAssertion | None:
        return None

    def replay_entry(self, verified: VerifiedAssertion, assertion: str,
                     endpoint: str) -> ReplayEntry:
        return self.registered.replay_entry(verified, assertion, endpoint)


def _swap_credential(gateway: Gateway, wrap: Callable[[RegisteredKeys], Any]) -> None:
    runtime = gateway.slot.current
    client = runtime.clients[CLIENT]
    (registered,) = client.credentials
    assert isinstance(registered, RegisteredKeys)
    clients = {**runtime.clients,
               CLIENT: dataclasses.replace(client, credentials=(wrap(registered),))}
    gateway.slot.current = dataclasses.replace(runtime, clients=clients)


def _count_gauge_writes(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The clients whose expiry series is written from now on (labels() precedes a write)."""
    writes: list[str] = []
    gauge = gateway.metrics.certificate_expiry
    labels = gauge.labels

    def spy(*values: str) -> Any:
        writes.append(values[0])
        return labels(*values)

    monkeypatch.setattr(gauge, "labels", spy)
    return writes
