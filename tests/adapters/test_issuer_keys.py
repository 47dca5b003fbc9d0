"""Federation issuers' key sources against live https servers: discovery, tokens, guard, TLS."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.adapters.issuer_keys import (
    IssuerKeySource,
    build_issuer_source,
    issuer_fetch_settings,
)
from gateway.config.errors import ConfigError
from gateway.config.federation import FederationIssuerSettings
from gateway.config.files import JwksFile
from gateway.core.keysource import KeySource, StaticKeySource
from tests.adapters.issuer_support import (
    DISCOVERY_PATH,
    ISSUER_HOST,
    KEYS_HOST,
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

KEY_A, KEY_B = "es256-0", "es256-1"
SourceFactory = Callable[..., Watched]


def es_key(slot: int) -> dict[str, Any]:
    return dict(make_signer("ES256", slot=slot).public_jwk)  # kid "es256-<slot>"


@pytest.fixture(scope="module")
def tls() -> Tls:
    return make_tls()


@pytest.fixture
def ca_file(tls: Tls, tmp_path: Path) -> str:
    path = tmp_path / "platform-ca.pem"
    tls.ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def platform(aiohttp_server: ServerFactory, tls: Tls) -> Platform:
    """A platform whose issuer is https://issuer.test:PORT, keys at /keys."""
    platform = await start_platform(aiohttp_server, tls)
    platform.serve_discovery(platform.url(), platform.url("/keys"))
    platform.answers["/keys"] = Answer({"keys": [es_key(0)]})
    return platform


@pytest.fixture
async def make_source(ca_file: str) -> AsyncIterator[SourceFactory]:
    """Sources of the issuer "corp": the platform's CA, private networks allowed by default."""
    made: list[Watched] = []

    def make(*, fetch: Any = STRICT_FETCH, clock: Any = None, **issuer: Any) -> Watched:
        settings = FederationIssuerSettings(**{"ca_file": ca_file,
                                               "allow_private_networks": True, **issuer})
        made.append(watch("corp", settings, fetch, resolver=LoopbackResolver(),
                          clock=clock or FakeClock()))
        return made[-1]

    yield make
    for watched in made:
        await watched.source.close()


async def test_discovery_finds_the_keys_and_follows_a_rotation(
    platform: Platform, make_source: SourceFactory
) -> None:
    watched = make_source(issuer=platform.url(), discovery=True)
    await watched.settle()
    assert watched.kids() == {KEY_A}
    assert (watched.results, watched.counts) == (["ok"], [1])
    assert platform.paths() == [DISCOVERY_PATH, "/keys"]
    assert platform.asked[0].headers["Accept"] == "application/json"
    assert platform.asked[0].headers["Host"] == platform.url().removeprefix("https://")
    assert all("Authorization" not in asked.headers for asked in platform.asked)
    status = watched.source.status()
    assert (status.kind, status.uri, status.ready, status.key_count) == (
        "discovery", platform.url(DISCOVERY_PATH), True, 1)
    assert (watched.source.kind, watched.source.name) == ("discovery", "corp")
    platform.answers["/keys"] = Answer({"keys": [es_key(1)]})  # the issuer rotated
    keys = await watched.source.refresh_for_unknown_kid()
    assert keys is not None and set(keys.by_kid) == {KEY_B}
    assert platform.paths()[2:] == [DISCOVERY_PATH, "/keys"]  # discovery asked again
    assert (watched.results, watched.counts) == (["ok", "ok"], [1, 1])


async def test_a_moved_jwks_uri_is_followed_without_the_old_etag(
    platform: Platform, make_source: SourceFactory
) -> None:
    clock = FakeClock()
    platform.answers["/keys"].etag = '"v1"'
    platform.answers["/moved"] = Answer({"keys": [es_key(1)]}, etag='"v1"')
    watched = make_source(issuer=platform.url(), discovery=True, clock=clock)
    await watched.settle()
    await watched.source.refresh_for_unknown_kid()
    assert platform.asked[3].headers["If-None-Match"] == '"v1"'
    platform.serve_discovery(platform.url(), platform.url("/moved"))
    clock.advance(30.0)  # the unknown-kid interval
    keys = await watched.source.refresh_for_unknown_kid()
    assert keys is not None and set(keys.by_kid) == {KEY_B}
    assert platform.paths()[-1] == "/moved" and "If-None-Match" not in platform.asked[-1].headers
    assert watched.results == ["ok", "not_modified", "ok"]


