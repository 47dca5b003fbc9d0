"""The README's CA-anchored recipes, run on loopback: openssl makes the CA and the client's
certificate, MSAL (subject name and issuer, ``public_certificate``) authenticates with it
against the gateway configured as the README says, then rotates to a new certificate.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msal
import pytest
import requests
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.serialization import NoEncryption, pkcs12

from gateway.config.loading import load_settings
from gateway.core.certificate_credential import CertificateCredential
from gateway.web.app import Gateway, create_gateway
from tests.conftest import BACKEND_SECRET, TOKEN_PATH, Backend
from tests.support.clients import decode_unverified, form_of, loopback_only
from tests.support.pki import CA
from tests.system.test_client_libraries import (
    AUTHORITY_PATH,
    DISCOVERY_PATH,
    assert_rewritten,
    discovery_backend,
    in_thread,
    token_posts,
    two_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## CA-anchored certificate clients"
CLIENT: Final = "partner-acme"
SUBJECT: Final = "CN=partner-acme,O=Acme Corp,C=DE"
# What the README's gateway block names that only exists in production.
README_ISSUER: Final = "https://idp.example.com/realms/main"
_MARKED = re.compile(r"^<!-- recipe: certificate/(?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n"
                     r"(?P<body>.*?)\n```$", re.MULTILINE | re.DOTALL)


def recipe(name: str) -> tuple[str, str]:
    """(language, body) of the section's block marked ``<!-- recipe: certificate/name -->``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    section = text[start:text.index("\n## ", start + 1)]
    found = {m["name"]: (m["lang"], m["body"] + "\n") for m in _MARKED.finditer(section)}
    assert name in found, f"README: no block marked <!-- recipe: certificate/{name} -->"
    return found[name]


def run_shell(name: str, cwd: Path) -> str:
    lang, script = recipe(name)
    assert lang == "sh"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@dataclass
class HttpsGateway:
    gateway: Gateway
    base: str
    ca_file: str  # the TLS test CA, for MSAL's session
    backend: Backend
    audit: io.StringIO
    sessions: list[requests.Session]

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        return [line for line in lines if "event" not in line]  # decisions, not key events

    def msal_app(self, credential: dict[str, Any]) -> tuple[msal.ConfidentialClientApplication,
                                                            list[requests.PreparedRequest]]:
        session = requests.Session()
        session.verify = self.ca_file
        self.sessions.append(session)
        sent = loopback_only(session)
        app = msal.ConfidentialClientApplication(
            CLIENT, client_credential=credential, oidc_authority=self.base + AUTHORITY_PATH,
            http_client=session)
        return app, sent


Starter = Callable[[Path], Awaitable[HttpsGateway]]


