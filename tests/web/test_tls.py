"""The https listener: served with the configured certificate, which a reload replaces."""

from __future__ import annotations

import io
import ssl
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from gateway.config.errors import ConfigError
from gateway.config.loading import load_settings
from gateway.web.app import create_gateway
from tests.conftest import ASSERTION_TYPE, ISSUER, Backend, gateway_yaml
from tests.support.tokens import make_signer


def _write_cert(ca: trustme.CA, directory: Path, name: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_listener_serves_and_reload_swaps_the_certificate(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_SECRET", "tls-test-secret")
    first_ca, second_ca = trustme.CA(), trustme.CA()
    _write_cert(first_ca, tmp_path, "gateway")
    signer = make_signer("ES256")
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(backend.url, {"keys": [signer.public_jwk]}, extra=(
        "\nlisten: {tls: {cert_file: gateway.crt, key_file: gateway.key}}\n")))
    gateway = create_gateway(load_settings(config), audit_stream=io.StringIO(),
                             config_path=config)
    runner = gateway.public_runner(access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=gateway.tls_context).start()
    port = runner.addresses[0][1]
    url = f"https://127.0.0.1:{port}/oauth2/token"

    async def token(trust: trustme.CA) -> int:
        now = int(time.time())
        assertion = signer.sign({"alg": "ES256", "kid": signer.kid}, {
            "iss": "ci-pipeline", "sub": "ci-pipeline", "aud": ISSUER, "iat": now,
            "exp": now + 60, "jti": uuid.uuid4().hex})
        connector = aiohttp.TCPConnector(ssl=_client_context(trust), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, session.post(
                url, data={"grant_type": "client_credentials",
                           "client_assertion_type": ASSERTION_TYPE,
                           "client_assertion": assertion}) as response:
            return response.status

    try:
        assert await token(first_ca) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await token(second_ca)
        _write_cert(second_ca, tmp_path, "gateway")  # a renewed certificate on disk
        await gateway.reload()
        assert await token(second_ca) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await token(first_ca)
        # A broken pair is refused and the certificate in use stays.
        (tmp_path / "gateway.key").write_text("not a key")
        with pytest.raises(ConfigError) as refused:
            await gateway.reload()
        assert refused.value.problems[0][0] == "listen.tls"
        assert "not a key" not in str(refused.value)
        assert await token(second_ca) == 200
    finally:
        await runner.cleanup()


def test_check_refuses_a_missing_certificate(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml("http://127.0.0.1:1", {"keys": [
        make_signer("ES256").public_jwk]}, extra=(
        "\nlisten: {tls: {cert_file: missing.crt, key_file: missing.key}}\n")))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CI_SECRET": "x"}, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2 and "listen.tls" in result.stdout
