"""fetch_jwks against real loopback servers: limits, content checks, redirects, TLS, SSRF guard."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from gateway.adapters.jwks_fetch import (
    FETCH_RESULTS,
    MAX_ETAG_LENGTH,
    JwksFetchError,
    cache_lifetime,
    fetch_jwks,
    is_json_media_type,
    loggable_uri,
    new_jwks_session,
)
from gateway.adapters.jwks_guard import ForbiddenAddress, GuardedResolver, is_forbidden_address
from gateway.config.settings import JwksFetchSettings
from tests.support.jwks_server import (
    JwksServer,
    ServerFactory,
    fetch_settings,
    start_jwks_server,
)
from tests.support.tokens import b64url, make_signer

SessionFactory = Callable[..., aiohttp.ClientSession]


def es_key(slot: int = 0) -> dict[str, Any]:
    return dict(make_signer("ES256", slot=slot).public_jwk)


def rsa_1024_key() -> dict[str, Any]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    n = numbers.public_numbers().n
    return {"kty": "RSA", "kid": "short", "n": b64url(n.to_bytes(128, "big")), "e": "AQAB"}


def off_curve_key() -> dict[str, Any]:
    # Well-formed members, but not a point of P-256: only the import can tell.
    return {"kty": "EC", "crv": "P-256", "kid": "off", "x": b64url(b"\x01" * 32),
            "y": b64url(b"\x02" * 32)}


@pytest.fixture
async def open_session() -> AsyncIterator[SessionFactory]:
    sessions: list[aiohttp.ClientSession] = []

    def open_(settings: JwksFetchSettings, **kwargs: Any) -> aiohttp.ClientSession:
        sessions.append(new_jwks_session(settings, **kwargs))
        return sessions[-1]

    yield open_
    for session in sessions:
        await session.close()


@pytest.fixture
async def jwks(aiohttp_server: ServerFactory) -> JwksServer:
    return await start_jwks_server(aiohttp_server, [es_key()])


async def fetch(open_session: SessionFactory, url: str, etag: str | None = None,
                **settings: Any) -> Any:
    chosen = fetch_settings(**settings)
    return await fetch_jwks(open_session(chosen), url, chosen, etag)


async def refused(open_session: SessionFactory, url: str, **settings: Any) -> JwksFetchError:
    with pytest.raises(JwksFetchError) as caught:
        await fetch(open_session, url, **settings)
    assert caught.value.reason in FETCH_RESULTS
    return caught.value


async def test_fetch_returns_usable_keys_etag_and_lifetime(
    jwks: JwksServer, open_session: SessionFactory
) -> None:
    jwks.etag = '"v1"'
    jwks.headers["Cache-Control"] = "public, max-age=120"
    result = await fetch(open_session, jwks.url(), min_ttl=10.0)
    assert not result.not_modified
    assert [key["kid"] for key in result.keys] == ["es256-0"]
    assert list(result.keyset.by_kid) == ["es256-0"]
    assert (result.etag, result.lifetime, result.problems) == ('"v1"', 120.0, ())
    assert jwks.asked[0].headers["Accept"].startswith("application/jwk-set+json")
    assert "If-None-Match" not in jwks.asked[0].headers


async def test_matching_etag_costs_a_304(jwks: JwksServer, open_session: SessionFactory) -> None:
    jwks.etag = '"v1"'
    jwks.headers["Cache-Control"] = "max-age=300"
    result = await fetch(open_session, jwks.url(), etag='"v1"')
    assert (result.not_modified, result.keys, result.etag, result.lifetime) == (
        True, (), '"v1"', 300.0)
    assert jwks.asked[0].headers["If-None-Match"] == '"v1"'


async def test_an_overlong_etag_is_not_kept_to_be_echoed_back(
    jwks: JwksServer, open_session: SessionFactory
) -> None:
    # A key server must not make us send it (or keep in memory) an unbounded header.
    jwks.etag = '"' + "e" * (MAX_ETAG_LENGTH - 2) + '"'
    assert (await fetch(open_session, jwks.url())).etag == jwks.etag  # at the limit: kept
    jwks.etag = '"' + "e" * (MAX_ETAG_LENGTH - 1) + '"'
    assert (await fetch(open_session, jwks.url())).etag is None  # next fetch: unconditional


async def test_304_without_a_sent_etag_is_a_bad_status(
    jwks: JwksServer, open_session: SessionFactory
) -> None:
    jwks.status = 304
    assert (await refused(open_session, jwks.url())).reason == "bad_status"


@pytest.mark.parametrize("content_type", [
    "application/json", "application/jwk-set+json", "application/JSON; charset=utf-8",
    "application/vnd.example+json",
])
async def test_json_content_types_are_accepted(
    jwks: JwksServer, open_session: SessionFactory, content_type: str
) -> None:
    jwks.content_type = content_type
    assert len((await fetch(open_session, jwks.url())).keys) == 1


@pytest.mark.parametrize(("content_type", "expected"), [
    ("text/html", False), ("application/jsonp", False), ("text/json", False),
    ("application/+json", False), (None, False), ("application/jose+json ; x=y", True),
])
def test_json_media_type(content_type: str | None, expected: bool) -> None:
    assert is_json_media_type(content_type) is expected


def shaped(server: JwksServer, **changes: Any) -> None:
    for name, value in changes.items():
        setattr(server, name, value)


@pytest.mark.parametrize(("changes", "reason"), [
    pytest.param({"status": 500}, "bad_status", id="500"),
    pytest.param({"status": 404}, "bad_status", id="404"),
    pytest.param({"content_type": "text/html"}, "bad_content_type", id="html"),
    pytest.param({"content_type": None}, "bad_content_type", id="no-content-type"),
    pytest.param({"body": b"not json"}, "bad_document", id="not-json"),
    pytest.param({"body": b"[" * 2000 + b"]" * 2000}, "bad_document", id="deep-nesting"),
    pytest.param({"body": b'{"keys": {}}'}, "bad_document", id="keys-not-a-list"),
    pytest.param({"body": b'[{"kty": "EC"}]'}, "bad_document", id="top-level-list"),
    pytest.param({"keys": []}, "no_usable_key", id="empty-set"),
    pytest.param({"keys": [{**es_key(), "d": b64url(b"\x05" * 32)}]}, "secret_key_material",
                 id="private-key"),
    pytest.param({"keys": [{"kty": "oct", "k": b64url(b"secret")}]}, "secret_key_material",
                 id="oct"),
    pytest.param({"keys": [rsa_1024_key()]}, "no_usable_key", id="rsa-1024"),
    pytest.param({"keys": [off_curve_key()]}, "no_usable_key", id="off-curve"),
    pytest.param({"keys": [{"kty": "XYZ"}]}, "no_usable_key", id="unknown-kty"),
    pytest.param({"body": b" " * 5000}, "too_large", id="content-length"),
    pytest.param({"body": b" " * 50_000, "chunked": True}, "too_large", id="chunked"),
    pytest.param({"body": gzip.compress(b" " * 200_000), "headers": {"Content-Encoding": "gzip"}},
                 "too_large", id="gzip-expands"),
    pytest.param({"delay": 1.0}, "timeout", id="slow"),
])
async def test_failed_fetch_reasons(
    jwks: JwksServer, open_session: SessionFactory, changes: dict[str, Any], reason: str
) -> None:
    shaped(jwks, **changes)
    error = await refused(open_session, jwks.url(), max_bytes=4096, timeout=0.3)
    assert error.reason == reason
    assert jwks.fetches == 1


async def test_unusable_keys_are_skipped_and_reported(
    jwks: JwksServer, open_session: SessionFactory
) -> None:
    jwks.keys = [{"kty": "XYZ"}, {**es_key(1), "use": "enc"}, rsa_1024_key(), off_curve_key(),
                 es_key()]
    result = await fetch(open_session, jwks.url())
    assert [key["kid"] for key in result.keys] == ["es256-0"]
    assert [key.kid for key in result.keyset.keys] == ["es256-0"]
    assert len(result.problems) == 4
    problems = " ".join(result.problems)
    assert "unsupported kty" in problems and "'use'" in problems and "1024 bits" in problems
    assert "jwks.keys[3]: cannot import" in problems


@pytest.mark.parametrize("secret", [
    pytest.param({**es_key(1), "d": b64url(b"\x05" * 32)}, id="private-ec-key"),
    pytest.param({**rsa_1024_key(), "p": b64url(b"\x05" * 64)}, id="rsa-prime"),
    pytest.param({"kty": "oct", "k": b64url(b"\x05" * 32)}, id="oct-key"),
    pytest.param({"kty": "XYZ", "d": b64url(b"\x05" * 32)}, id="unknown-kty-with-d"),
])
async def test_a_set_publishing_secret_key_material_is_refused_whole(
    jwks: JwksServer, open_session: SessionFactory, secret: dict[str, Any]
) -> None:
    # A key server leaking a private or shared key next to good ones is compromised or
    # broken: its good-looking keys are not to be trusted either.
    jwks.keys = [es_key(), secret, es_key(2)]
    error = await refused(open_session, jwks.url())
    assert error.reason == "secret_key_material"
    assert error.detail.startswith("jwks.keys[1]: ")
    assert b64url(b"\x05" * 32) not in str(error) and "BQUF" not in str(error)


async def test_unreachable_port_is_a_connect_error(open_session: SessionFactory) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await refused(open_session, f"http://127.0.0.1:{port}/jwks")
    assert error.reason == "connect_error"


async def test_same_origin_redirects_are_followed(
    jwks: JwksServer, open_session: SessionFactory
) -> None:
    jwks.redirects = {"/a": "/b", "/b": jwks.url("/c"), "/c": "jwks"}
    result = await fetch(open_session, jwks.url("/a"))
    assert len(result.keys) == 1
    assert [asked.path for asked in jwks.asked] == ["/a", "/b", "/c", "/jwks"]


@pytest.mark.parametrize(("redirects", "fetches"), [
    pytest.param({"/a": "http://localhost:{port}/jwks"}, 1, id="other-host"),
    pytest.param({"/a": "http://127.0.0.1:1/jwks"}, 1, id="other-port"),
    pytest.param({"/a": "https://127.0.0.1:{port}/jwks"}, 1, id="other-scheme"),
    pytest.param({"/a": "/b", "/b": "/c", "/c": "/d", "/d": "/jwks"}, 4, id="four-hops"),
    pytest.param({"/a": "/a"}, 4, id="loop"),
])
async def test_redirects_elsewhere_or_too_many_are_refused(
    jwks: JwksServer, open_session: SessionFactory, redirects: dict[str, str], fetches: int
) -> None:
    assert jwks.server is not None
    jwks.redirects = {path: to.format(port=jwks.server.port) for path, to in redirects.items()}
    assert (await refused(open_session, jwks.url("/a"))).reason == "redirect_refused"
    assert jwks.fetches == fetches


async def test_plain_http_needs_allow_http(jwks: JwksServer, open_session: SessionFactory) -> None:
    assert (await refused(open_session, jwks.url(), allow_http=False)).reason == "http_refused"
    assert jwks.fetches == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_needs_allow_private_networks(
    jwks: JwksServer, open_session: SessionFactory, host: str
) -> None:
    error = await refused(open_session, jwks.url(host=host), allow_private_networks=False)
    assert error.reason == "forbidden_address"
    assert jwks.fetches == 0
    result = await fetch(open_session, jwks.url(host=host), allow_private_networks=True)
    assert len(result.keys) == 1
    assert jwks.fetches == 1


async def test_ipv6_loopback_literal_is_refused(open_session: SessionFactory) -> None:
    error = await refused(open_session, "http://[::1]:9/jwks", allow_private_networks=False)
    assert error.reason == "forbidden_address"


class FixedResolver(AbstractResolver):
    """Name resolution under test control: each name maps to the given addresses, in turn."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls = 0

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls += 1
        addresses = self.answers[host].pop(0)
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for address in addresses]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["8.8.8.8", "127.0.0.1"],
                                       ["::ffff:127.0.0.1"]])
