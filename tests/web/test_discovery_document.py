"""Discovery through the gateway: the IdP's document names the gateway, and a client that
discovers its endpoints authenticates at the gateway with private_key_jwt."""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.config.loading import parse_settings
from gateway.config.settings import LegacyAuthSettings
from gateway.web.app import Gateway, create_gateway
from tests.conftest import BACKEND_SECRET, ROOMY_LIMITS, GatewayServer, Seen
from tests.support.tokens import Signer, make_signer

REALM = "/realms/main"
OIDC = REALM + "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server" + REALM
BARE_OIDC = "/.well-known/openid-configuration"
TOKEN = REALM + "/protocol/openid-connect/token"
INTROSPECT = TOKEN + "/introspect"
REVOKE = REALM + "/protocol/openid-connect/revoke"
CERTS = REALM + "/protocol/openid-connect/certs"
AUTHORIZE = REALM + "/protocol/openid-connect/auth"
USERINFO = REALM + "/protocol/openid-connect/userinfo"
CLIENT = "ci-pipeline"
ALGORITHMS = ["PS256", "ES256", "EdDSA"]
BACKEND_ETAG = '"backend-etag-1"'


def keycloak_document(origin: str, issuer: str) -> dict[str, Any]:
    """What Keycloak serves for a realm, abridged: every URL on the host it was asked on."""
    return {
        "issuer": issuer,
        "authorization_endpoint": origin + AUTHORIZE,
        "token_endpoint": origin + TOKEN,
        "introspection_endpoint": origin + INTROSPECT,
        "userinfo_endpoint": origin + USERINFO,
        "end_session_endpoint": origin + REALM + "/protocol/openid-connect/logout",
        "jwks_uri": origin + CERTS,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth",
            "client_secret_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": [
            "PS384", "ES384", "RS384", "HS256", "HS512", "ES256", "RS256"],
        "introspection_endpoint_auth_methods_supported": [
            "private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth",
            "client_secret_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": ["HS256", "RS256"],
        "revocation_endpoint": origin + REVOKE,
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic",
                                                       "client_secret_post"],
        "revocation_endpoint_auth_signing_alg_values_supported": ["HS256"],
        "mtls_endpoint_aliases": {"token_endpoint": origin + TOKEN,
                                  "userinfo_endpoint": origin + USERINFO},
    }


def rfc8414_document(origin: str, issuer: str) -> dict[str, Any]:
    """An OAuth 2.0 authorization server's metadata (RFC 8414 §2), as a plain AS serves it."""
    return {
        "issuer": issuer,
        "token_endpoint": origin + TOKEN,
        "jwks_uri": origin + CERTS,
        "revocation_endpoint": origin + REVOKE,
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["orders:read"],
        "service_documentation": "https://docs.example.test/oauth",
    }


@dataclass
class Idp:
    """The legacy IdP: documents at their paths, a token for anything else; it records all."""

    server: TestServer
    documents: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def serve(self, path: str, document: dict[str, Any] | bytes, *, status: int = 200,
              headers: dict[str, str] | None = None) -> bytes:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        given = {"Content-Type": "application/json", "ETag": BACKEND_ETAG,
                 "Cache-Control": "public, max-age=3600",
                 "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", "Vary": "Accept-Encoding"}
        self.documents[path] = (status, body, {**given, **(headers or {})})
        return body

    def asked(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path_qs.partition("?")[0] == path]


