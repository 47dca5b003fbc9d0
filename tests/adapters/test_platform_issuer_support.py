"""The platform issuer test double: its https endpoints, token shapes, keys and rotation."""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from cryptography import x509
from joserfc import jws
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet

from tests.support.platform_issuer import (
    KINDS,
    OMIT,
    Kind,
    PlatformIssuer,
    platform_issuer,
)

AUDIENCE = "https://gateway.example.test"


@pytest.fixture
async def issuer(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PlatformIssuer]:
    options: dict[str, Any] = getattr(request, "param", {"kind": "github"})
    async with platform_issuer(tmp_path, **options) as running:
        yield running


async def get(issuer: PlatformIssuer, url: str, *, bearer: str | None = None,
              context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    connector = aiohttp.TCPConnector(ssl=context or issuer.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, dict(response.headers), await response.json()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def decode(part: str) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))

    header, payload, _ = token.split(".")
    return decode(header), decode(payload)


def verify(token: str, jwks: dict[str, Any], alg: str) -> dict[str, Any]:
    """Check the signature against the served keys; SPIFFE ``use`` values are not JOSE ones."""
    keys = [{name: value for name, value in key.items() if name != "use"}
            for key in jwks["keys"] if key.get("use", "sig") in ("sig", "jwt-svid")]
    verified = jws.deserialize_compact(token, KeySet.import_key_set({"keys": keys}),
                                       algorithms=[alg])
    return dict(json.loads(verified.payload))


def token_for(issuer: PlatformIssuer, **overrides: Any) -> str:
    mint = {"github": issuer.github_token, "gitlab": issuer.gitlab_token,
            "kubernetes": issuer.kubernetes_token, "spiffe": issuer.spiffe_token}[issuer.kind]
    return mint(AUDIENCE, **overrides)


@pytest.mark.parametrize("issuer", [{"kind": kind} for kind in KINDS], ids=KINDS, indirect=True)
async def test_each_kind_serves_keys_that_verify_its_tokens(issuer: PlatformIssuer) -> None:
    jwks_url = issuer.jwks_uri
    if issuer.kind != "spiffe":
        status, headers, discovery = await get(issuer, issuer.discovery_url)
        assert status == 200 and headers["Cache-Control"] == "max-age=300"
        assert discovery["issuer"] == issuer.issuer
        assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
        assert {"response_types_supported", "subject_types_supported"} <= set(discovery)
        assert ("claims_supported" in discovery) is (issuer.kind != "kubernetes")
        jwks_url = discovery["jwks_uri"]
    assert jwks_url == issuer.jwks_uri
    status, _, jwks = await get(issuer, jwks_url)
    assert status == 200 and [key["kid"] for key in jwks["keys"]] == [issuer.current_kid]
    claims = verify(token_for(issuer), jwks, issuer.alg)
    assert claims["aud"] == ([AUDIENCE] if issuer.kind == "kubernetes" else AUDIENCE)
    assert issuer.jwks_fetches == 1


@pytest.mark.parametrize(("kind", "path"), [
    ("github", "/.well-known/jwks"), ("gitlab", "/oauth/discovery/keys"),
    ("kubernetes", "/openid/v1/jwks"), ("spiffe", "/")])
def test_jwks_paths_and_published_members(tmp_path: Path, kind: Kind, path: str) -> None:
    issuer = PlatformIssuer(tmp_path, kind)
    assert issuer.jwks_path == path
    (key,) = issuer.published_jwks()["keys"]
    expected_use, has_alg = ("jwt-svid", False) if kind == "spiffe" else ("sig", True)
    assert (key["use"], "alg" in key) == (expected_use, has_alg)
    assert ("x5c" in key and "x5t" in key) is (kind == "github")