async def test_names_resolving_to_private_addresses_are_refused_before_connecting(
    jwks: JwksServer, open_session: SessionFactory, addresses: list[str]
) -> None:
    assert jwks.server is not None
    settings = fetch_settings(allow_private_networks=False)
    resolver = FixedResolver({"keys.example.test": [addresses]})
    session = open_session(settings, resolver=resolver)
    with pytest.raises(JwksFetchError) as caught:
        await fetch_jwks(session, f"http://keys.example.test:{jwks.server.port}/jwks", settings,
                         None)
    assert caught.value.reason == "forbidden_address"
    assert (resolver.calls, jwks.fetches) == (1, 0)


async def test_the_connection_goes_to_the_vetted_address(
    jwks: JwksServer, open_session: SessionFactory
) -> None:
    assert jwks.server is not None
    settings = fetch_settings(allow_private_networks=True)
    resolver = FixedResolver({"keys.example.test": [["127.0.0.1"]]})
    session = open_session(settings, resolver=resolver)
    url = f"http://keys.example.test:{jwks.server.port}/jwks"
    result = await fetch_jwks(session, url, settings, None)
    assert len(result.keys) == 1
    assert jwks.asked[0].headers["Host"] == f"keys.example.test:{jwks.server.port}"


async def test_every_resolution_is_checked_again() -> None:
    # A name that answers a public address first and loopback next (DNS rebinding).
    inner = FixedResolver({"keys.example.test": [["8.8.8.8"], ["127.0.0.1"]]})
    guarded = GuardedResolver(inner, allow_private_networks=False)
    assert [r["host"] for r in await guarded.resolve("keys.example.test", 443)] == ["8.8.8.8"]
    with pytest.raises(ForbiddenAddress):
        await guarded.resolve("keys.example.test", 443)