@pytest.mark.parametrize(("configured", "published"), [
    pytest.param("", "/", id="published-with-trailing-slash"),
    pytest.param("/", "", id="configured-with-trailing-slash"),
    pytest.param("", "upper-case", id="case"),
    pytest.param("/tenant", "", id="prefix-of-the-issuer"),
    pytest.param("", None, id="no-issuer"),
])
async def test_a_discovery_document_of_another_issuer_gives_no_keys(
    platform: Platform, make_source: SourceFactory, caplog: pytest.LogCaptureFixture,
    configured: str, published: str | None,
) -> None:
    issuer = platform.url(configured)
    shown = {"upper-case": platform.url(host=ISSUER_HOST.upper()), None: None}.get(
        published, platform.url(published or ""))
    platform.serve_discovery(shown, platform.url("/keys"),
                             at=configured.rstrip("/") + DISCOVERY_PATH)
    watched = make_source(issuer=issuer, discovery=True)
    await watched.settle()
    assert watched.results == ["bad_discovery"] and not watched.source.ready()
    assert watched.source.status().last_error == "bad_discovery"
    assert "/keys" not in platform.paths()
    assert "bad_discovery" in caplog.text and f"is not {issuer!r}" in caplog.text


async def test_keys_on_another_host_need_jwks_hosts(
    platform: Platform, make_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    platform.serve_discovery(platform.url(), platform.url("/keys", host=KEYS_HOST))
    refused = make_source(issuer=platform.url(), discovery=True)
    await refused.settle()
    assert refused.results == ["bad_discovery"] and platform.paths() == [DISCOVERY_PATH]
    assert "'keys.test', neither the issuer's nor one of jwks_hosts" in caplog.text
    allowed = make_source(issuer=platform.url(), discovery=True, jwks_hosts=["KEYS.Test"])
    await allowed.settle()
    assert allowed.kids() == {KEY_A}
    assert platform.asked[-1].headers["Host"] == platform.url(host=KEYS_HOST)[8:]


@pytest.mark.parametrize("jwks_uri", [
    pytest.param("http://{host}/keys", id="http"),
    pytest.param("https://user:pw@{host}/keys", id="credentials"),
    pytest.param("/keys", id="relative"),
    pytest.param("file:///etc/keys", id="file"),
    pytest.param(["https://{host}/keys"], id="not-a-string"),
])
async def test_an_unacceptable_jwks_uri_is_bad_discovery(
    platform: Platform, make_source: SourceFactory, jwks_uri: Any
) -> None:
    host = platform.url().removeprefix("https://")
    shown = ([jwks_uri[0].format(host=host)] if isinstance(jwks_uri, list)
             else jwks_uri.format(host=host))
    platform.serve_discovery(platform.url(), shown)
    watched = make_source(issuer=platform.url(), discovery=True)
    await watched.settle()
    assert watched.results == ["bad_discovery"] and platform.paths() == [DISCOVERY_PATH]


@pytest.mark.parametrize(("change", "reason"), [
    pytest.param({"status": 404}, "bad_discovery", id="404"),
    pytest.param({"content_type": "text/html"}, "bad_discovery", id="html"),
    pytest.param({"body": b"<html>"}, "bad_discovery", id="not-json"),
    pytest.param({"body": ["https://issuer.test"]}, "bad_discovery", id="not-an-object"),
    pytest.param({"body": b" " * 5000}, "too_large", id="too-large"),
    pytest.param({"content_type": "application/json; charset=utf-8"}, "ok", id="charset"),
    pytest.param({"content_type": "application/vnd.example+json"}, "ok", id="plus-json"),
])
async def test_discovery_answers(
    platform: Platform, make_source: SourceFactory, change: dict[str, Any], reason: str
) -> None:
    answer = platform.answers[DISCOVERY_PATH]
    for name, value in change.items():
        setattr(answer, name, value)
    watched = make_source(issuer=platform.url(), discovery=True,
                          fetch=fetch_settings(allow_http=False, max_bytes=4096))
    await watched.settle()
    assert watched.results == [reason]


@pytest.mark.parametrize("kind", ["discovery", "jwks_uri"])
async def test_the_bearer_token_goes_with_every_request_and_is_read_each_time(
    platform: Platform, make_source: SourceFactory, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, kind: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.first-token_1\n")
    where: dict[str, Any] = ({"discovery": True} if kind == "discovery"
                             else {"jwks_uri": platform.url("/keys")})
    watched = make_source(issuer=platform.url(), bearer_token_file=str(token), **where)
    await watched.settle()
    sent = [asked.headers.get("Authorization") for asked in platform.asked]
    assert sent and sent == ["Bearer eyJhbGciOi.first-token_1"] * len(sent)
    token.write_text("eyJhbGciOi.second-token_2\n")  # the kubelet rotated it
    platform.answers["/keys"].status = 500
    await watched.source.refresh_for_unknown_kid()
    assert [asked.headers.get("Authorization") for asked in platform.asked[len(sent):]] == [
        "Bearer eyJhbGciOi.second-token_2"] * len(sent)
    assert watched.results == ["ok", "bad_status"] and watched.kids() == {KEY_A}
    assert "bad_status" in caplog.text
    assert "first-token" not in caplog.text and "second-token" not in caplog.text


@pytest.mark.parametrize("content", [
    pytest.param(None, id="missing"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\n", id="blank-line"),
    pytest.param(b"two words\n", id="space"),
    pytest.param(b"tok\r\nX-Injected: yes", id="header-injection"),
    pytest.param(b"\xff\xfe-token", id="not-ascii"),
    pytest.param(b"a" * 20_000, id="too-large"),
    pytest.param("directory", id="directory"),
])
async def test_an_unreadable_token_fails_the_fetch_before_any_request(
    platform: Platform, make_source: SourceFactory, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, content: bytes | str | None,
) -> None:
    token = tmp_path / "token"
    if content == "directory":
        token.mkdir()
    elif isinstance(content, bytes):
        token.write_bytes(content)
    watched = make_source(issuer=platform.url(), discovery=True, bearer_token_file=str(token))
    await watched.settle()
    assert watched.results == ["token_unreadable"] and platform.asked == []
    assert watched.source.status().last_error == "token_unreadable"
    assert "Injected" not in caplog.text and "two words" not in caplog.text


@pytest.mark.parametrize("host", [ISSUER_HOST, "127.0.0.1"], ids=["name", "literal"])
async def test_loopback_needs_the_issuer_to_allow_private_networks(
    platform: Platform, make_source: SourceFactory, host: str
) -> None:
    platform.serve_discovery(platform.url(host=host), platform.url("/keys", host=host))
    watched = make_source(issuer=platform.url(host=host), discovery=True,
                          allow_private_networks=False)
    await watched.settle()
    assert watched.results == ["forbidden_address"] and platform.asked == []


async def test_the_global_allow_private_networks_is_enough(
    platform: Platform, make_source: SourceFactory
) -> None:
    watched = make_source(issuer=platform.url(), discovery=True, allow_private_networks=False,
                          fetch=fetch_settings(allow_http=False, allow_private_networks=True))
    await watched.settle()
    assert watched.results == ["ok"]


async def test_only_the_issuers_own_ca_file_and_the_system_store_are_trusted(
    platform: Platform, make_source: SourceFactory, ca_file: str, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    wrong = make_source(issuer=platform.url(), discovery=True, ca_file=str(other))
    # The global ca_file anchors clients' key servers, not this issuer's.
    global_only = make_source(issuer=platform.url(), discovery=True, ca_file=None,
                              fetch=fetch_settings(allow_http=False, ca_file=ca_file))
    await wrong.settle()
    await global_only.settle()
    assert (wrong.results, global_only.results) == (["tls_error"], ["tls_error"])


def test_issuer_fetch_settings_replace_the_ca_file_and_widen_private_networks() -> None:
    issuer = FederationIssuerSettings(issuer="https://issuer.test", discovery=True)
    settings = issuer_fetch_settings(issuer, fetch_settings(ca_file="/etc/global-ca.pem",
                                                            allow_private_networks=False))
    assert (settings.ca_file, settings.allow_private_networks) == (None, False)
    opted_in = issuer.model_copy(update={"ca_file": "/etc/k8s-ca.pem",
                                         "allow_private_networks": True})
    settings = issuer_fetch_settings(opted_in, STRICT_FETCH)
    assert (settings.ca_file, settings.allow_private_networks) == ("/etc/k8s-ca.pem", True)


def test_a_ca_file_without_certificates_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    issuer = FederationIssuerSettings(issuer="https://issuer.test", discovery=True,
                                      ca_file=str(bad))
    with pytest.raises(ConfigError) as caught:
        build_issuer_source("corp", issuer, STRICT_FETCH)
    assert [path for path, _ in caught.value.problems] == ["federation.issuers.corp.ca_file"]


def test_the_settings_key_holds_everything_that_shapes_fetching(ca_file: str) -> None:
    def key(fetch: Any = STRICT_FETCH, **changes: Any) -> object:
        issuer = FederationIssuerSettings(**{"issuer": "https://issuer.test", "discovery": True,
                                             "ca_file": ca_file, **changes})
        source = build_issuer_source("corp", issuer, fetch)
        assert isinstance(source, IssuerKeySource)
        return source.settings_key

    assert key() == key() and hash(key()) == hash(key())
    assert key(jwks_hosts=["keys.test"]) != key()
    assert key(bearer_token_file="/var/run/token") != key()
    assert key(allow_private_networks=True) != key()
    assert key(ca_file=None) != key()
    assert key(fetch=fetch_settings(allow_http=False, allow_private_networks=False,
                                    min_ttl=30.0)) != key()


def static(kind: str, document: object, preset: dict[str, Any] | None = None) -> KeySource:
    value = JwksFile("/etc/gateway/corp.json", document) if kind == "jwks_file" else document
    issuer = FederationIssuerSettings(**{"issuer": "https://issuer.test", kind: value,
                                         **(preset or {})})
    return build_issuer_source("corp", issuer, STRICT_FETCH)


@pytest.mark.parametrize("kind", ["jwks", "jwks_file"])
def test_static_keys_are_imported_at_once(kind: str) -> None:
    source = static(kind, {"keys": [es_key(0), es_key(1)]})
    assert isinstance(source, StaticKeySource) and source.kind == kind
    current = source.current()
    assert set(current.by_kid) == {KEY_A, KEY_B}


SECRET = b64url(b"\x05" * 32)


@pytest.mark.parametrize(("kind", "document", "paths"), [
    pytest.param("jwks", {"keys": [es_key(0), {**es_key(1), "d": SECRET}]},
                 ["federation.issuers.corp.jwks.keys[1]"], id="private-key"),
    pytest.param("jwks_file", {"keys": [{"kty": "oct", "k": SECRET}]},
                 ["federation.issuers.corp.jwks_file.keys[0]",
                  "federation.issuers.corp.jwks_file"], id="oct-key"),
    pytest.param("jwks", {"keys": [{**es_key(0), "use": "enc"}]},
                 ["federation.issuers.corp.jwks.keys[0]", "federation.issuers.corp.jwks"],
                 id="no-usable-key"),
    pytest.param("jwks_file", [es_key(0)], ["federation.issuers.corp.jwks_file"],
                 id="not-a-jwk-set"),
])
def test_static_problems_are_config_errors_at_their_paths(
    kind: str, document: object, paths: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        static(kind, document)
    assert [path for path, _ in caught.value.problems] == paths
    assert SECRET not in str(caught.value)


async def test_the_key_source_contract(platform: Platform, make_source: SourceFactory) -> None:
    watched = make_source(issuer=platform.url(), discovery=True)
    await watched.settle()
    source = watched.source
    await source.start()  # a second start is harmless
    assert source.settled() and source.ready()
    refreshed = await source.refresh_for_unknown_kid()
    assert refreshed is not None and set(refreshed.by_kid) == {KEY_A}
    await source.close()
    await source.close()
    assert source.current() is not None  # closing stops fetching, not serving
    assert await source.refresh_for_unknown_kid() is not None
    assert platform.paths() == [DISCOVERY_PATH, "/keys"] * 2