@pytest.mark.parametrize("issuer", [
    pytest.param({"kind": "github", "path_prefix": "/_services/token"}, id="ghes"),
    pytest.param({"kind": "github", "path_prefix": "/acme-corp"}, id="enterprise-slug"),
], indirect=True)
async def test_issuer_with_a_path_serves_under_it(issuer: PlatformIssuer) -> None:
    assert issuer.issuer == issuer.origin + issuer.path_prefix
    _, _, discovery = await get(issuer, issuer.discovery_url)
    assert discovery["jwks_uri"] == f"{issuer.issuer}/.well-known/jwks"
    assert (await get(issuer, discovery["jwks_uri"]))[0] == 200
    assert (await get(issuer, issuer.origin + "/.well-known/openid-configuration"))[0] == 404
    assert segments(issuer.github_token())[1]["iss"] == issuer.issuer


async def test_another_ca_is_not_trusted(issuer: PlatformIssuer) -> None:
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(issuer, issuer.discovery_url, context=stranger)
    assert issuer.ca_file == str(issuer.ca_pem_path) and issuer.ca_pem_path.is_file()


@pytest.mark.parametrize(("shape", "subject"), [
    pytest.param({}, "repo:acme@1234/api@5678:ref:refs/heads/main", id="immutable"),
    pytest.param({"immutable": False}, "repo:acme/api:ref:refs/heads/main", id="names"),
    pytest.param({"immutable": False, "ref": "refs/tags/v1"}, "repo:acme/api:ref:refs/tags/v1",
                 id="tag"),
    pytest.param({"immutable": False, "environment": "production", "event_name": "pull_request"},
                 "repo:acme/api:environment:production", id="environment-first"),
    pytest.param({"immutable": False, "event_name": "pull_request", "ref": "refs/pull/1/merge"},
                 "repo:acme/api:pull_request", id="pull-request"),
    pytest.param({"environment": "prod:eu"}, "repo:acme@1234/api@5678:environment:prod%3Aeu",
                 id="colon-escaped"),
])
async def test_github_subjects(issuer: PlatformIssuer, shape: dict[str, Any],
                               subject: str) -> None:
    _, claims = segments(issuer.github_token(**shape))
    assert claims["sub"] == subject
    assert claims.get("environment") == shape.get("environment")


async def test_github_claims_and_header(issuer: PlatformIssuer) -> None:
    first, second = issuer.github_token(), issuer.github_token(now=1_750_000_000)
    header, claims = segments(first)
    published = issuer.published_jwks()["keys"][0]
    assert header == {"alg": "RS256", "kid": issuer.current_kid, "typ": "JWT",
                      "x5t": published["x5t"]}
    assert claims["aud"] == "https://github.com/acme"  # the owner-wide default
    assert claims["iat"] - claims["nbf"] == 5 and claims["exp"] - claims["iat"] == 300
    assert uuid.UUID(claims["jti"]) and claims["jti"] != segments(second)[1]["jti"]
    assert segments(second)[1]["iat"] == 1_750_000_000
    assert {name: claims[name] for name in (
        "repository", "repository_id", "repository_owner", "repository_owner_id", "ref_type",
        "event_name", "runner_environment", "job_workflow_ref")} == {
        "repository": "acme/api", "repository_id": "5678", "repository_owner": "acme",
        "repository_owner_id": "1234", "ref_type": "branch", "event_name": "push",
        "runner_environment": "github-hosted",
        "job_workflow_ref": "acme/api/.github/workflows/deploy.yml@refs/heads/main"}
    assert "enterprise" not in claims and "environment" not in claims
    enterprise = segments(issuer.github_token(AUDIENCE, enterprise="acme-corp",
                                              enterprise_id="99"))[1]
    assert (enterprise["enterprise"], enterprise["enterprise_id"]) == ("acme-corp", "99")