@pytest.mark.parametrize(("address", "forbidden"), [
    ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("127.0.0.1", True),
    ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True), ("169.254.169.254", True),
    ("100.100.100.200", True), ("0.0.0.0", True), ("224.0.0.1", True), ("240.0.0.1", True),
    ("255.255.255.255", True), ("::1", True), ("::", True), ("fe80::1", True), ("fd00::1", True),
    ("ff02::1", True), ("::ffff:127.0.0.1", True), ("::ffff:10.0.0.1", True),
    ("::ffff:8.8.8.8", False), ("192.0.2.1", True),
])
def test_forbidden_addresses(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is forbidden


@pytest.fixture(scope="module")
def tls() -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return ca, context


@pytest.mark.parametrize("trusted", [True, False], ids=["ca_file", "system-store-only"])
async def test_https_trusts_the_system_store_plus_ca_file(
    aiohttp_server: ServerFactory, open_session: SessionFactory, tmp_path: Path,
    tls: tuple[trustme.CA, ssl.SSLContext], trusted: bool,
) -> None:
    ca, context = tls
    server = await start_jwks_server(aiohttp_server, [es_key()], ssl=context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = fetch_settings(allow_http=False, ca_file=str(ca_file) if trusted else None)
    url = server.url(host="localhost")
    assert url.startswith("https://")
    if trusted:
        assert len((await fetch_jwks(open_session(settings), url, settings, None)).keys) == 1
    else:
        with pytest.raises(JwksFetchError) as caught:
            await fetch_jwks(open_session(settings), url, settings, None)
        assert caught.value.reason == "tls_error"


def test_loggable_uri_drops_query_and_user_info() -> None:
    shown = loggable_uri("https://user:pw@keys.example:8443/t/jwks.json?token=s3cret#x")
    assert shown == "https://keys.example:8443/t/jwks.json"


SETTINGS = fetch_settings(min_ttl=60.0, max_ttl=3600.0)
NOW = 1_750_000_000.0
DATE = "Sun, 15 Jun 2025 15:06:40 GMT"  # NOW as an HTTP date


@pytest.mark.parametrize(("headers", "lifetime"), [
    pytest.param({}, 60.0, id="no-headers"),
    pytest.param({"Cache-Control": "max-age=300"}, 300.0, id="max-age"),
    pytest.param({"Cache-Control": "public, MAX-AGE=\"300\""}, 300.0, id="quoted"),
    pytest.param({"Cache-Control": "max-age=5"}, 60.0, id="below-min"),
    pytest.param({"Cache-Control": "max-age=999999"}, 3600.0, id="above-max"),
    pytest.param({"Cache-Control": "max-age=300", "Age": "100"}, 200.0, id="age"),
    pytest.param({"Cache-Control": "s-maxage=900"}, 60.0, id="s-maxage-ignored"),
    pytest.param({"Cache-Control": "max-age=300, no-cache"}, 60.0, id="no-cache"),
    pytest.param({"Cache-Control": "no-store, max-age=300"}, 60.0, id="no-store"),
    pytest.param({"Cache-Control": "max-age=ten"}, 60.0, id="bad-max-age"),
    pytest.param({"Cache-Control": "max-age=-1"}, 60.0, id="negative"),
    pytest.param({"Cache-Control": "max-age=600", "Expires": "Sun, 15 Jun 2025 15:10:00 GMT"},
                 600.0, id="max-age-wins"),
    pytest.param({"Expires": "Sun, 15 Jun 2025 15:26:40 GMT"}, 1200.0, id="expires-vs-now"),
    pytest.param({"Expires": "Sun, 15 Jun 2025 15:26:40 GMT",
                  "Date": "Sun, 15 Jun 2025 15:16:40 GMT"}, 600.0, id="expires-vs-date"),
    pytest.param({"Expires": "0"}, 60.0, id="bad-expires"),
    pytest.param({"Expires": "Sun, 15 Jun 2025 14:00:00 GMT", "Date": DATE}, 60.0,
                 id="expired"),
])
def test_cache_lifetime(headers: dict[str, str], lifetime: float) -> None:
    assert cache_lifetime(headers, NOW, SETTINGS) == lifetime


def test_cache_lifetime_reads_repeated_fields() -> None:
    headers = CIMultiDict([("Cache-Control", "public"), ("Cache-Control", "max-age=900")])
    assert cache_lifetime(headers, NOW, SETTINGS) == 900.0


def test_expires_now_means_min_ttl() -> None:
    assert cache_lifetime({"Expires": DATE}, NOW, SETTINGS) == 60.0
