"""Migration mode's Deprecation header: legacy_auth.since, the same on every reload and restart."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loading import parse_settings
from tests.conftest import BACKEND_SECRET, Backend, GatewayFactory, Running, gateway_yaml
from tests.support.tokens import make_signer

CLIENT = "ci-pipeline"
SINCE = dt.date(2026, 10, 1)
SINCE_EPOCH = "@1790812800"  # 2026-10-01T00:00:00Z
UNTIL = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)
BASIC = "Basic " + base64.b64encode(f"{CLIENT}:the-clients-secret".encode()).decode()


def _legacy(since: dt.date | None) -> str:
    since_part = f", since: {since.isoformat()}" if since else ""
    return f"legacy_auth: {{allow: [client_secret_basic], until: {UNTIL.isoformat()}{since_part}}}"


async def _deprecation(gw: Running) -> str | None:
    status, headers, _ = await gw.post("grant_type=client_credentials", headers={
        "Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and "Sunset" in headers
    return headers.get("Deprecation")


@pytest.mark.parametrize(("since", "expected"), [(SINCE, SINCE_EPOCH), (None, None)],
                         ids=["since", "no-since"])
async def test_the_deprecation_date_does_not_move_on_reload_or_restart(
    start_gateway: GatewayFactory, backend: Backend, tmp_path: Path,
    since: dt.date | None, expected: str | None,
) -> None:
    signer = make_signer("ES256")
    first = await start_gateway(signer=signer, client=_legacy(since))
    assert await _deprecation(first) == expected
    text = gateway_yaml(backend.url, {"keys": [signer.public_jwk]}, client=_legacy(since))
    await first.gateway.reload(parse_settings(text, base_dir=tmp_path,
                                              env={"CI_SECRET": BACKEND_SECRET}))
    assert await _deprecation(first) == expected
    restarted = await start_gateway(signer=signer, client=_legacy(since))
    assert await _deprecation(restarted) == expected


def test_since_after_until_is_refused(tmp_path: Path) -> None:
    client = ("legacy_auth: {allow: [client_secret_basic], until: 2026-01-31, "
              "since: 2026-02-01}")
    text = gateway_yaml("http://127.0.0.1:1", {"keys": [make_signer("ES256").public_jwk]},
                        client=client)
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "x"})
    [(path, message)] = caught.value.problems
    assert path == f"clients.{CLIENT}.legacy_auth" and "after until" in message