@pytest.mark.parametrize("issuer", [{"kind": "gitlab"}], ids=["gitlab"], indirect=True)
async def test_gitlab_claims(issuer: PlatformIssuer) -> None:
    header, claims = segments(issuer.gitlab_token(AUDIENCE, ref="v1", ref_type="tag",
                                                  environment="production", now=1000))
    assert header == {"alg": "RS256", "kid": issuer.current_kid, "typ": "JWT"}
    assert claims["sub"] == "project_path:group/project:ref_type:tag:ref:v1"
    assert (claims["ref_path"], claims["project_id"], claims["namespace_id"]) == (
        "refs/tags/v1", "42", "72")
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1000, 995, 4600)
    assert claims["environment"] == "production" and claims["ref_protected"] == "true"
    assert claims["runner_environment"] == "gitlab-hosted" and uuid.UUID(claims["jti"])


@pytest.mark.parametrize("issuer", [{"kind": "kubernetes"}], ids=["kubernetes"], indirect=True)
async def test_kubernetes_claims(issuer: PlatformIssuer) -> None:
    header, claims = segments(issuer.kubernetes_token(AUDIENCE, now=1000))
    assert header == {"alg": "RS256", "kid": issuer.current_kid}
    assert claims["aud"] == [AUDIENCE] and claims["sub"] == "system:serviceaccount:ci:deployer"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1000, 1000, 4600)
    nested = claims["kubernetes.io"]
    assert nested["namespace"] == "ci" and nested["serviceaccount"]["name"] == "deployer"
    assert set(nested) == {"namespace", "serviceaccount", "pod", "node"}
    assert nested["pod"]["name"] == "runner-abc" and "jti" in claims
    _, older = segments(issuer.kubernetes_token([AUDIENCE, "b"], with_jti=False, pod=None,
                                                node=None))
    assert older["aud"] == [AUDIENCE, "b"] and "jti" not in older
    assert set(older["kubernetes.io"]) == {"namespace", "serviceaccount"}


def test_spiffe_claims_and_header(tmp_path: Path) -> None:
    issuer = PlatformIssuer(tmp_path, "spiffe")
    header, claims = segments(issuer.spiffe_token(AUDIENCE))
    assert header == {"alg": "ES256", "kid": issuer.current_kid, "typ": "JWT"}
    assert set(claims) == {"aud", "exp", "iat", "sub"}
    assert claims["sub"] == "spiffe://example.org/ns/prod/sa/api"
    assert claims["exp"] - claims["iat"] == 300
    _, fuller = segments(issuer.spiffe_token([AUDIENCE], with_jti=True, trust_domain="b.test",
                                             path="/w"))
    assert set(fuller) == {"aud", "exp", "iat", "sub", "jti"}
    assert fuller["sub"] == "spiffe://b.test/w" and fuller["aud"] == [AUDIENCE]
    bare, _ = segments(issuer.spiffe_token(AUDIENCE, header={"kid": OMIT, "typ": OMIT}))
    assert bare == {"alg": "ES256"}


@pytest.mark.parametrize("issuer", [
    pytest.param({"kind": "spiffe", "x509_authority": True, "refresh_hint": 60}, id="bundle"),
], indirect=True)
async def test_spiffe_bundle(issuer: PlatformIssuer) -> None:
    status, _, bundle = await get(issuer, issuer.origin + "/")
    assert status == 200 and bundle["spiffe_refresh_hint"] == 60
    assert [key["use"] for key in bundle["keys"]] == ["x509-svid", "jwt-svid"]
    assert not any("alg" in key for key in bundle["keys"])
    authority = x509.load_der_x509_certificate(base64.b64decode(bundle["keys"][0]["x5c"][0]))
    names = authority.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    _, claims = segments(issuer.spiffe_token(AUDIENCE, with_iss=True))
    assert claims["iss"] == issuer.issuer
    assert (await get(issuer, issuer.discovery_url))[0] == 404
    issuer.rotate()
    assert (await get(issuer, issuer.origin + "/"))[2]["spiffe_sequence"] > bundle[
        "spiffe_sequence"]


