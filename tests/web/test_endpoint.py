"""The token endpoint over real sockets, from the attacker's side: refusals and forwarding."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import json
import textwrap
import time
import uuid
from typing import Any
from urllib.parse import unquote_plus, urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from tests.conftest import (
    BACKEND_SECRET,
    ISSUER,
    TOKEN_PATH,
    Backend,
    GatewayFactory,
    Running,
)
from tests.support.tokens import Signer, make_signer

DROP = object()
CLIENT = "ci-pipeline"


def claims(client_id: str = CLIENT, **overrides: Any) -> dict[str, Any]:
    now = time.time()
    base: dict[str, Any] = {"iss": client_id, "sub": client_id, "aud": ISSUER,
                            "iat": int(now), "exp": int(now) + 60, "jti": uuid.uuid4().hex}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def header(signer: Signer, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": signer.alg, "kid": signer.kid}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def token(signer: Signer, head: dict[str, Any] | None = None, **claim_overrides: Any) -> str:
    return signer.sign(head if head is not None else header(signer), claims(**claim_overrides))


async def refused(gw: Running, backend: Backend, data: Any, status: int, error: str,
                  reason: str, headers: dict[str, str] | None = None) -> CIMultiDict[str]:
    got_status, got_headers, body = await gw.post(data, headers=headers)
    assert (got_status, body.get("error")) == (status, error), body
    assert backend.seen == [], "a refused request reached the backend"
    assert got_headers["Cache-Control"] == "no-store"
    assert set(body) == {"error", "error_description"}
    assert gw.audit_lines()[-1]["reason"] == reason
    assert gw.audit_lines()[-1]["result"] == "rejected"
    return got_headers


# --- accepted requests and what the backend sees ------------------------------------------

async def test_valid_assertion_is_rewritten_for_the_backend(gw: Running, backend: Backend) -> None:
    status, headers, body = await gw.post(gw.form(token(gw.signer), scope="read write"),
                                          headers={"X-Custom": "kept"})
    assert status == 200 and body["token_type"] == "Bearer"
    assert headers["X-Request-Id"]
    [seen] = backend.seen
    assert seen.path_qs == TOKEN_PATH
    assert seen.form() == [("grant_type", "client_credentials"), ("scope", "read write")]
    user, _, password = base64.b64decode(seen.headers["Authorization"][6:]).decode().partition(":")
    assert (unquote_plus(user), unquote_plus(password)) == (CLIENT, BACKEND_SECRET)
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.headers["X-Custom"] == "kept"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert gw.metric("pkjwt_client_auth_total", client=CLIENT, endpoint=TOKEN_PATH,
                     result="accepted", reason="ok", method="private_key_jwt") == 1
    line = gw.audit_lines()[-1]
    assert line["result"] == "accepted" and line["client"] == CLIENT
    assert line["key_thumbprint"] and line["kid"] == gw.signer.kid and line["backend_status"] == 200


async def test_assertion_without_client_id_and_without_kid_passes(
    gw: Running, backend: Backend
) -> None:
    status, _, _ = await gw.post(gw.form(token(gw.signer, header(gw.signer, kid=DROP))))
    assert status == 200 and len(backend.seen) == 1


async def test_client_id_equal_to_sub_passes(gw: Running, backend: Backend) -> None:
    status, _, _ = await gw.post(gw.form(token(gw.signer), client_id=CLIENT))
    assert status == 200
    assert ("client_id", CLIENT) not in backend.seen[0].form()


async def test_hop_by_hop_and_connection_named_headers_are_not_forwarded(
    gw: Running, backend: Backend
) -> None:
    backend.extra_headers = {"X-Backend": "1"}
    status, headers, _ = await gw.post(
        gw.form(token(gw.signer)),
        headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "x",
                 "Proxy-Authorization": "Basic Zm9vOmJhcg==", "TE": "trailers"})
    assert status == 200 and headers["X-Backend"] == "1"
    seen = backend.seen[0].headers
    assert "X-Secret-Hop" not in seen and "Proxy-Authorization" not in seen and "TE" not in seen


async def test_expect_100_continue_is_answered_here_not_forwarded(
    gw: Running, backend: Backend
) -> None:
    # curl sends Expect: 100-continue for bodies over 1 KiB (large RSA assertions).
    status, _, _ = await gw.post(gw.form(token(gw.signer), scope="s" * 1200),
                                 headers={"Expect": "100-continue"})
    assert status == 200
    assert "Expect" not in backend.seen[0].headers


async def test_an_expectation_other_than_continue_is_refused_unforwarded(
    gw: Running, backend: Backend
) -> None:
    status, headers, body = await gw.post(gw.form(token(gw.signer)),
                                          headers={"Expect": "101-switcheroo"})
    assert (status, body["error"]) == (417, "invalid_request")
    assert headers["Cache-Control"] == "no-store"
    assert gw.audit_lines() == [] and backend.seen == []


async def test_backend_errors_are_relayed_as_they_are(gw: Running, backend: Backend) -> None:
    backend.status, backend.body = 400, b'{"error":"invalid_scope"}'
    status, _, body = await gw.post(gw.form(token(gw.signer)))
    assert (status, body) == (400, {"error": "invalid_scope"})


# --- replay ---------------------------------------------------------------------------------

async def test_replayed_assertion_is_refused(gw: Running, backend: Backend) -> None:
    form = gw.form(token(gw.signer))
    assert (await gw.post(form))[0] == 200
    status, _, body = await gw.post(form)
    assert (status, body["error"]) == (401, "invalid_client")
    assert len(backend.seen) == 1
    assert gw.audit_lines()[-1]["reason"] == "replayed"
    assert gw.metric("pkjwt_replay_checks_total", store="memory", result="replayed") == 1


async def test_a_reuse_client_may_resend_the_identical_assertion_only(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client="allow_assertion_reuse: true")
    jti = "resent-by-msal"
    assertion = token(gw.signer, jti=jti)
    assert (await gw.post(gw.form(assertion)))[0] == 200
    assert (await gw.post(gw.form(assertion)))[0] == 200
    # Another assertion carrying the same jti is a replay all the same.
    await_refused = token(gw.signer, jti=jti, iat=int(time.time()) - 1)
    status, _, body = await gw.post(gw.form(await_refused))
    assert (status, body["error"]) == (401, "invalid_client")
    assert gw.audit_lines()[-1]["reason"] == "replayed"
    assert len(backend.seen) == 2


async def test_bad_signature_does_not_burn_the_jti(gw: Running, backend: Backend) -> None:
    jti = "reusable-after-failure"
    impostor = make_signer("ES256", kid=gw.signer.kid, slot=1)  # same kid, another key
    forged = impostor.sign(header(gw.signer), claims(jti=jti))
    await refused(gw, backend, gw.form(forged), 401, "invalid_client", "bad_signature")
    assert (await gw.post(gw.form(token(gw.signer, jti=jti))))[0] == 200


async def test_wrong_audience_does_not_burn_the_jti(gw: Running, backend: Backend) -> None:
    jti = "reusable-after-bad-aud"
    await refused(gw, backend, gw.form(token(gw.signer, jti=jti, aud="https://other.test")),
                  401, "invalid_client", "bad_audience")
    assert (await gw.post(gw.form(token(gw.signer, jti=jti))))[0] == 200


async def test_two_clients_may_use_the_same_jti(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    other = make_signer("ES256", kid="other-key")
    client = (f"\n  partner-b:\n    jwks: {{keys: [{_flow(other.public_jwk)}]}}\n"
              "    backend_auth: {method: none}")
    gw = await start_gateway(extra=client)
    assert (await gw.post(gw.form(token(gw.signer, jti="same"))))[0] == 200
    other_token = other.sign(header(other), claims("partner-b", jti="same"))
    status, _, _ = await gw.post(gw.form(other_token))
    assert status == 200
    assert backend.seen[1].form()[-1] == ("client_id", "partner-b")


def _flow(jwk: dict[str, Any]) -> str:
    return json.dumps(jwk)


# --- request envelope -----------------------------------------------------------------------

def _body(**params: str) -> str:
    return urlencode(params)


ENVELOPE_CASES = [
    ("json-content-type", {"Content-Type": "application/json"}, None, 400, "invalid_request",
     "bad_content_type"),
    ("gzip-body", {"Content-Type": "application/x-www-form-urlencoded",
                   "Content-Encoding": "gzip"}, "gzip", 400, "invalid_request", "content_encoding"),
]


@pytest.mark.parametrize(("headers", "transform", "status", "error", "reason"),
                         [c[1:] for c in ENVELOPE_CASES], ids=[c[0] for c in ENVELOPE_CASES])
async def test_envelope_refusals(gw: Running, backend: Backend, headers: dict[str, str],
                                 transform: str | None, status: int, error: str,
                                 reason: str) -> None:
    body: bytes = urlencode(gw.form(token(gw.signer))).encode()
    if transform == "gzip":
        body = gzip.compress(body)
    await refused(gw, backend, body, status, error, reason, headers=headers)


async def test_get_is_not_allowed_on_an_endpoint(gw: Running, backend: Backend) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(gw.url + TOKEN_PATH) as response:
        body = await response.json()
        assert (response.status, body["error"]) == (405, "invalid_request")
        assert response.headers["Allow"] == "POST"
    assert backend.seen == []


async def test_oversized_body_is_refused(gw: Running, backend: Backend) -> None:
    data = gw.form(token(gw.signer), scope="x" * (64 * 1024))
    await refused(gw, backend, data, 400, "invalid_request", "body_too_large")


async def test_duplicate_parameter_is_refused(gw: Running, backend: Backend) -> None:
    body = urlencode(gw.form(token(gw.signer))) + "&grant_type=password"
    await refused(gw, backend, body, 400, "invalid_request", "duplicate_parameter",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})


async def test_assertion_and_client_secret_together_are_refused(
    gw: Running, backend: Backend
) -> None:
    await refused(gw, backend, gw.form(token(gw.signer), client_secret="s"), 400,
                  "invalid_request", "multiple_auth_methods")


async def test_assertion_and_authorization_header_together_are_refused(
    gw: Running, backend: Backend
) -> None:
    await refused(gw, backend, gw.form(token(gw.signer)), 400, "invalid_request",
                  "multiple_auth_methods", headers={"Authorization": "Basic Yzpz"})


async def test_basic_only_is_invalid_client_with_a_basic_challenge(
    gw: Running, backend: Backend
) -> None:
    headers = await refused(gw, backend, {"grant_type": "client_credentials"}, 401,
                            "invalid_client", "unsupported_auth_method",
                            headers={"Authorization": "Basic Yzpz"})
    assert headers["WWW-Authenticate"].startswith("Basic")


async def test_no_authentication_is_invalid_client_without_a_challenge(
    gw: Running, backend: Backend
) -> None:
    headers = await refused(gw, backend, {"grant_type": "client_credentials"}, 401,
                            "invalid_client", "no_client_auth")
    assert "WWW-Authenticate" not in headers


async def test_client_secret_only_is_invalid_client(gw: Running, backend: Backend) -> None:
    # A configured client without migration mode: refused under its own id.
    await refused(gw, backend, {"grant_type": "client_credentials", "client_id": CLIENT,
                                "client_secret": "guess"}, 401, "invalid_client",
                  "secret_not_allowed")


async def test_wrong_assertion_type_is_refused(gw: Running, backend: Backend) -> None:
    data = gw.form(token(gw.signer), client_assertion_type="urn:ietf:params:oauth:x")
    await refused(gw, backend, data, 400, "invalid_request", "bad_assertion_type")


async def test_credentials_in_the_query_string_are_refused(gw: Running, backend: Backend) -> None:
    import aiohttp

    assertion = token(gw.signer)
    url = f"{gw.url}{TOKEN_PATH}?client_assertion={assertion}"
    async with aiohttp.ClientSession() as session, session.post(
            url, data=gw.form(token(gw.signer))) as response:
        assert (response.status, (await response.json())["error"]) == (400, "invalid_request")
    assert backend.seen == []
    assert gw.audit_lines()[-1]["reason"] == "credentials_in_query"


async def test_client_id_different_from_sub_is_refused(gw: Running, backend: Backend) -> None:
    await refused(gw, backend, gw.form(token(gw.signer), client_id="someone-else"), 400,
                  "invalid_request", "client_id_mismatch")


# --- the assertion itself -------------------------------------------------------------------

def _case(name: str, make: Any, reason: str) -> Any:
    return pytest.param(make, reason, id=name)


ASSERTION_CASES = [
    _case("unknown-client", lambda s: token(s, iss="nobody", sub="nobody"), "unknown_client"),
    _case("iss-differs", lambda s: token(s, iss="someone-else"), "bad_issuer"),
    _case("aud-other", lambda s: token(s, aud="https://evil.test"), "bad_audience"),
    _case("aud-endpoint-url-in-strict", lambda s: token(s, aud=ISSUER + TOKEN_PATH),
          "bad_audience"),
    _case("aud-two-values", lambda s: token(s, aud=[ISSUER, "https://evil.test"]),
          "bad_audience"),
    _case("exp-missing", lambda s: token(s, exp=DROP), "missing_exp"),
    _case("expired", lambda s: token(s, iat=int(time.time()) - 100,
                                     exp=int(time.time()) - 20), "expired"),
    _case("lifetime-too-long", lambda s: token(s, exp=int(time.time()) + 301,
                                               iat=int(time.time())), "lifetime_too_long"),
    _case("iat-in-future", lambda s: token(s, iat=int(time.time()) + 60,
                                           exp=int(time.time()) + 90), "issued_in_future"),
    _case("nbf-in-future", lambda s: token(s, nbf=int(time.time()) + 60,
                                           exp=int(time.time()) + 120), "not_yet_valid"),
    _case("exp-equals-iat", lambda s: token(s, iat=int(time.time()), exp=int(time.time())),
          "bad_time_window"),
    _case("nbf-after-exp", lambda s: token(s, nbf=int(time.time()) + 5,
                                           exp=int(time.time()) + 2), "bad_time_window"),
    _case("jti-missing", lambda s: token(s, jti=DROP), "missing_jti"),
    _case("jti-too-long", lambda s: token(s, jti="j" * 257), "bad_jti"),
    _case("typ-wrong", lambda s: token(s, header(s, typ="at+jwt")), "bad_typ"),
    _case("jwk-header", lambda s: token(s, header(s, jwk=s.public_jwk)), "forbidden_header"),
    _case("jku-header", lambda s: token(s, header(s, jku="https://evil.test/jwks")),
          "forbidden_header"),
    _case("x5c-not-a-certificate", lambda s: token(s, header(s, x5c=["MIIB"])), "bad_header"),
    _case("x5c-not-an-array", lambda s: token(s, header(s, x5c="MIIB")), "bad_header"),
    _case("crit-header", lambda s: token(s, header(s, crit=["kid"])), "forbidden_header"),
    _case("unknown-kid", lambda s: token(s, header(s, kid="not-registered")), "no_matching_key"),
    _case("alg-none", lambda s: _unsigned(claims(), "AAAA"), "alg_not_allowed"),
    _case("alg-none-empty-signature", lambda s: _unsigned(claims(), ""), "malformed"),
    _case("not-a-jwt", lambda s: "not.a.jwt", "malformed"),
]


def _unsigned(payload: dict[str, Any], signature: str) -> str:
    import json

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'none'})}.{seg(payload)}.{signature}"


@pytest.mark.parametrize(("make", "reason"), ASSERTION_CASES)
async def test_assertion_refusals(gw: Running, backend: Backend, make: Any, reason: str) -> None:
    await refused(gw, backend, gw.form(make(gw.signer)), 401, "invalid_client", reason)


async def test_hs256_signed_with_the_public_key_is_refused(gw: Running, backend: Backend) -> None:
    import hashlib
    import hmac
    import json

    def seg(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = seg(json.dumps({"alg": "HS256", "kid": gw.signer.kid}).encode())
    body = seg(json.dumps(claims()).encode())
    secret = json.dumps(gw.signer.public_jwk).encode()
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    await refused(gw, backend, gw.form(f"{head}.{body}.{seg(mac)}"), 401, "invalid_client",
                  "alg_not_allowed")


async def test_algorithm_outside_the_clients_list_is_refused(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    rsa = make_signer("RS256")
    gw = await start_gateway(rsa, client="algorithms: [ES256, PS256]")
    await refused(gw, backend, gw.form(token(rsa)), 401, "invalid_client", "alg_not_allowed")


async def test_per_client_max_lifetime_is_enforced(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client="max_lifetime: 30s")
    now = int(time.time())
    await refused(gw, backend, gw.form(token(gw.signer, iat=now, exp=now + 45)), 401,
                  "invalid_client", "lifetime_too_long")


async def test_compat_audience_accepts_the_endpoint_url(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client="audience: compat")
    status, _, _ = await gw.post(gw.form(token(gw.signer, aud=ISSUER + TOKEN_PATH)))
    assert status == 200
    # The public URL is configuration, never the Host header the caller chose.
    forged = token(gw.signer, aud="https://attacker.test" + TOKEN_PATH)
    status, _, _ = await gw.post(gw.form(forged), headers={"Host": "attacker.test"})
    assert status == 401 and len(backend.seen) == 1


async def test_require_typ_refuses_a_plain_jwt(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    gw = await start_gateway(client="require_typ: true")
    await refused(gw, backend, gw.form(token(gw.signer, header(gw.signer, typ="JWT"))), 401,
                  "invalid_client", "missing_typ")
    typed = token(gw.signer, header(gw.signer, typ="client-authentication+jwt"))
    assert (await gw.post(gw.form(typed)))[0] == 200


def _certificate_lines(signer: Signer) -> str:
    """A self-signed certificate for the signer's key as MSAL puts it in x5c: PEM body lines."""
    key = signer.private_key.raw_value
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return "\n".join(textwrap.wrap(base64.b64encode(cert.public_bytes(Encoding.DER)).decode(), 64))


