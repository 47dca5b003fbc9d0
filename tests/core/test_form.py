"""Token request bodies: content type, strict urlencoding, one auth mechanism, clean query."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from gateway.core.errors import (
    GatewayError,
    InvalidClient,
    InvalidRequest,
    UnsupportedAuthMethod,
    UntrustedFraming,
)
from gateway.core.form import (
    ASSERTION_TYPE,
    MAX_PARAMETERS,
    TokenForm,
    parse_form,
    parse_urlencoded,
)

FORM = "application/x-www-form-urlencoded"
TYPE_FIELD = "client_assertion_type=" + quote(ASSERTION_TYPE, safe="")
ASSERTION = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjIn0.c2ln"
GOOD = f"grant_type=client_credentials&scope=read+write&client_id=client-a&{TYPE_FIELD}" \
       f"&client_assertion={ASSERTION}"


def parse(body: str | bytes, *, content_type: str | None = FORM, authorization: bool = False,
          query: str = "", max_body: int = 65536) -> TokenForm:
    raw = body.encode() if isinstance(body, str) else body
    return parse_form(raw, content_type=content_type, has_authorization=authorization,
                      query_string=query, max_body=max_body)


def assert_refused(exc: GatewayError, cls: type[GatewayError], reason: str) -> None:
    assert type(exc) is cls
    assert (exc.code, exc.status, exc.reason) == (
        ("invalid_request", 400, reason) if issubclass(cls, InvalidRequest)
        else ("invalid_client", 401, reason)
    )


def test_typical_body() -> None:
    form = parse(GOOD)
    assert form == TokenForm(
        params=(("grant_type", "client_credentials"), ("scope", "read write")),
        client_id="client-a",
        assertion=ASSERTION,
    )


@pytest.mark.parametrize(
    ("body", "params", "client_id"),
    [
        pytest.param(f"{TYPE_FIELD}&client_assertion=x", (), None, id="no-client-id"),
        pytest.param(f"client_id=&{TYPE_FIELD}&client_assertion=x", (), None,
                     id="empty-client-id-is-omitted"),
        pytest.param(f"scope=&resource&{TYPE_FIELD}&client_assertion=x", (), None,
                     id="valueless-params-are-omitted"),
        pytest.param(f"a=1&&b=2&{TYPE_FIELD}&client_assertion=x&", (("a", "1"), ("b", "2")), None,
                     id="empty-fields-skipped"),
        pytest.param(f"scope=a+b%20c%2Bd&{TYPE_FIELD}&client_assertion=x", (("scope", "a b c+d"),),
                     None, id="plus-is-space-percent-plus-is-plus"),
        pytest.param(f"name=%C3%A9t%C3%A9&{TYPE_FIELD}&client_assertion=x", (("name", "été"),),
                     None, id="percent-encoded-utf8"),
        pytest.param(f"name=été&{TYPE_FIELD}&client_assertion=x", (("name", "été"),), None,
                     id="raw-utf8"),
        pytest.param(f"a=1;b=2&{TYPE_FIELD}&client_assertion=x", (("a", "1;b=2"),), None,
                     id="semicolon-is-not-a-separator"),
        pytest.param(f"a=x=y&{TYPE_FIELD}&client_assertion=x", (("a", "x=y"),), None,
                     id="equals-in-value"),
        pytest.param(f"client%5Fid=c&{TYPE_FIELD}&client_assertion=x", (), "c",
                     id="percent-encoded-name"),
        pytest.param(f"client_secret=&{TYPE_FIELD}&client_assertion=x", (), None,
                     id="empty-client-secret-is-not-a-mechanism"),
        pytest.param(f"{TYPE_FIELD.replace('%3A', '%3a')}&client_assertion=x", (), None,
                     id="assertion-type-lowercase-hex"),
        pytest.param(f"client_assertion_type={ASSERTION_TYPE}&client_assertion=x", (), None,
                     id="assertion-type-unescaped"),
        pytest.param(f"client_assertion_type={quote(ASSERTION_TYPE, safe='')[:-7]}%2Dbearer"
                     "&client_assertion=x", (), None, id="assertion-type-other-escapes"),
    ],
)
def test_accepted_bodies(body: str, params: tuple[tuple[str, str], ...],
                         client_id: str | None) -> None:
    form = parse(body)
    assert (form.params, form.client_id) == (params, client_id)


@pytest.mark.parametrize(
    "content_type",
    [
        FORM,
        "Application/X-WWW-Form-URLEncoded",
        f"{FORM}; charset=utf-8",
        f"{FORM};charset=UTF-8",
        f'{FORM}; charset="utf-8"',
        f"{FORM}; charset=us-ascii",
        f"{FORM};",
        f"  {FORM}  ; charset=utf-8 ",
    ],
)
def test_accepted_content_types(content_type: str) -> None:
    assert parse(GOOD, content_type=content_type).assertion == ASSERTION


def test_other_query_parameters_are_fine() -> None:
    assert parse(GOOD, query="tenant=x&debug").assertion == ASSERTION


def test_body_of_exactly_max_body_bytes() -> None:
    assert parse(GOOD, max_body=len(GOOD)).assertion == ASSERTION


REFUSALS: list[Any] = [
    # content type
    pytest.param(GOOD, {"content_type": None}, InvalidRequest, "bad_content_type", id="no-ct"),
    pytest.param(GOOD, {"content_type": "application/json"}, InvalidRequest, "bad_content_type",
                 id="ct-json"),
    pytest.param(GOOD, {"content_type": "multipart/form-data; boundary=x"}, InvalidRequest,
                 "bad_content_type", id="ct-multipart"),
    pytest.param(GOOD, {"content_type": "text/plain"}, InvalidRequest, "bad_content_type",
                 id="ct-text"),
    pytest.param(GOOD, {"content_type": f"{FORM}x"}, InvalidRequest, "bad_content_type",
                 id="ct-suffix"),
    pytest.param(GOOD, {"content_type": f"{FORM}; charset=latin-1"}, InvalidRequest,
                 "bad_content_type", id="ct-charset-latin1"),
    pytest.param(GOOD, {"content_type": f"{FORM}; boundary=x"}, InvalidRequest,
                 "bad_content_type", id="ct-other-parameter"),
    pytest.param(GOOD, {"content_type": f"{FORM}; charset=utf-8; charset=utf-8"},
                 InvalidRequest, "bad_content_type", id="ct-charset-twice"),
    pytest.param(GOOD, {"content_type": ""}, InvalidRequest, "bad_content_type", id="ct-empty"),
    # size
    pytest.param(GOOD, {"max_body": len(GOOD) - 1}, UntrustedFraming, "body_too_large",
                 id="body-one-byte-too-large"),
    # credentials in the query string
    pytest.param(GOOD, {"query": "client_assertion=x"}, InvalidRequest, "credentials_in_query",
                 id="query-assertion"),
    pytest.param(GOOD, {"query": "a=1&client_secret=s"}, InvalidRequest, "credentials_in_query",
                 id="query-secret"),
    pytest.param(GOOD, {"query": f"{TYPE_FIELD}"}, InvalidRequest, "credentials_in_query",
                 id="query-assertion-type"),
    pytest.param(GOOD, {"query": "client_id=other"}, InvalidRequest, "credentials_in_query",
                 id="query-client-id"),
    pytest.param(GOOD, {"query": "client%5Fsecret=s"}, InvalidRequest, "credentials_in_query",
                 id="query-percent-encoded-name"),
    pytest.param(GOOD, {"query": "a=1;client_secret=s"}, InvalidRequest, "credentials_in_query",
                 id="query-semicolon-separated"),
    pytest.param(GOOD, {"query": "client_assertion"}, InvalidRequest, "credentials_in_query",
                 id="query-valueless"),
    # encoding
    pytest.param(GOOD.encode() + b"&x=\xff", {}, InvalidRequest, "bad_encoding",
                 id="raw-bytes-not-utf8"),
    pytest.param(GOOD + "&x=%zz", {}, InvalidRequest, "bad_encoding", id="bad-escape"),
    pytest.param(GOOD + "&x=%4", {}, InvalidRequest, "bad_encoding", id="truncated-escape"),
    pytest.param(GOOD + "&x=%", {}, InvalidRequest, "bad_encoding", id="lone-percent"),
    pytest.param(GOOD + "&x=%C3", {}, InvalidRequest, "bad_encoding", id="truncated-utf8"),
    pytest.param(GOOD + "&x=%C3%28", {}, InvalidRequest, "bad_encoding", id="invalid-utf8"),
    pytest.param(GOOD + "&x=%ED%A0%80", {}, InvalidRequest, "bad_encoding", id="utf8-surrogate"),
    pytest.param(GOOD + "&%zz=1", {}, InvalidRequest, "bad_encoding", id="bad-escape-in-name"),
    pytest.param(GOOD + "&=value", {}, InvalidRequest, "bad_encoding", id="empty-name"),
    pytest.param("&".join(f"p{i}=1" for i in range(MAX_PARAMETERS)) + "&" + GOOD, {},
                 InvalidRequest, "too_many_parameters", id="too-many-parameters"),
    # duplicates (RFC 6749 §3.2), even when one of them is empty
    pytest.param(GOOD + "&grant_type=password", {}, InvalidRequest, "duplicate_parameter",
                 id="dup-grant-type"),
    pytest.param(GOOD + "&client_assertion=y", {}, InvalidRequest, "duplicate_parameter",
                 id="dup-assertion"),
    pytest.param(GOOD + "&client_id=", {}, InvalidRequest, "duplicate_parameter",
                 id="dup-client-id-one-empty"),
    pytest.param(GOOD + "&client%5Fid=other", {}, InvalidRequest, "duplicate_parameter",
                 id="dup-by-percent-encoding"),
    pytest.param(GOOD + "&scope", {}, InvalidRequest, "duplicate_parameter",
                 id="dup-valueless"),
    pytest.param(GOOD + f"&{TYPE_FIELD}", {}, InvalidRequest, "duplicate_parameter",
                 id="dup-assertion-type"),
    # mechanisms
    pytest.param(GOOD, {"authorization": True}, InvalidRequest, "multiple_auth_methods",
                 id="authorization-and-assertion"),
    pytest.param(GOOD + "&client_secret=s", {}, InvalidRequest, "multiple_auth_methods",
                 id="secret-and-assertion"),
    pytest.param("client_secret=s", {"authorization": True}, InvalidRequest,
                 "multiple_auth_methods", id="authorization-and-secret"),
    pytest.param(GOOD + "&client_secret=s", {"authorization": True}, InvalidRequest,
                 "multiple_auth_methods", id="all-three"),
    pytest.param("grant_type=client_credentials", {}, InvalidClient, "no_client_auth",
                 id="no-mechanism"),
    pytest.param("", {}, InvalidClient, "no_client_auth", id="empty-body"),
    pytest.param("client_id=a&client_assertion=", {}, InvalidClient, "no_client_auth",
                 id="empty-assertion-is-omitted"),
    pytest.param("grant_type=client_credentials", {"authorization": True}, UnsupportedAuthMethod,
                 "unsupported_auth_method", id="only-authorization"),
    pytest.param("client_id=a&client_secret=s", {}, UnsupportedAuthMethod,
                 "unsupported_auth_method", id="only-secret"),
    pytest.param(f"{TYPE_FIELD}&client_assertion=", {"authorization": True}, UnsupportedAuthMethod,
                 "unsupported_auth_method", id="authorization-and-empty-assertion"),
    pytest.param(f"{TYPE_FIELD}&client_assertion=", {}, InvalidRequest, "empty_assertion",
                 id="assertion-type-without-assertion"),
    # assertion type
    pytest.param("client_assertion=x", {}, InvalidRequest, "missing_assertion_type",
                 id="no-assertion-type"),
    pytest.param("client_assertion_type=&client_assertion=x", {}, InvalidRequest,
                 "missing_assertion_type", id="empty-assertion-type"),
    pytest.param("client_assertion=x&client_assertion_type="
                 "urn:ietf:params:oauth:client-assertion-type:saml2-bearer", {}, InvalidRequest,
                 "bad_assertion_type", id="saml-assertion-type"),
    pytest.param("client_assertion=x&client_assertion_type=" + ASSERTION_TYPE.upper(), {},
                 InvalidRequest, "bad_assertion_type", id="assertion-type-case"),
    pytest.param("client_assertion=x&client_assertion_type=" + ASSERTION_TYPE + "+", {},
                 InvalidRequest, "bad_assertion_type", id="assertion-type-trailing-space"),
]


@pytest.mark.parametrize(("body", "kwargs", "cls", "reason"), REFUSALS)
def test_refused(body: str | bytes, kwargs: dict[str, Any], cls: type[GatewayError],
                 reason: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse(body, **kwargs)
    assert_refused(caught.value, cls, reason)


def test_parse_urlencoded_keeps_order_and_drops_empty_values() -> None:
    assert list(parse_urlencoded(b"b=2&a=1&c=&d").items()) == [("b", "2"), ("a", "1")]


def test_assertion_is_not_among_forwarded_params() -> None:
    names = {name for name, _ in parse(GOOD).params}
    assert names.isdisjoint({"client_assertion", "client_assertion_type", "client_id"})
