"""Fixtures of the federation tests: a gateway lab and a GitHub-like issuer on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Backend, GatewayStarter
from tests.support.platform_issuer import PlatformIssuer, platform_issuer
from tests.web.test_federation import Lab


@pytest.fixture
def lab(backend: Backend, tmp_path: Path, gateway_server: GatewayStarter) -> Lab:
    return Lab(backend, tmp_path, gateway_server)


@pytest.fixture
async def github(tmp_path: Path) -> AsyncIterator[PlatformIssuer]:
    async with platform_issuer(tmp_path, "github") as issuer:
        yield issuer