@pytest.fixture
async def idp(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Idp:
    state: dict[str, Idp] = {}

    async def answer(request: web.Request) -> web.StreamResponse:
        me = state["idp"]
        me.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers),
                            await request.read()))
        if request.path in me.documents:
            status, body, headers = me.documents[request.path]
            return web.Response(status=status, body=body, headers=headers)
        return web.json_response({"access_token": f"at-{len(me.seen)}", "token_type": "Bearer",
                                  "expires_in": 300, "active": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    state["idp"] = Idp(await aiohttp_server(app))
    return state["idp"]


@dataclass
class Live:
    gateway: Gateway
    base: str  # where the gateway listens, http://127.0.0.1:<port>
    signer: Signer
    issuer: str

    async def get(self, path: str, *, method: str = "GET",
                  headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                method, self.base + path, headers=headers) as response:
            return response.status, CIMultiDict(response.headers), await response.read()

    def assertion(self, audience: str, alg: str | None = None) -> str:
        now = int(time.time())
        return self.signer.sign(self.signer.header(alg=alg or self.signer.alg),
                                {"iss": CLIENT, "sub": CLIENT, "aud": audience, "iat": now,
                                 "exp": now + 60, "jti": uuid.uuid4().hex})


Starter = Callable[..., Awaitable[Live]]


@pytest.fixture
async def start(idp: Idp, tmp_path: Path) -> AsyncIterator[Starter]:
    """A gateway whose address is known before it starts, so that it can be its public_url
    (or its issuer: what a client discovering it is given)."""
    servers: list[GatewayServer] = []

    async def start_one(*, issuer: str = "https://idp.example.test" + REALM,
                        public_url: bool = True, passthrough: tuple[str, ...] = (OIDC, CERTS),
                        client: str = "") -> Live:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        issuer = issuer.replace("{gateway}", base)
        signer = make_signer("ES256")
        public = f"public_url: {base}\n" if public_url else ""
        text = f"""{ROOMY_LIMITS}
issuer: {issuer}
{public}backend: {{url: "{idp.url}", timeout: 2s}}
endpoints: [{TOKEN}, {INTROSPECT}, {REVOKE}]
passthrough: {json.dumps(list(passthrough))}
policy: {{algorithms: {json.dumps(ALGORITHMS)}}}
clients:
  {CLIENT}:
    jwks: {json.dumps({"keys": [signer.public_jwk]})}
    backend_auth: {{method: client_secret_basic, secret: !env CI_SECRET}}
    {client}
"""
        settings = parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": BACKEND_SECRET})
        gateway = create_gateway(settings, audit_stream=io.StringIO())
        server = GatewayServer(gateway, socket_factory=lambda *_: sock)
        await server.start_server()
        servers.append(server)
        return Live(gateway, base, signer, issuer)

    yield start_one
    for server in servers:
        await server.close()


def methods_metadata(document: dict[str, Any], kind: str) -> tuple[Any, Any]:
    return (document.get(f"{kind}_endpoint_auth_methods_supported"),
            document.get(f"{kind}_endpoint_auth_signing_alg_values_supported"))


async def test_a_keycloak_document_names_the_gateway_for_what_it_serves(
    start: Starter, idp: Idp
) -> None:
    gw = await start()
    idp.serve(OIDC, keycloak_document(idp.url, gw.issuer))  # Keycloak without a hostname set
    status, headers, body = await gw.get(OIDC)
    assert status == 200
    document = json.loads(body)
    assert document["issuer"] == gw.issuer
    for name, path in (("token_endpoint", TOKEN), ("introspection_endpoint", INTROSPECT),
                       ("revocation_endpoint", REVOKE), ("jwks_uri", CERTS)):
        assert document[name] == gw.base + path, name
    assert document["mtls_endpoint_aliases"]["token_endpoint"] == gw.base + TOKEN
    # Not served by the gateway: the IdP's own (a browser flow never meets the gateway).
    assert document["authorization_endpoint"] == idp.url + AUTHORIZE
    assert document["userinfo_endpoint"] == idp.url + USERINFO
    for kind in ("token", "introspection", "revocation"):
        assert methods_metadata(document, kind) == (["private_key_jwt"], ALGORITHMS), kind
    assert document["grant_types_supported"] == keycloak_document("", "")[
        "grant_types_supported"]
    # The HTTP around it describes the new body.
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Content-Type"] == "application/json"
    assert headers["ETag"] not in (BACKEND_ETAG, f"W/{BACKEND_ETAG}")
    assert "Last-Modified" not in headers and "Content-Encoding" not in headers
    assert headers["Cache-Control"] == "public, max-age=3600"
    [asked] = idp.asked(OIDC)
    assert asked.method == "GET" and asked.headers["Accept-Encoding"] == "identity"


async def test_an_rfc8414_document_at_the_path_inserted_form(start: Starter, idp: Idp) -> None:
    gw = await start(passthrough=(RFC8414, CERTS),
                     client="legacy_auth: {allow: [client_secret_post]}")
    # This IdP names the public issuer's host, which is not where the gateway is reached.
    idp.serve(RFC8414, rfc8414_document("https://idp.example.test", gw.issuer))
    status, _, body = await gw.get(RFC8414)
    assert status == 200
    document = json.loads(body)
    assert document["issuer"] == gw.issuer == "https://idp.example.test" + REALM
    assert document["token_endpoint"] == gw.base + TOKEN
    assert document["revocation_endpoint"] == gw.base + REVOKE
    assert document["service_documentation"] == "https://docs.example.test/oauth"
    # A client in migration mode may still send its secret: the secret method is listed.
    methods = ["private_key_jwt", "client_secret_post"]
    assert methods_metadata(document, "token") == (methods, ALGORITHMS)
    assert methods_metadata(document, "revocation") == (methods, ALGORITHMS)
    # Not in the document, so not added.
    assert methods_metadata(document, "introspection") == (None, None)


async def test_an_openid_client_style_discovery_then_token_and_introspection(
    start: Starter, idp: Idp
) -> None:
    """openid-client's discovery(): the document at issuer + /.well-known/openid-configuration,
    its issuer equal to the one given, then the discovered endpoints with private_key_jwt."""
    gw = await start(issuer="{gateway}", public_url=False, passthrough=(BARE_OIDC,))
    # An IdP that builds its URLs from the Host it is asked on (as Django OAuth Toolkit does)
    # names the backend, where a secret would be checked and no assertion ever is.
    idp.serve(BARE_OIDC, keycloak_document(idp.url, gw.issuer))
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.issuer + BARE_OIDC) as response:
            assert response.status == 200
            document = await response.json()
        assert document["issuer"] == gw.issuer
        assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
        alg = gw.signer.alg  # the client's key decides; the document must allow it
        assert alg in document["token_endpoint_auth_signing_alg_values_supported"]
        for endpoint, extra in (("token_endpoint", {"grant_type": "client_credentials"}),
                                ("introspection_endpoint", {"token": "at-1"})):
            url = document[endpoint]
            assert url.startswith(gw.base + "/"), url
            form = {**extra, "client_id": CLIENT,
                    "client_assertion_type":
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": gw.assertion(gw.issuer, alg)}
            async with session.post(url, data=form) as response:
                assert response.status == 200, await response.text()
                assert "access_token" in await response.json()
    token_posts = [seen for seen in idp.seen if seen.method == "POST"]
    assert [seen.path_qs for seen in token_posts] == [TOKEN, INTROSPECT]
    expected = "Basic " + base64.b64encode(f"{CLIENT}:{BACKEND_SECRET}".encode()).decode()
    assert {seen.headers["Authorization"] for seen in token_posts} == {expected}


async def test_validators_are_the_gateways_and_never_reach_the_backend(
    start: Starter, idp: Idp
) -> None:
    gw = await start()
    idp.serve(OIDC, keycloak_document(idp.url, gw.issuer))
    _, first, body = await gw.get(OIDC)
    tag = first["ETag"]
    for sent in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        status, headers, empty = await gw.get(OIDC, headers={"If-None-Match": sent})
        assert (status, empty, headers["ETag"]) == (304, b"", tag), sent
        assert headers["Cache-Control"] == "public, max-age=3600"
    # The backend's own tag names the backend's body: it never matches ours.
    status, _, again = await gw.get(OIDC, headers={"If-None-Match": BACKEND_ETAG,
                                                   "If-Modified-Since": "Mon, 01 Jan 2024 "
                                                                        "00:00:00 GMT"})
    assert (status, again) == (200, body)
    fetched = idp.asked(OIDC)
    assert fetched  # else the loop below checks nothing
    for asked in fetched:
        assert not {"If-None-Match", "If-Modified-Since"} & set(asked.headers)


async def test_head_answers_the_gets_length_and_tag(start: Starter, idp: Idp) -> None:
    gw = await start()
    idp.serve(OIDC, keycloak_document(idp.url, gw.issuer))
    _, got, body = await gw.get(OIDC)
    status, headers, empty = await gw.get(OIDC, method="HEAD")
    assert (status, empty) == (200, b"")
    assert int(headers["Content-Length"]) == len(body)
    assert headers["ETag"] == got["ETag"]
    assert [asked.method for asked in idp.asked(OIDC)] == ["GET", "GET"]


async def test_a_range_or_compression_request_gets_the_whole_rewritten_document(
    start: Starter, idp: Idp
) -> None:
    """Neither a slice nor an encoding of the backend's bytes reaches the client."""
    gw = await start()
    idp.serve(OIDC, keycloak_document(idp.url, gw.issuer))
    status, headers, body = await gw.get(OIDC, headers={"Range": "bytes=0-40",
                                                        "If-Range": BACKEND_ETAG,
                                                        "Accept-Encoding": "gzip, br"})
    assert status == 200 and "Content-Encoding" not in headers
    assert json.loads(body)["token_endpoint"] == gw.base + TOKEN
    [asked] = idp.asked(OIDC)
    assert not {"Range", "If-Range"} & set(asked.headers)
    assert asked.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(("body", "headers"), [
    (b"<html>maintenance</html>", {"Content-Type": "text/html"}),
    (b'{"issuer": "x", "token_endpoint": ', {}),
    (b'["not", "an", "object"]', {}),
    (b'{"pad": "' + b"x" * (600 * 1024) + b'"}', {}),
    (None, {"Content-Encoding": "gzip"}),  # asked for identity, compressed anyway
], ids=["html", "truncated", "array", "oversized", "gzip-regardless"])
async def test_a_document_that_cannot_be_rewritten_is_never_served(
    start: Starter, idp: Idp, body: bytes | None, headers: dict[str, str]
) -> None:
    gw = await start()
    document = json.dumps(keycloak_document(idp.url, gw.issuer)).encode()
    idp.serve(OIDC, gzip.compress(document) if body is None else body, headers=headers)
    status, answered, answer = await gw.get(OIDC, headers={"Accept-Encoding": "gzip"})
    assert status == 502
    assert json.loads(answer)["error"] == "bad_gateway"
    assert answered["Cache-Control"] == "no-store"
    assert idp.url.encode() not in answer


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_backend_errors_pass_through_unchanged(
    start: Starter, idp: Idp, status: int
) -> None:
    gw = await start()
    sent = idp.serve(OIDC, b'{"error": "realm not found", "at": "' + idp.url.encode() + b'"}',
                     status=status)
    answered, headers, body = await gw.get(OIDC)
    assert (answered, body) == (status, sent)
    assert headers["ETag"] == BACKEND_ETAG


async def test_other_methods_and_other_passthrough_paths_are_forwarded_as_they_are(
    start: Starter, idp: Idp
) -> None:
    gw = await start()
    document = idp.serve(OIDC, keycloak_document(idp.url, gw.issuer))
    keys = idp.serve(CERTS, {"keys": [], "note": idp.url + TOKEN})
    status, _, body = await gw.get(OIDC, method="POST")
    assert (status, body) == (200, document)
    status, headers, body = await gw.get(CERTS)
    assert (status, body, headers["ETag"]) == (200, keys, BACKEND_ETAG)


async def test_a_reload_changes_the_document_and_its_tag(start: Starter, idp: Idp) -> None:
    gw = await start()
    idp.serve(OIDC, keycloak_document(idp.url, gw.issuer))
    _, before, body = await gw.get(OIDC)
    assert json.loads(body)["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    settings = gw.gateway.slot.current.settings
    client = settings.clients[CLIENT].model_copy(update={
        "legacy_auth": LegacyAuthSettings(allow=("client_secret_basic",))})
    await gw.gateway.reload(settings.model_copy(update={"clients": {CLIENT: client}}))
    status, after, body = await gw.get(OIDC, headers={"If-None-Match": before["ETag"]})
    assert status == 200 and after["ETag"] != before["ETag"]
    assert json.loads(body)["token_endpoint_auth_methods_supported"] == [
        "private_key_jwt", "client_secret_basic"]
