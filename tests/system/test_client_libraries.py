"""Real client libraries against the gateway on loopback: the mint command, Authlib and MSAL.

Each test pins what the library actually sends and the gateway settings it needs (README,
"Client libraries"). The libraries are synchronous, so they run in a thread while the
gateway serves on the test's event loop; their sessions refuse any non-loopback URL.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msal
import pytest
import requests
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from multidict import CIMultiDict

from gateway.config.loading import parse_settings
from gateway.web.app import create_gateway
from tests.conftest import (
    ASSERTION_TYPE,
    BACKEND_SECRET,
    ISSUER,
    TOKEN_PATH,
    Backend,
    GatewayFactory,
    Seen,
)
from tests.support.clients import (
    ClientCertificate,
    decode_unverified,
    form_of,
    loopback_only,
    make_client_certificate,
)
from tests.support.tokens import Signer, make_signer

REPO = Path(__file__).resolve().parents[2]
CALL_TIMEOUT = 30.0  # seconds: outer bound on one library call (each HTTP request has 10 s)
# What a client in production posts to and, with Authlib's defaults, puts in `aud`.
PUBLIC_TOKEN_URL = ISSUER + TOKEN_PATH

T = TypeVar("T")


async def in_thread(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.wait_for(asyncio.to_thread(call, *args), CALL_TIMEOUT)


def token_posts(backend: Backend) -> list[Seen]:
    return [seen for seen in backend.seen if seen.method == "POST"]


def assert_rewritten(seen: Seen, client_id: str) -> None:
    """The backend got the client's parameters and its Basic credential, no assertion."""
    form = dict(seen.form())
    assert form["grant_type"] == "client_credentials"
    assert not {"client_assertion", "client_assertion_type", "client_id"} & form.keys()
    basic = base64.b64encode(f"{client_id}:{BACKEND_SECRET}".encode()).decode()
    assert seen.headers["Authorization"] == f"Basic {basic}"


# -- curl and `pkjwt-gateway mint` ----------------------------------------------------------

def run_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                            text=True, timeout=60, check=True, cwd=REPO)
    return result.stdout