@pytest.fixture
async def start_readme_gateway(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[Starter]:
    """The README's gateway block on https (issuer moved to loopback), from ``workdir``."""
    started: list[tuple[HttpsGateway, web.BaseRunner]] = []

    async def start(workdir: Path) -> HttpsGateway:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            base = f"https://127.0.0.1:{sock.getsockname()[1]}"
            backend = await discovery_backend(aiohttp_server, {
                "issuer": base + AUTHORITY_PATH, "token_endpoint": base + TOKEN_PATH,
                "authorization_endpoint": base + "/oauth2/authorize",
                "token_endpoint_auth_methods_supported": ["private_key_jwt"]})
            tls = trustme.CA()
            leaf = tls.issue_cert("127.0.0.1")
            leaf.cert_chain_pems[0].write_to_path(str(workdir / "gateway.crt"))
            leaf.private_key_pem.write_to_path(str(workdir / "gateway.key"))
            tls.cert_pem.write_to_path(str(workdir / "tls-ca.pem"))
            lang, block = recipe("gateway")
            assert lang == "yaml" and README_ISSUER in block
            text = (block.replace(README_ISSUER, base + AUTHORITY_PATH)
                    .replace("/realms/main/", AUTHORITY_PATH + "/")
                    + f'backend: {{url: "{backend.url}", timeout: 2s}}\n'
                    + f"endpoints: [{TOKEN_PATH}]\n")
            config = workdir / "gateway.yaml"
            config.write_text(text)
            audit = io.StringIO()
            gateway = create_gateway(load_settings(config, env={"ACME_SECRET": BACKEND_SECRET}),
                                     audit_stream=audit, config_path=config)
            runner = gateway.public_runner(access_log=None)
            await runner.setup()
            https = HttpsGateway(gateway, base, str(workdir / "tls-ca.pem"), backend, audit, [])
            started.append((https, runner))
            await web.SockSite(runner, sock, ssl_context=gateway.tls_context).start()
        except BaseException:
            sock.close()
            raise
        return https

    yield start
    for https, runner in started:
        for session in https.sessions:
            session.close()
        await runner.cleanup()


def readme_credential(workdir: Path) -> dict[str, Any]:
    """What the README's MSAL block passes, read from ``workdir``."""
    lang, block = recipe("msal")
    assert lang == "python" and '"public_certificate": open("client.crt").read()' in block
    assert '"private_key": open("client.key").read()' in block
    return {"private_key": (workdir / "client.key").read_text(),
            "public_certificate": (workdir / "client.crt").read_text()}


def openssl_serial(workdir: Path) -> str:
    done = subprocess.run(["openssl", "x509", "-in", "client.crt", "-noout", "-serial"],
                          cwd=workdir, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip().removeprefix("serial=")


async def test_msal_with_the_openssl_certificate_rotates_without_a_gateway_change(
    start_readme_gateway: Starter, tmp_path: Path,
) -> None:
    run_shell("ca", tmp_path)
    assert run_shell("client", tmp_path).strip() == f"subject={SUBJECT}"
    gw = await start_readme_gateway(tmp_path)
    runtime = gw.gateway.runtime
    app, sent = await in_thread(gw.msal_app, readme_credential(tmp_path))
    results = await in_thread(two_tokens, app)

    assert [r.get("access_token") for r in results] == ["at-1", "at-2"], results
    assertions = [form_of(r)["client_assertion"] for r in sent if r.method == "POST"]
    assert assertions[0] == assertions[1]  # MSAL re-sends one: allow_assertion_reuse
    header, claims = decode_unverified(assertions[0])
    assert header["alg"] == "PS256" and len(header["x5c"]) == 1  # the leaf alone
    assert "x5t#S256" in header and claims["iss"] == claims["sub"] == CLIENT
    lines = gw.audit_lines()
    assert [(line["reason"], line["method"]) for line in lines] == [("ok", "certificate")] * 2
    assert lines[0]["certificate_subject"] == SUBJECT
    assert lines[0]["certificate_serial"] == openssl_serial(tmp_path)
    for seen in token_posts(gw.backend):
        assert_rewritten(seen, CLIENT)

    # The client rotates: a new key and certificate from the same CA (the README's block
    # again). The gateway is neither reconfigured nor reloaded.
    first_serial = lines[0]["certificate_serial"]
    run_shell("client", tmp_path)
    app, _ = await in_thread(gw.msal_app, readme_credential(tmp_path))
    result = await in_thread(app.acquire_token_for_client, ["api://orders/.default"])
    assert result.get("access_token") == "at-3", result
    last = gw.audit_lines()[-1]
    assert (last["reason"], last["certificate_serial"]) == ("ok", openssl_serial(tmp_path))
    assert last["certificate_serial"] != first_serial
    assert gw.gateway.runtime is runtime


async def test_msal_pfx_with_public_certificate_under_an_intermediate_in_ca_file(
    start_readme_gateway: Starter, tmp_path: Path,
) -> None:
    issuing = CA("Acme Partners Root").intermediate("Acme Partners Issuing CA")
    leaf = issuing.issue(SUBJECT, key_kind="rsa")
    (tmp_path / "partners-ca.pem").write_bytes(issuing.pem)  # the issuing CA alone anchors
    pfx = tmp_path / "client.pfx"
    pfx.write_bytes(pkcs12.serialize_key_and_certificates(
        b"client", leaf.key, leaf.cert, None, NoEncryption()))
    gw = await start_readme_gateway(tmp_path)
    app, sent = await in_thread(gw.msal_app, {"private_key_pfx_path": str(pfx),
                                              "public_certificate": True})
    result = await in_thread(app.acquire_token_for_client, ["api://orders/.default"])

    assert result.get("access_token") == "at-1", result
    line = gw.audit_lines()[-1]
    assert (line["method"], line["certificate_thumbprint"]) == ("certificate", leaf.thumbprint)
    (credential,) = gw.gateway.runtime.clients[CLIENT].credentials
    assert isinstance(credential, CertificateCredential) and credential.trust.validations == 1
    assert [r.url for r in sent] == [gw.base + DISCOVERY_PATH, gw.base + TOKEN_PATH]
