"""Key expiry and retirement from the attacker's side: a key past its key_expiry, a retired
key after its date, each refused 401 with its reason and the backend seeing nothing; the
overlap before the date is accepted and every use counted; the gauges on /metrics."""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.loading import parse_settings
from gateway.core.usage import key_ref
from gateway.web.app import create_gateway
from tests.conftest import (
    BACKEND_SECRET,
    ISSUER,
    Backend,
    GatewayStarter,
    Running,
    gateway_yaml,
)
from tests.support.tokens import Signer, make_signer

OLD = make_signer("ES256", kid="old-2025")
NEW = make_signer("ES256", kid="new-2026", slot=1)
CLIENT = "ci-pipeline"
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}
ServerFactory = Callable[..., Awaitable[TestServer]]


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


def thumbprint(signer: Signer) -> str:
    return signer.keyset().keys[0].thumbprint


@pytest.fixture
def both_keys(backend: Backend, gateway_server: GatewayStarter,
              tmp_path: Path) -> Callable[[str], Awaitable[Running]]:
    """Start a gateway whose client holds OLD and NEW, with these client settings."""

    async def start(client: str) -> Running:
        text = gateway_yaml(backend.url, {"keys": [OLD.public_jwk, NEW.public_jwk]},
                            client=client)
        settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": BACKEND_SECRET})
        audit = io.StringIO()
        gateway = create_gateway(settings, audit_stream=audit)
        return Running(gateway, await gateway_server(gateway), audit, OLD, CLIENT)

    return start


Start = Callable[[str], Awaitable[Running]]


async def token(gw: Running, signer: Signer) -> tuple[int, object]:
    assertion = signer.assertion(CLIENT, ISSUER, now=time.time())
    status, _, body = await gw.post(gw.form(assertion))
    return status, body


@pytest.mark.parametrize(("client", "retired"), [
    pytest.param(f"key_expiry: {{old-2025: {day(-1)}}}", False, id="past-its-key-expiry"),
    pytest.param(f"retire: {{{thumbprint(OLD)}: {day(-1)}}}", True, id="retired-by-thumbprint"),
])
async def test_a_key_past_its_end_is_refused_and_the_backend_sees_nothing(
    both_keys: Start, backend: Backend, caplog: pytest.LogCaptureFixture,
    client: str, retired: bool,
) -> None:
    gw = await both_keys(client)
    with caplog.at_level("INFO", logger="gateway"):
        status, body = await token(gw, OLD)  # a valid signature by the holder of the old key
    assert (status, body) == (401, INVALID_CLIENT)
    assert backend.seen == []
    [line] = gw.audit_lines()
    assert (line["result"], line["reason"], line["client"]) == ("rejected", "key_expired",
                                                                CLIENT)
    assert line["key_thumbprint"] == thumbprint(OLD) and line["kid"] == "old-2025"
    assert gw.metric("pkjwt_client_auth_total", client=CLIENT, endpoint="/oauth2/token",
                     result="rejected", reason="key_expired", method="private_key_jwt") == 1
    # The operational log's detail says which end it was.
    [logged] = [r.getMessage() for r in caplog.records if "key_expired" in r.getMessage()]
    assert ("retired: its retire date" if retired else "expired: its key_expiry date") in logged
    assert day(-1) in logged
    # The other key of the client is not affected.
    assert (await token(gw, NEW))[0] == 200
    assert len(backend.seen) == 1


async def test_the_last_day_is_accepted_and_every_use_of_the_overlap_counted(
    both_keys: Start, backend: Backend
) -> None:
    gw = await both_keys(f"retire: {{old-2025: {day(0)}}}\n"
                                        f"    key_expiry: {{new-2026: {day(0)}}}")
    for _ in range(3):
        assert (await token(gw, OLD))[0] == 200
    assert (await token(gw, NEW))[0] == 200
    assert len(backend.seen) == 4
    used = gw.gateway.usage.usage(CLIENT, key_ref(thumbprint(OLD)))
    assert used is not None and used.uses == 3 and used.last_used is not None


async def test_a_reload_that_retires_a_key_refuses_it_at_once(
    both_keys: Start, backend: Backend, tmp_path: Path
) -> None:
    gw = await both_keys("")
    assert (await token(gw, OLD))[0] == 200
    text = gateway_yaml(gw.gateway.runtime.settings.backend.url,
                        {"keys": [OLD.public_jwk, NEW.public_jwk]},
                        client=f"retire: {{old-2025: {day(-1)}}}")
    await gw.gateway.reload(parse_settings(text, base_dir=tmp_path,
                                           env={"CI_SECRET": BACKEND_SECRET}))
    assert await token(gw, OLD) == (401, INVALID_CLIENT)
    assert len(backend.seen) == 1


async def test_the_lifecycle_gauges_on_metrics(
    both_keys: Start, aiohttp_server: ServerFactory
) -> None:
    gw = await both_keys("key_unused_after: 1d")
    assert (await token(gw, OLD))[0] == 200
    admin = await aiohttp_server(gw.gateway.admin)
    async with aiohttp.ClientSession() as session, session.get(
            str(admin.make_url("/metrics"))) as response:
        text = await response.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("pkjwt_client_")}
    labels = (("client", CLIENT),)
    assert samples[("pkjwt_client_keys", labels)] == 2
    assert samples[("pkjwt_client_unused_keys", labels)] == 0  # NEW is a day from unused
    assert abs(samples[("pkjwt_client_last_success_timestamp_seconds", labels)]
               - time.time()) < 600
    assert 0 <= samples[("pkjwt_client_oldest_key_age_seconds", labels)] < 600
    # The client id is the only label: no kid, thumbprint or subject.
    lifecycle = [key for key in samples if key[0] in (
        "pkjwt_client_keys", "pkjwt_client_unused_keys", "pkjwt_client_oldest_key_age_seconds",
        "pkjwt_client_last_success_timestamp_seconds")]
    assert lifecycle and all(key[1] == labels for key in lifecycle)
