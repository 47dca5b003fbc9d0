"""Routing on the raw path: every spelling of a path is refused or forwarded exactly as sent."""

from __future__ import annotations

import pytest

from tests.conftest import TOKEN_PATH, Backend, Running
from tests.web.test_raw_http import FORM, exchange, fresh_body, head, post

DISCOVERY = "/.well-known/openid-configuration"
PROTECTED = "/admin/secret"

# Each is neither an endpoint nor a passthrough byte for byte, whatever a normaliser makes of it.
SPELLINGS = [
    "/.well-known/../admin/secret",
    "/.well-known/%2e%2e/admin/secret",
    "/.well-known/%2E%2E/admin/secret",
    "/.well-known/.%2e/admin/secret",
    f"{DISCOVERY}/../../admin/secret",
    f"{DISCOVERY}/..%2f..%2fadmin%2fsecret",
    f"{TOKEN_PATH}/../../admin/secret",
    "/oauth2/token/..",
    "/oauth2/./token",
    "/./oauth2/token",
    "/oauth2/token/.",
    "//oauth2/token",
    "/oauth2//token",
    f"/{DISCOVERY}",
    "/oauth2%2ftoken",
    "/oauth2%2Ftoken",
    "/.well-known%2fopenid-configuration",
    "/oauth2/token/",
    f"{DISCOVERY}/",
    "/OAUTH2/TOKEN",
    "/oauth2/Token",
    "/.WELL-KNOWN/openid-configuration",
    "/oauth2/token;x=1",
    "/oauth2;x=1/token",
    f"{DISCOVERY};x=1",
    "/oauth2/%74oken",
    "/%6fauth2/token",
    "/.well-known/openid-configuratio%6e",
    "/oauth2/token%00",
    "/oauth2/token%20",
    "/oauth2/token%09",
    "/oauth2/token#x",
    f"{DISCOVERY}#/../../admin/secret",
    "/oauth2/token\\..\\..\\admin\\secret",
    PROTECTED,
    "*",
]


def never_reached_protected(backend: Backend) -> None:
    assert not any("admin" in seen.path_qs for seen in backend.seen), backend.seen


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("path", SPELLINGS)
async def test_other_spellings_are_not_routed(
    gw: Running, backend: Backend, path: str, method: str
) -> None:
    body = fresh_body(gw)
    data = head(f"{method} {path} HTTP/1.1", f"Content-Type: {FORM}",
                f"Content-Length: {len(body)}") + body
    [reply] = await exchange(gw, data)
    if reply is not None:  # the parser may also refuse the target outright and hang up
        assert reply.status in (400, 404, 405), (reply.status, reply.body)
    assert backend.seen == [], [seen.path_qs for seen in backend.seen]
    never_reached_protected(backend)


@pytest.mark.parametrize("target", [
    f"{TOKEN_PATH}?x=1",
    f"{TOKEN_PATH}?a=%2F..%2Fadmin&b=/../admin/secret",
    f"{TOKEN_PATH}?a=1&a=2;b=%41",
    f"{TOKEN_PATH}??x",
])
async def test_a_query_on_the_endpoint_is_forwarded_exactly(
    gw: Running, backend: Backend, target: str
) -> None:
    [reply] = await exchange(gw, post(fresh_body(gw), path=target))
    assert reply is not None and reply.status == 200, reply
    [seen] = backend.seen
    assert seen.method == "POST" and seen.path_qs == target


@pytest.mark.parametrize("target", [
    f"{DISCOVERY}?x=1",
    f"{DISCOVERY}?a=/../../admin/secret&b=%2e%2e",
])
async def test_a_passthrough_query_is_forwarded_exactly(
    gw: Running, backend: Backend, target: str
) -> None:
    [reply] = await exchange(gw, head(f"GET {target} HTTP/1.1"))
    assert reply is not None and reply.status == 200, reply
    [seen] = backend.seen
    assert (seen.method, seen.path_qs) == ("GET", target)


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "TRACE",
                                    "CONNECT"])
async def test_only_post_reaches_an_endpoint(
    gw: Running, backend: Backend, method: str
) -> None:
    body = fresh_body(gw)
    target = "gw.test:443" if method == "CONNECT" else TOKEN_PATH
    data = head(f"{method} {target} HTTP/1.1", f"Content-Type: {FORM}",
                f"Content-Length: {len(body)}") + body
    [reply] = await exchange(gw, data, bodyless=method == "HEAD")
    if reply is not None:
        expected = (405,) if method != "CONNECT" else (400, 404, 405)
        assert reply.status in expected, (reply.status, reply.body)
        if reply.status == 405:
            assert reply.headers["Allow"] == "POST"
    assert backend.seen == []


@pytest.mark.parametrize("override", ["X-HTTP-Method-Override", "X-Method-Override",
                                      "X-HTTP-Method"])
async def test_method_override_headers_do_not_change_the_method(
    gw: Running, backend: Backend, override: str
) -> None:
    [reply] = await exchange(gw, post(fresh_body(gw), f"{override}: GET"))
    assert reply is not None and reply.status == 200, reply
    [seen] = backend.seen
    assert (seen.method, seen.path_qs) == ("POST", TOKEN_PATH)
    assert seen.form() == [("grant_type", "client_credentials")]
    assert override not in seen.headers  # a backend that honours it would see a GET


async def test_method_override_cannot_make_a_get_an_endpoint_call(
    gw: Running, backend: Backend
) -> None:
    body = fresh_body(gw)
    data = head(f"GET {TOKEN_PATH} HTTP/1.1", "X-HTTP-Method-Override: POST",
                f"Content-Type: {FORM}", f"Content-Length: {len(body)}") + body
    [reply] = await exchange(gw, data)
    assert reply is not None and reply.status == 405
    assert backend.seen == []


async def test_content_encoding_is_refused(gw: Running, backend: Backend) -> None:
    [reply] = await exchange(gw, post(fresh_body(gw), "Content-Encoding: gzip"))
    assert reply is not None and reply.status == 400
    assert backend.seen == []


@pytest.mark.parametrize("target", [
    f"http://evil.test{PROTECTED}",
    f"http://evil.test{TOKEN_PATH}/../..{PROTECTED}",
    f"http://gw.test{TOKEN_PATH}",
    f"http://evil.test{TOKEN_PATH}",
    f"https://evil.test:443{DISCOVERY}",
])
async def test_absolute_form_targets_are_not_a_way_around_routing(
    gw: Running, backend: Backend, target: str
) -> None:
    """The raw target starts with a scheme, so it never equals a configured path."""
    [reply] = await exchange(gw, post(fresh_body(gw), path=target))
    if reply is not None:
        assert reply.status in (400, 404), (reply.status, reply.body)
    assert backend.seen == []