def _msal_header(signer: Signer, x5c: list[str]) -> dict[str, Any]:
    der = base64.b64decode(x5c[0].replace("\n", ""))
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode()  # padded
    return {"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint, "x5c": x5c}


async def test_msal_certificate_chain_in_the_header_is_accepted(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    signer = make_signer("PS256", kid=None)
    gw = await start_gateway(signer)
    status, _, body = await gw.post(gw.form(token(signer, _msal_header(
        signer, [_certificate_lines(signer), _certificate_lines(make_signer("ES256"))]))))
    assert (status, body["token_type"]) == (200, "Bearer")
    assert len(backend.seen) == 1 and gw.audit_lines()[-1]["result"] == "accepted"


async def test_certificate_of_another_key_is_refused(
    start_gateway: GatewayFactory, backend: Backend
) -> None:
    signer, other = make_signer("PS256", kid=None), make_signer("PS256", kid=None, slot=1)
    gw = await start_gateway(signer)
    status, _, body = await gw.post(gw.form(token(signer, _msal_header(
        signer, [_certificate_lines(other)]))))
    assert (status, body) == (401, {"error": "invalid_client",
                                    "error_description": "Client authentication failed."})
    assert gw.audit_lines()[-1]["reason"] == "certificate_key_mismatch"
    # The same certificate carried by a token its key signed: the key must be registered.
    await refused(gw, backend, gw.form(token(other, _msal_header(
        other, [_certificate_lines(other)]))), 401, "invalid_client", "bad_signature")


async def test_empty_time_window_inside_the_skew_is_refused(gw: Running, backend: Backend) -> None:
    now = int(time.time())
    status, _, body = await gw.post(gw.form(token(gw.signer, iat=now, exp=now - 1)))
    assert (status, body) == (401, {"error": "invalid_client",
                                    "error_description": "Client authentication failed."})
    assert gw.audit_lines()[-1]["reason"] == "bad_time_window"
    assert backend.seen == []


async def test_error_body_does_not_say_which_check_failed(gw: Running, backend: Backend) -> None:
    _, _, expired = await gw.post(gw.form(token(gw.signer, exp=int(time.time()) - 100)))
    _, _, wrong_aud = await gw.post(gw.form(token(gw.signer, aud="https://x.test")))
    assert expired == wrong_aud


async def test_audit_log_holds_no_assertion_secret_or_jti(gw: Running, backend: Backend) -> None:
    jti = "a-very-identifiable-jti-value"
    assertion = token(gw.signer, jti=jti)
    await gw.post(gw.form(assertion))
    await gw.post(gw.form(assertion))
    text = gw.audit.getvalue()
    for needle in (assertion, assertion.split(".")[2], BACKEND_SECRET, jti):
        assert needle not in text
