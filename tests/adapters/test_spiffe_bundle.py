"""SPIFFE trust bundles: only jwt-svid keys, the refresh hint, static bundles; live and pure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.issuer_keys import build_issuer_source
from gateway.adapters.jwks_fetch import JwksFetchError
from gateway.adapters.spiffe_bundle import NO_JWT_SVID_KEY, parse_bundle, select_jwt_svid_keys
from gateway.config.errors import ConfigError
from gateway.config.federation import FederationIssuerSettings
from gateway.config.files import JwksFile
from gateway.core.keysource import StaticKeySource
from tests.adapters.issuer_support import (
    STRICT_FETCH,
    Answer,
    LoopbackResolver,
    Platform,
    Tls,
    Watched,
    make_tls,
    start_platform,
    watch,
)
from tests.support.jwks_server import FakeClock, ServerFactory, fetch_settings
from tests.support.tokens import b64url, make_signer

TRUST_DOMAIN = "example.org"
RSA_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
SECRET = b64url(b"\x05" * 32)
FETCH = fetch_settings(allow_http=False, allow_private_networks=False, min_ttl=30.0,
                       max_ttl=3600.0)


def svid_key(alg: str, slot: int, use: str | None = "jwt-svid") -> dict[str, Any]:
    """A bundle key (kid "<alg>-<slot>", no alg member) with the given `use`."""
    jwk = {**make_signer(alg, slot=slot).public_jwk, "use": use}
    return {name: value for name, value in jwk.items() if value is not None}


MIXED = [svid_key("ES256", 0), svid_key("ES256", 1, "x509-svid"), svid_key("RS256", 0),
         svid_key("ES256", 2, "sig"), svid_key("ES256", 3, None)]


def test_only_jwt_svid_keys_are_imported_and_keys_without_alg_get_their_types_algorithms(
) -> None:
    imported = select_jwt_svid_keys({"keys": MIXED, "spiffe_sequence": 3}, "bundle")
    assert [key["kid"] for key in imported.keys] == ["es256-0", "rs256-0"]
    assert all("use" not in key for key in imported.keys)
    by_kid = imported.keyset.by_kid
    assert by_kid["es256-0"][0].algorithms == {"ES256"}
    assert by_kid["rs256-0"][0].algorithms == RSA_ALGORITHMS
    # x509-svid keys are expected in a bundle; keys of no SPIFFE use are worth a warning.
    assert imported.problems == (
        ("bundle.keys[3]", "'use' is 'sig', not 'jwt-svid' or 'x509-svid'"),
        ("bundle.keys[4]", "'use' is missing, not 'jwt-svid' or 'x509-svid'"))


def test_problems_of_kept_keys_are_at_their_place_in_the_bundle() -> None:
    document = {"keys": [svid_key("ES256", 1, "x509-svid"), {"kty": "XYZ", "use": "jwt-svid"},
                         svid_key("ES256", 0)]}
    imported = select_jwt_svid_keys(document, "bundle")
    assert imported.problems == (("bundle.keys[1]", "skipped: unsupported kty 'XYZ'"),)


@pytest.mark.parametrize("index", [0, 1], ids=["in-an-x509-svid-key", "in-a-jwt-svid-key"])
def test_secret_key_material_anywhere_refuses_the_bundle(index: int) -> None:
    keys = [svid_key("ES256", 1, "x509-svid"), svid_key("ES256", 0)]
    keys[index] = {**keys[index], "d": SECRET}
    body = f'{{"keys": {json.dumps(keys)}}}'.encode()
    with pytest.raises(JwksFetchError) as caught:
        parse_bundle(body)
    assert caught.value.reason == "secret_key_material"
    assert caught.value.detail.startswith(f"bundle.keys[{index}]: ")
    assert SECRET not in str(caught.value)


def test_a_bundle_without_a_jwt_svid_key_has_no_usable_key() -> None:
    body = f'{{"keys": {json.dumps([svid_key("ES256", 1, "x509-svid")])}}}'.encode()
    with pytest.raises(JwksFetchError) as caught:
        parse_bundle(body)
    assert (caught.value.reason, caught.value.detail) == (
        "no_usable_key", f"bundle: {NO_JWT_SVID_KEY}")


@pytest.fixture(scope="module")
def tls() -> Tls:
    return make_tls()


@pytest.fixture
async def bundle(aiohttp_server: ServerFactory, tls: Tls) -> Platform:
    """A bundle endpoint at /bundle: mixed keys, a refresh hint of 600 s, max-age 120 s."""
    platform = await start_platform(aiohttp_server, tls)
    platform.answers["/bundle"] = Answer(
        {"keys": MIXED, "spiffe_sequence": 7, "spiffe_refresh_hint": 600},
        headers={"Cache-Control": "max-age=120"})
    return platform


@pytest.fixture
async def make_source(tls: Tls, tmp_path: Path) -> AsyncIterator[Callable[..., Watched]]:
    ca_file = tmp_path / "ca.pem"
    tls.ca.cert_pem.write_to_path(str(ca_file))
    made: list[Watched] = []

    def make(uri: str, clock: FakeClock) -> Watched:
        issuer = FederationIssuerSettings(
            trust_domain=TRUST_DOMAIN, preset="spiffe", bundle_endpoint=uri,
            ca_file=str(ca_file), allow_private_networks=True)
        made.append(watch("spire", issuer, FETCH, resolver=LoopbackResolver(), clock=clock))
        return made[-1]

    yield make
    for watched in made:
        await watched.source.close()


async def test_a_fetched_bundle_serves_its_jwt_svid_keys(
    bundle: Platform, make_source: Callable[..., Watched], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    watched = make_source(bundle.url("/bundle"), clock)
    await watched.settle()
    assert watched.kids() == {"es256-0", "rs256-0"}
    assert (watched.results, watched.counts) == (["ok"], [2])
    status = watched.source.status()
    assert (status.kind, status.uri, status.key_count) == (
        "bundle_endpoint", bundle.url("/bundle"), 2)
    assert status.expires_at == clock.now + 600  # the hint, not max-age=120
    assert "bundle.keys[3]" in caplog.text and "bundle.keys[1]" not in caplog.text


@pytest.mark.parametrize(("hint", "lifetime"), [
    pytest.param(5, 30.0, id="below-min-ttl"),
    pytest.param(10**12, 3600.0, id="above-max-ttl"),
    pytest.param(45.5, 45.5, id="fraction"),
    pytest.param(None, 120.0, id="absent"),
    pytest.param(-1, 120.0, id="negative"),
    pytest.param("600", 120.0, id="text"),
    pytest.param(True, 120.0, id="boolean"),
])
async def test_the_refresh_hint_is_clamped_and_a_bad_one_ignored(
    bundle: Platform, make_source: Callable[..., Watched], hint: object, lifetime: float
) -> None:
    document = bundle.answers["/bundle"].body
    document["spiffe_refresh_hint"] = hint
    if hint is None:
        del document["spiffe_refresh_hint"]
    clock = FakeClock()
    watched = make_source(bundle.url("/bundle"), clock)
    await watched.settle()
    assert watched.source.status().expires_at == clock.now + lifetime


async def test_an_unchanged_bundle_keeps_its_hint(
    bundle: Platform, make_source: Callable[..., Watched]
) -> None:
    bundle.answers["/bundle"].etag = '"seq-7"'
    clock = FakeClock()
    watched = make_source(bundle.url("/bundle"), clock)
    await watched.settle()
    clock.advance(100.0)
    await watched.source.refresh_for_unknown_kid()
    assert bundle.asked[1].headers["If-None-Match"] == '"seq-7"'
    assert watched.results == ["ok", "not_modified"]
    assert watched.source.status().expires_at == clock.now + 600  # a 304 has no body


async def test_a_bundle_of_x509_svid_keys_only_has_no_usable_key(
    bundle: Platform, make_source: Callable[..., Watched]
) -> None:
    bundle.answers["/bundle"].body["keys"] = [svid_key("ES256", 1, "x509-svid")]
    watched = make_source(bundle.url("/bundle"), FakeClock())
    await watched.settle()
    assert watched.results == ["no_usable_key"] and not watched.source.ready()


def spiffe_issuer(kind: str, keys: list[dict[str, Any]]) -> FederationIssuerSettings:
    document = {"keys": keys, "spiffe_sequence": 1}
    value = JwksFile("/etc/gateway/bundle.json", document) if kind == "jwks_file" else document
    return FederationIssuerSettings(**{"trust_domain": TRUST_DOMAIN, "preset": "spiffe",
                                       kind: value})


@pytest.mark.parametrize("kind", ["jwks", "jwks_file"])
def test_a_static_bundle_keeps_only_its_jwt_svid_keys(kind: str) -> None:
    keys = [svid_key("ES256", 0), svid_key("ES256", 1, "x509-svid")]
    source = build_issuer_source("spire", spiffe_issuer(kind, keys), STRICT_FETCH)
    assert isinstance(source, StaticKeySource) and source.kind == kind
    assert set(source.current().by_kid) == {"es256-0"}


@pytest.mark.parametrize(("keys", "problems"), [
    pytest.param([svid_key("ES256", 1, "x509-svid")], [("", NO_JWT_SVID_KEY)], id="no-jwt-svid"),
    pytest.param([svid_key("ES256", 1, "x509-svid"), svid_key("ES256", 0, "sig")],
                 [(".keys[1]", "'use' is 'sig', not 'jwt-svid' or 'x509-svid'"),
                  ("", NO_JWT_SVID_KEY)], id="sig"),
    pytest.param([svid_key("ES256", 1, "x509-svid"), {**svid_key("ES256", 0), "d": SECRET},
                  svid_key("ES256", 2)],
                 [(".keys[1]", "holds private key material (d): publish the public key only")],
                 id="private-key"),
])
def test_static_bundle_problems_are_config_errors_at_their_place(
    keys: list[dict[str, Any]], problems: list[tuple[str, str]]
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_issuer_source("spire", spiffe_issuer("jwks", keys), STRICT_FETCH)
    where = "federation.issuers.spire.jwks"
    assert caught.value.problems == [(where + path, message) for path, message in problems]


def test_without_preset_spiffe_a_jwt_svid_use_is_refused() -> None:
    issuer = FederationIssuerSettings(issuer="https://issuer.test",
                                      jwks={"keys": [svid_key("ES256", 0)]})
    with pytest.raises(ConfigError) as caught:
        build_issuer_source("corp", issuer, STRICT_FETCH)
    assert caught.value.problems[0][0] == "federation.issuers.corp.jwks.keys[0]"
