"""The import direction of DESIGN §2: the pure core and the base never import I/O libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE_MODULES = ["gateway.errors", "gateway.config", "gateway.config_types", "gateway.config_yaml",
                "gateway.jwkset", "gateway.form", "gateway.legacy",
                "gateway.assertion", "gateway.keyset", "gateway.mint"]
FORBIDDEN = ["aiohttp", "redis", "prometheus_client", "multidict", "yarl"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    # A fresh interpreter, so that nothing imported by other tests hides a violation.
    probe = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "", f"{module} pulls in {result.stdout.strip()}"


def test_probe_detects_a_violation() -> None:
    # The check itself must be able to fail: an adapter module does import aiohttp.
    probe = "import sys, gateway.upstream; print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "True"