def post_form(url: str, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """What `curl -d a=b -d c=d URL` does: one urlencoded POST, no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode())
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.loads(refused.read())


async def test_curl_with_keygen_and_mint_needs_no_special_settings(
    start_gateway: GatewayFactory, backend: Backend, tmp_path: Path
) -> None:
    key_file = tmp_path / "ci.pem"
    printed = await in_thread(run_cli, "keygen", "--alg", "ES256", "--kid", "ci-2025-01",
                              "--out", str(key_file))
    public_jwk = json.loads(printed)["keys"][0]
    gw = await start_gateway(Signer("ES256", "ci-2025-01", None, public_jwk))
    assertion = (await in_thread(run_cli, "mint", "--key", str(key_file), "--client-id",
                                 "ci-pipeline", "--audience", ISSUER, "--kid",
                                 "ci-2025-01")).strip()
    header, claims = decode_unverified(assertion)
    assert header == {"alg": "ES256", "typ": "client-authentication+jwt", "kid": "ci-2025-01"}
    assert claims["aud"] == ISSUER and claims["exp"] - claims["iat"] == 60

    fields = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
              "client_assertion": assertion}
    status, body = await in_thread(post_form, gw.url + TOKEN_PATH, fields)
    assert status == 200 and body["access_token"] == "at-1"
    assert_rewritten(token_posts(backend)[0], "ci-pipeline")
    # One assertion per request: the same one again is a replay.
    status, body = await in_thread(post_form, gw.url + TOKEN_PATH, fields)
    assert (status, body["error"]) == (401, "invalid_client")
    assert gw.audit_lines()[-1]["reason"] == "replayed"
    assert len(token_posts(backend)) == 1


# -- Authlib --------------------------------------------------------------------------------

@dataclass
class Fetched:
    token: dict[str, Any] | None
    error: str | None
    sent: list[requests.PreparedRequest]

    def assertions(self) -> list[str]:
        return [form_of(request)["client_assertion"] for request in self.sent]


def authlib_fetch(url: str, client_id: str, key: Any, auth: PrivateKeyJWT,
                  times: int = 1) -> Fetched:
    """client_credentials tokens through Authlib's requests integration, one session."""
    with OAuth2Session(client_id, key, token_endpoint_auth_method=auth) as session:
        sent = loopback_only(session)
        token = None
        for _ in range(times):
            try:
                token = dict(session.fetch_token(url, grant_type="client_credentials"))
            except OAuthError as refused:
                return Fetched(token, refused.error, sent)
        return Fetched(token, None, sent)


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's private_key_jwt with a 60 s assertion: 1.9 has no option for the lifetime.

    The key must be a joserfc key object (a PEM string is deprecated by Authlib 1.9).
    """

    lifetime = 60

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(private_key_jwt_sign(
            auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
            alg=self.alg, header=dict(self.headers or {}), expires_in=self.lifetime))


@pytest.mark.parametrize(("client", "outcome"), [
    ("", "bad_audience"),
    ("audience: compat", "lifetime_too_long"),
    ("audience: compat\n    max_lifetime: 3600s", "ok"),
])
async def test_authlib_defaults_need_compat_audience_and_a_3600s_lifetime(
    start_gateway: GatewayFactory, backend: Backend, client: str, outcome: str
) -> None:
    signer = make_signer("RS256")
    gw = await start_gateway(signer, client=client)
    pem = signer.private_key.as_pem(private=True).decode()
    # Authlib's aud is the URL it posts to; in production that is the public token URL.
    fetched = await in_thread(authlib_fetch, gw.url + TOKEN_PATH, "ci-pipeline", pem,
                              PrivateKeyJWT(PUBLIC_TOKEN_URL))

    (assertion,) = fetched.assertions()
    header, claims = decode_unverified(assertion)
    assert header == {"typ": "JWT", "alg": "RS256"}  # no kid: the gateway tries the keys
    assert claims["aud"] == PUBLIC_TOKEN_URL
    assert claims["iss"] == claims["sub"] == "ci-pipeline"
    assert claims["exp"] - claims["iat"] == 3600 and isinstance(claims["exp"], int)
    assert "nbf" not in claims and "client_id" not in form_of(fetched.sent[0])
    assert gw.audit_lines()[-1]["reason"] == outcome
    if outcome == "ok":
        assert fetched.token is not None and fetched.token["access_token"] == "at-1"
        assert_rewritten(token_posts(backend)[0], "ci-pipeline")
    else:
        assert fetched.error == "invalid_client" and not backend.seen


async def test_authlib_with_aud_issuer_and_a_60s_lifetime_needs_no_compat(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    signer = make_signer("ES256")
    gw = await start_gateway(signer)  # default settings
    auth = ShortLivedPrivateKeyJWT(ISSUER, alg="ES256", headers={"kid": signer.kid})
    fetched = await in_thread(authlib_fetch, gw.url + TOKEN_PATH, "ci-pipeline",
                              signer.private_key, auth, 2)

    assert fetched.error is None and fetched.token is not None
    first, second = (decode_unverified(a) for a in fetched.assertions())
    assert first[0] == {"typ": "JWT", "kid": signer.kid, "alg": "ES256"}
    assert first[1]["aud"] == ISSUER and first[1]["exp"] - first[1]["iat"] == 60
    assert first[1]["jti"] != second[1]["jti"]
    assert [line["reason"] for line in gw.audit_lines()] == ["ok", "ok"]
    for seen in token_posts(backend):
        assert_rewritten(seen, "ci-pipeline")


async def test_authlib_claims_argument_can_freeze_the_jti(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    """PrivateKeyJWT(claims=...) keeps its first jti in that dict (Authlib 1.7.2 to 1.9.10)."""
    signer = make_signer("ES256")
    gw = await start_gateway(signer, client="audience: compat\n    max_lifetime: 3600s")
    auth = PrivateKeyJWT(PUBLIC_TOKEN_URL, alg="ES256", claims={"purpose": "ci"})
    fetched = await in_thread(authlib_fetch, gw.url + TOKEN_PATH, "ci-pipeline",
                              signer.private_key, auth, 2)

    first, second = (decode_unverified(a)[1] for a in fetched.assertions())
    reasons = [line["reason"] for line in gw.audit_lines()]
    if first["jti"] == second["jti"]:  # the versions named above: the repeat is a replay
        assert fetched.error == "invalid_client" and reasons == ["ok", "replayed"]
        assert len(token_posts(backend)) == 1
    else:  # an Authlib that mints a jti per request
        assert fetched.error is None and reasons == ["ok", "ok"]


# -- MSAL -----------------------------------------------------------------------------------

MSAL_CLIENT = "msal-app"
AUTHORITY_PATH = "/idp"  # MSAL wants an authority with a path segment
DISCOVERY_PATH = AUTHORITY_PATH + "/.well-known/openid-configuration"


@dataclass
class HttpsGateway:
    """The gateway on https with TLS from a test CA, in front of an IdP that serves discovery."""

    base: str  # https://127.0.0.1:<port>, the gateway's public URL
    ca_file: str
    backend: Backend
    audit: io.StringIO
    sent: list[requests.PreparedRequest] = field(default_factory=list)
    sessions: list[requests.Session] = field(default_factory=list)

    @property
    def authority(self) -> str:  # also the issuer
        return self.base + AUTHORITY_PATH

    def reasons(self) -> list[str]:
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        return [line["reason"] for line in lines if "event" not in line]  # not key events

    def sent_assertions(self) -> list[str]:
        return [form_of(r)["client_assertion"] for r in self.sent if r.method == "POST"]

    def msal_app(self, credential: dict[str, Any],
                 **options: Any) -> msal.ConfidentialClientApplication:
        """Build the app (MSAL fetches discovery here) with a loopback-only https session."""
        session = requests.Session()
        session.verify = self.ca_file
        self.sessions.append(session)
        self.sent = loopback_only(session)
        return msal.ConfidentialClientApplication(
            MSAL_CLIENT, client_credential=credential, oidc_authority=self.authority,
            http_client=session, **options)


def msal_yaml(issuer: str, backend_url: str, jwk: dict[str, Any], client: str) -> str:
    return f"""
issuer: {issuer}
listen: {{tls: {{cert_file: gateway.crt, key_file: gateway.key}}}}
backend: {{url: "{backend_url}", timeout: 2s}}
endpoints: [{TOKEN_PATH}]
passthrough: [{DISCOVERY_PATH}]
clients:
  {MSAL_CLIENT}:
    jwks: {json.dumps({"keys": [jwk]})}
    backend_auth: {{method: client_secret_basic, secret: !env CI_SECRET}}
    {client}
"""


async def discovery_backend(
    aiohttp_server: Callable[..., Awaitable[TestServer]], document: dict[str, Any]
) -> Backend:
    """The legacy IdP: its discovery document at DISCOVERY_PATH, a token for anything else."""
    state: dict[str, Backend] = {}

    async def answer(request: web.Request) -> web.Response:
        state["backend"].seen.append(Seen(request.method, request.path_qs,
                                          CIMultiDict(request.headers), await request.read()))
        if request.path == DISCOVERY_PATH:
            return web.json_response(document)
        issued = len(token_posts(state["backend"]))
        return web.json_response({"access_token": f"at-{issued}", "token_type": "Bearer",
                                  "expires_in": 300})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    state["backend"] = Backend(await aiohttp_server(app))
    return state["backend"]


HttpsFactory = Callable[[dict[str, Any], str], Awaitable[HttpsGateway]]


@pytest.fixture
async def start_https_gateway(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> AsyncIterator[HttpsFactory]:
    started: list[tuple[HttpsGateway, web.AppRunner]] = []

    async def start(jwk: dict[str, Any], client: str) -> HttpsGateway:
        # The port is in the issuer and the discovery document, so it is taken first.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            base = f"https://127.0.0.1:{sock.getsockname()[1]}"
            backend = await discovery_backend(aiohttp_server, {
                "issuer": base + AUTHORITY_PATH,
                "authorization_endpoint": base + "/oauth2/authorize",
                "token_endpoint": base + TOKEN_PATH,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            })
            ca = trustme.CA()
            leaf = ca.issue_cert("127.0.0.1")
            leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "gateway.crt"))
            leaf.private_key_pem.write_to_path(str(tmp_path / "gateway.key"))
            ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
            text = msal_yaml(base + AUTHORITY_PATH, backend.url, jwk, client)
            settings = parse_settings(text, base_dir=tmp_path,
                                      env={"CI_SECRET": BACKEND_SECRET})
            audit = io.StringIO()
            gateway = create_gateway(settings, audit_stream=audit)
            runner = gateway.public_runner(access_log=None)
            await runner.setup()
            https = HttpsGateway(base, str(tmp_path / "ca.pem"), backend, audit)
            started.append((https, runner))
            await web.SockSite(runner, sock, ssl_context=gateway.tls_context).start()
        except BaseException:
            sock.close()  # the site owns it only once started
            raise
        return https

    yield start
    for https, runner in started:
        # Client connections first: an idle TLS connection would hold the server's shutdown.
        for session in https.sessions:
            session.close()
        await runner.cleanup()


def msal_jwk(cert: ClientCertificate, alg: str, thumbprint: str | None) -> dict[str, Any]:
    """The client's JWK as the gateway holds it: no kid, the certificate's thumbprint if any."""
    jwk = {**cert.public_jwk, "alg": alg}
    if thumbprint is not None:
        jwk[thumbprint] = cert.x5t if thumbprint == "x5t" else cert.x5t_s256
    return jwk


def msal_credential(cert: ClientCertificate, form: str, tmp_path: Path) -> dict[str, Any]:
    if form == "pem+thumbprint":
        return {"private_key": cert.key_pem, "thumbprint": cert.sha1_hex}
    pfx = tmp_path / "client.pfx"
    pfx.write_bytes(cert.pfx)
    return {"private_key_pfx_path": str(pfx)}


def two_tokens(app: msal.ConfidentialClientApplication) -> list[dict[str, Any]]:
    """Two client_credentials requests from one app: another scope is not in MSAL's cache."""
    return [app.acquire_token_for_client(scopes=[f"api://{name}/.default"])
            for name in ("orders", "reports")]


MSAL_REUSE = "audience: compat\n    max_lifetime: 600s\n    allow_assertion_reuse: true"


@pytest.mark.parametrize(("form", "alg", "thumbprint", "in_jwk"), [
    ("pem+thumbprint", "RS256", "x5t", True),
    ("pfx", "PS256", "x5t#S256", True),
    ("pfx", "PS256", "x5t#S256", False),  # a JWK without thumbprint: the key is tried
])
async def test_msal_certificate_resends_one_assertion_accepted_with_reuse(
    start_https_gateway: HttpsFactory, tmp_path: Path, form: str, alg: str, thumbprint: str,
    in_jwk: bool,
) -> None:
    cert = make_client_certificate(MSAL_CLIENT)
    gw = await start_https_gateway(msal_jwk(cert, alg, thumbprint if in_jwk else None),
                                   MSAL_REUSE)
    app = await in_thread(gw.msal_app, msal_credential(cert, form, tmp_path))
    results = await in_thread(two_tokens, app)

    assert [r.get("access_token") for r in results] == ["at-1", "at-2"], results
    first, again = gw.sent_assertions()
    assert first == again  # the same assertion, same jti, for a second token
    header, claims = decode_unverified(first)
    padded = (cert.x5t if thumbprint == "x5t" else cert.x5t_s256) + "="
    assert header == {"alg": alg, "typ": "JWT", thumbprint: padded}  # no kid, no x5c
    assert claims["aud"] == gw.base + TOKEN_PATH  # the token endpoint: compat
    assert claims["iss"] == claims["sub"] == MSAL_CLIENT
    assert isinstance(claims["exp"], float) and isinstance(claims["iat"], float)
    assert claims["exp"] - claims["iat"] == pytest.approx(600)
    assert "nbf" not in claims
    assert form_of(gw.sent[1])["client_id"] == MSAL_CLIENT  # MSAL also sends client_info=1
    assert gw.reasons() == ["ok", "ok"]
    for seen in token_posts(gw.backend):
        assert_rewritten(seen, MSAL_CLIENT)
        assert dict(seen.form())["scope"].startswith("api://")
    assert [r.url for r in gw.sent] == [gw.base + DISCOVERY_PATH] + [gw.base + TOKEN_PATH] * 2


async def test_msal_second_request_is_a_replay_without_reuse(
    start_https_gateway: HttpsFactory, tmp_path: Path
) -> None:
    cert = make_client_certificate(MSAL_CLIENT)
    gw = await start_https_gateway(msal_jwk(cert, "RS256", "x5t"),
                                   "audience: compat\n    max_lifetime: 600s")
    app = await in_thread(gw.msal_app, msal_credential(cert, "pem+thumbprint", tmp_path))
    first, second = await in_thread(two_tokens, app)

    assert first.get("access_token") == "at-1"
    assert second.get("error") == "invalid_client" and "access_token" not in second
    assert gw.reasons() == ["ok", "replayed"]
    assert len(token_posts(gw.backend)) == 1


async def test_msal_client_claims_aud_issuer_needs_no_compat(
    start_https_gateway: HttpsFactory, tmp_path: Path
) -> None:
    cert = make_client_certificate(MSAL_CLIENT)
    gw = await start_https_gateway(msal_jwk(cert, "RS256", "x5t"),
                                   "max_lifetime: 600s\n    allow_assertion_reuse: true")
    credential = msal_credential(cert, "pem+thumbprint", tmp_path)
    app = await in_thread(lambda: gw.msal_app(credential, client_claims={"aud": gw.authority}))
    results = await in_thread(two_tokens, app)

    assert [r.get("access_token") for r in results] == ["at-1", "at-2"], results
    assert decode_unverified(gw.sent_assertions()[0])[1]["aud"] == gw.authority
    assert gw.reasons() == ["ok", "ok"]


async def test_msal_public_certificate_sends_x5c_which_is_accepted(
    start_https_gateway: HttpsFactory, tmp_path: Path
) -> None:
    cert = make_client_certificate(MSAL_CLIENT)
    gw = await start_https_gateway(msal_jwk(cert, "PS256", "x5t#S256"), MSAL_REUSE)
    credential = {"private_key": cert.key_pem, "public_certificate": cert.cert_pem}
    app = await in_thread(gw.msal_app, credential)
    result = await in_thread(app.acquire_token_for_client, ["api://orders/.default"])

    assert result.get("access_token") == "at-1", result
    header, _ = decode_unverified(gw.sent_assertions()[0])
    assert header["alg"] == "PS256" and "x5c" in header and "x5t#S256" in header
    assert gw.reasons() == ["ok"]
    assert len(token_posts(gw.backend)) == 1


async def test_msal_public_certificate_of_another_key_is_refused(
    start_https_gateway: HttpsFactory, tmp_path: Path
) -> None:
    cert, other = make_client_certificate(MSAL_CLIENT), make_client_certificate(MSAL_CLIENT)
    # No thumbprint in the JWK, so the registered key is tried and verifies the signature;
    # the chain MSAL sends names another key.
    gw = await start_https_gateway(msal_jwk(cert, "PS256", None), MSAL_REUSE)
    credential = {"private_key": cert.key_pem, "public_certificate": other.cert_pem}
    app = await in_thread(gw.msal_app, credential)
    result = await in_thread(app.acquire_token_for_client, ["api://orders/.default"])

    assert result.get("error") == "invalid_client"
    assert gw.reasons() == ["certificate_key_mismatch"]
    assert not token_posts(gw.backend)