@pytest.mark.parametrize("issuer", [
    pytest.param({"kind": "kubernetes", "bearer_token": "first"}, id="kubernetes"),
], indirect=True)
async def test_bearer_token_is_required_and_recorded(issuer: PlatformIssuer) -> None:
    status, headers, _ = await get(issuer, issuer.jwks_uri)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert (await get(issuer, issuer.jwks_uri, bearer="first"))[0] == 200
    issuer.bearer_token = "second"
    assert (await get(issuer, issuer.discovery_url, bearer="first"))[0] == 401
    assert (await get(issuer, issuer.discovery_url, bearer="second"))[0] == 200
    assert [(asked.path, asked.headers.get("Authorization")) for asked in issuer.asked] == [
        ("/openid/v1/jwks", None), ("/openid/v1/jwks", "Bearer first"),
        ("/.well-known/openid-configuration", "Bearer first"),
        ("/.well-known/openid-configuration", "Bearer second")]


@pytest.mark.parametrize("issuer", [{"kind": "gitlab", "max_age": None}], ids=["gitlab"],
                         indirect=True)
async def test_rotation_retirement_and_unpublished_keys(issuer: PlatformIssuer) -> None:
    old = issuer.current_kid
    old_token = issuer.gitlab_token(AUDIENCE)
    new = issuer.rotate()
    _, headers, jwks = await get(issuer, issuer.jwks_uri)
    assert new != old and "Cache-Control" not in headers
    assert [key["kid"] for key in jwks["keys"]] == [old, new]
    assert segments(issuer.gitlab_token(AUDIENCE))[0]["kid"] == new
    issuer.retire(old)
    jwks = (await get(issuer, issuer.jwks_uri))[2]
    assert [key["kid"] for key in jwks["keys"]] == [new]
    with pytest.raises(InvalidKeyIdError):
        verify(old_token, jwks, "RS256")
    assert segments(issuer.gitlab_token(AUDIENCE, key=old))[0]["kid"] == old
    issuer.publish(False)  # the current key signs but is not published
    assert (await get(issuer, issuer.jwks_uri))[2]["keys"] == []
    with pytest.raises(ValueError, match="no published key"):
        issuer.retire(new)
    assert not issuer.keys[new].published  # the refusal changed nothing
    issuer.publish(True)
    third = issuer.rotate()
    issuer.retire(third)  # the current one: the newest published key takes over
    assert issuer.current_kid == new
    assert [key["kid"] for key in (await get(issuer, issuer.jwks_uri))[2]["keys"]] == [new]


async def test_attacker_shaped_tokens(issuer: PlatformIssuer) -> None:
    jwks = issuer.published_jwks()
    outsider = issuer.outsider(kid=issuer.current_kid)
    forged = issuer.github_token(AUDIENCE, key=outsider, jti=OMIT, sub="repo:evil/x:ref:main",
                                 header={"jwk": outsider.public_jwk, "jku": "https://evil.test/k",
                                         "x5t": OMIT})
    header, claims = segments(forged)
    assert header["kid"] == issuer.current_kid and header["jku"] == "https://evil.test/k"
    assert "x5t" not in header and header["jwk"]["n"] == outsider.public_jwk["n"]
    assert "jti" not in claims and claims["sub"] == "repo:evil/x:ref:main"
    same_kid = issuer.github_token(AUDIENCE, key=outsider, header={"jku": OMIT})
    with pytest.raises(BadSignatureError):
        verify(same_kid, jwks, "RS256")
    raw = issuer.mint(b'{"sub":"a","sub":"b"}', b'{"alg":"RS256"}')
    assert base64.urlsafe_b64decode(raw.split(".")[1] + "==") == b'{"sub":"a","sub":"b"}'
    assert verify(issuer.mint({"x": 1}), jwks, "RS256") == {"x": 1}


async def test_close_stops_the_server(tmp_path: Path) -> None:
    async with platform_issuer(tmp_path, "gitlab") as issuer:
        url = issuer.discovery_url
        assert (await get(issuer, url))[0] == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        await get(issuer, url)
