"""Discovery documents rewritten to name the gateway: URLs, auth metadata, bad documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.core.clients import LegacyPolicy
from gateway.core.discovery_document import (
    MAX_DOCUMENT_BYTES,
    DiscoveryRewrite,
    UnusableDocument,
    check_representation,
    discovery_paths,
    entity_tag,
    none_match,
    origin_of,
    parse_document,
)

NOW = 1_750_000_000.0
BACKEND = "http://legacy-idp.internal:8000"
ISSUER_ORIGIN = "https://idp.example.com"
GATEWAY = "https://gw.example.com"
TOKEN = "/realms/main/protocol/openid-connect/token"
INTROSPECT = TOKEN + "/introspect"
REVOKE = "/realms/main/protocol/openid-connect/revoke"
CERTS = "/realms/main/protocol/openid-connect/certs"
AUTHORIZE = "/realms/main/protocol/openid-connect/auth"
ALGORITHMS = ("PS256", "ES256", "EdDSA")


def rewrite_for(*, endpoints: tuple[str, ...] = (TOKEN, INTROSPECT, REVOKE),
                passthrough: tuple[str, ...] = (CERTS,),
                legacy: tuple[LegacyPolicy, ...] = ()) -> DiscoveryRewrite:
    return DiscoveryRewrite(
        paths=frozenset(), public_base=GATEWAY,
        origins=frozenset({BACKEND, ISSUER_ORIGIN}),
        endpoints=frozenset(endpoints), routes=frozenset(endpoints) | frozenset(passthrough),
        algorithms=ALGORITHMS, legacy=legacy)


def keycloak_like(origin: str = BACKEND) -> dict[str, Any]:
    return {
        "issuer": ISSUER_ORIGIN + "/realms/main",
        "authorization_endpoint": origin + AUTHORIZE,
        "token_endpoint": origin + TOKEN,
        "introspection_endpoint": origin + INTROSPECT,
        "revocation_endpoint": origin + REVOKE,
        "jwks_uri": origin + CERTS,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth",
            "client_secret_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["HS256", "RS256"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic"],
        "mtls_endpoint_aliases": {"token_endpoint": origin + TOKEN,
                                  "userinfo_endpoint": origin + "/userinfo"},
    }


def rewritten(document: dict[str, Any] | bytes, rewrite: DiscoveryRewrite | None = None,
              now: float = NOW) -> dict[str, Any]:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    result: dict[str, Any] = json.loads((rewrite or rewrite_for()).rewrite(body, now))
    return result


@pytest.mark.parametrize(("issuer", "expected"), [
    ("https://idp.example.com", set()),
    ("https://idp.example.com/", set()),
    ("https://idp.example.com/realms/main", {
        "/.well-known/oauth-authorization-server/realms/main",
        "/.well-known/openid-configuration/realms/main",
        "/realms/main/.well-known/openid-configuration",
        "/realms/main/.well-known/oauth-authorization-server"}),
    ("https://idp.example.com/tenant/", {
        "/.well-known/oauth-authorization-server/tenant",
        "/.well-known/openid-configuration/tenant",
        "/tenant/.well-known/openid-configuration",
        "/tenant/.well-known/oauth-authorization-server"}),
], ids=["origin", "origin-slash", "path", "path-slash"])
def test_discovery_paths_are_the_bare_and_the_issuer_path_forms(
    issuer: str, expected: set[str]
) -> None:
    bare = {"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"}
    assert discovery_paths(issuer) == bare | expected


@pytest.mark.parametrize(("url", "origin"), [
    ("HTTPS://IdP.Example.com:443/x", "https://idp.example.com"),
    ("http://legacy-idp.internal:8000/x?y#z", "http://legacy-idp.internal:8000"),
    ("http://h:80", "http://h"),
    ("https://[::1]:8443/t", "https://[::1]:8443"),
    ("ftp://h/x", None),
    ("https://user@h/x", None),
    ("https://h:99999/x", None),
    ("https://h:port/x", None),
    ("/relative/path", None),
    ("https:///nohost", None),
], ids=["case-default-port", "port-kept", "http-default", "ipv6", "ftp", "userinfo",
        "port-range", "port-text", "relative", "no-host"])
def test_origin_of(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


def test_backend_urls_of_served_paths_name_the_gateway_and_nothing_else_moves() -> None:
    document = rewritten(keycloak_like())
    assert document["issuer"] == ISSUER_ORIGIN + "/realms/main"
    assert document["token_endpoint"] == GATEWAY + TOKEN
    assert document["introspection_endpoint"] == GATEWAY + INTROSPECT
    assert document["revocation_endpoint"] == GATEWAY + REVOKE
    assert document["jwks_uri"] == GATEWAY + CERTS  # a passthrough path
    assert document["mtls_endpoint_aliases"]["token_endpoint"] == GATEWAY + TOKEN
    # Not served by the gateway: left pointing at the IdP.
    assert document["authorization_endpoint"] == BACKEND + AUTHORIZE
    assert document["mtls_endpoint_aliases"]["userinfo_endpoint"] == BACKEND + "/userinfo"
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials"]
    original = list(keycloak_like())
    assert list(document)[:len(original)] == original  # member order kept, new ones last


def test_the_idp_naming_the_issuers_host_is_rewritten_too() -> None:
    document = rewritten(keycloak_like(ISSUER_ORIGIN))
    assert document["token_endpoint"] == GATEWAY + TOKEN
    assert document["authorization_endpoint"] == ISSUER_ORIGIN + AUTHORIZE


def test_other_hosts_and_near_miss_paths_are_left_alone() -> None:
    document = rewritten({
        "issuer": ISSUER_ORIGIN,
        "token_endpoint": "https://elsewhere.example" + TOKEN,
        "introspection_endpoint": BACKEND + INTROSPECT + "/",
        "revocation_endpoint": BACKEND + "/REALMS/main/protocol/openid-connect/revoke",
        "jwks_uri": "https://user@legacy-idp.internal:8000" + CERTS,
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    })
    assert document["token_endpoint"] == "https://elsewhere.example" + TOKEN
    assert document["introspection_endpoint"] == BACKEND + INTROSPECT + "/"
    assert document["revocation_endpoint"].startswith(BACKEND)
    assert document["jwks_uri"].startswith("https://user@")
    # Not the gateway's token endpoint: the IdP's own methods stay.
    assert document["token_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    assert "introspection_endpoint_auth_methods_supported" not in document


def test_the_issuer_is_never_changed_even_on_a_served_backend_url() -> None:
    document = rewritten({"issuer": BACKEND + CERTS, "jwks_uri": BACKEND + CERTS})
    assert document == {"issuer": BACKEND + CERTS, "jwks_uri": GATEWAY + CERTS}
    odd = {"jwks_uri": BACKEND + CERTS, "issuer": [BACKEND + CERTS]}  # not even a string
    assert rewritten(odd) == {"jwks_uri": GATEWAY + CERTS, "issuer": [BACKEND + CERTS]}


def test_query_and_fragment_are_kept() -> None:
    document = rewritten({"token_endpoint": BACKEND + TOKEN + "?tenant=a#f"})
    assert document["token_endpoint"] == GATEWAY + TOKEN + "?tenant=a#f"


def test_each_endpoint_lists_what_the_gateway_accepts_there() -> None:
    document = rewritten(keycloak_like())
    for kind in ("token", "introspection", "revocation"):
        assert document[f"{kind}_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert document[f"{kind}_endpoint_auth_signing_alg_values_supported"] == list(
            ALGORITHMS)


def test_an_endpoint_missing_from_the_document_gets_no_metadata() -> None:
    document = rewritten({"token_endpoint": BACKEND + TOKEN})
    assert set(document) == {"token_endpoint", "token_endpoint_auth_methods_supported",
                             "token_endpoint_auth_signing_alg_values_supported"}


def test_a_passthrough_endpoint_keeps_the_idps_methods() -> None:
    rewrite = rewrite_for(endpoints=(TOKEN,), passthrough=(REVOKE,))
    document = rewritten(keycloak_like(), rewrite)
    assert document["revocation_endpoint"] == GATEWAY + REVOKE
    assert document["revocation_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    assert document["introspection_endpoint"] == BACKEND + INTROSPECT  # not served at all


def test_an_idp_already_naming_the_gateway_gets_its_metadata() -> None:
    document = rewritten({"token_endpoint": GATEWAY + TOKEN})
    assert document["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]


@pytest.mark.parametrize(("policies", "methods"), [
    ((), ["private_key_jwt"]),
    ((LegacyPolicy(frozenset({"client_secret_post"}), None, None),),
     ["private_key_jwt", "client_secret_post"]),
    ((LegacyPolicy(frozenset({"client_secret_post"}), NOW + 1, None),
      LegacyPolicy(frozenset({"client_secret_basic"}), None, None)),
     ["private_key_jwt", "client_secret_basic", "client_secret_post"]),
    ((LegacyPolicy(frozenset({"client_secret_basic", "client_secret_post"}), NOW, None),),
     ["private_key_jwt"]),
], ids=["no-migration", "one-client", "two-clients", "deadline-passed"])
def test_secret_methods_are_listed_only_while_a_client_may_use_them(
    policies: tuple[LegacyPolicy, ...], methods: list[str]
) -> None:
    document = rewritten(keycloak_like(), rewrite_for(legacy=policies))
    assert document["token_endpoint_auth_methods_supported"] == methods
    assert document["revocation_endpoint_auth_methods_supported"] == methods


def test_a_rewritten_document_rewrites_to_itself() -> None:
    rewrite = rewrite_for()
    once = rewrite.rewrite(json.dumps(keycloak_like()).encode(), NOW)
    assert rewrite.rewrite(once, NOW) == once


def test_duplicate_members_leave_one_unambiguous_member() -> None:
    body = (b'{"token_endpoint":"https://elsewhere.example/t",'
            b'"token_endpoint":"' + (BACKEND + TOKEN).encode() + b'"}')
    raw = rewrite_for().rewrite(body, NOW)
    assert raw.count(b'"token_endpoint"') == 1
    assert json.loads(raw)["token_endpoint"] == GATEWAY + TOKEN


def test_the_output_is_ascii_json_even_with_lone_surrogates() -> None:
    raw = rewrite_for().rewrite(b'{"op_policy_uri":"\\ud800","name":"\xc3\xa9"}', NOW)
    assert raw.isascii()
    assert json.loads(raw) == {"op_policy_uri": "\ud800", "name": "\u00e9"}


def test_urls_deep_in_the_document_are_found_without_recursion() -> None:
    body = b'{"x":' + b"[" * 900 + json.dumps(BACKEND + TOKEN).encode() + b"]" * 900 + b"}"
    raw = rewrite_for().rewrite(body, NOW)
    assert (GATEWAY + TOKEN).encode() in raw and BACKEND.encode() not in raw


@pytest.mark.parametrize("body", [
    b"", b"{", b"not json", b'{"a":1} trailing', b"\xff\xfe{", b'{"a":NaN}',
    b'{"a":Infinity}', b'{"a":1e400}', b'{"a":' + b"1" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
], ids=["empty", "truncated", "text", "trailing", "bad-utf", "nan", "infinity", "overflow",
        "huge-int", "too-deep"])
def test_malformed_json_is_unusable(body: bytes) -> None:
    with pytest.raises(UnusableDocument, match="not JSON"):
        rewrite_for().rewrite(body, NOW)


@pytest.mark.parametrize("body", [b"[]", b'"https://x"', b"null", b"42", b"true"])
def test_a_document_must_be_an_object(body: bytes) -> None:
    with pytest.raises(UnusableDocument, match="not an object"):
        parse_document(body)


def test_a_document_over_the_bound_is_unusable_before_parsing() -> None:
    padding = "x" * MAX_DOCUMENT_BYTES
    with pytest.raises(UnusableDocument, match="over"):
        rewrite_for().rewrite(json.dumps({"pad": padding}).encode(), NOW)
    with pytest.raises(UnusableDocument, match="over"):
        check_representation("application/json", None, MAX_DOCUMENT_BYTES + 1)


@pytest.mark.parametrize(("content_type", "encoding"), [
    ("application/json", None),
    ("Application/JSON; charset=utf-8", "identity"),
    ("application/problem+json", None),
])
def test_unencoded_json_is_usable(content_type: str, encoding: str | None) -> None:
    check_representation(content_type, encoding, 10)


@pytest.mark.parametrize(("content_type", "encoding", "why"), [
    (None, None, "content type missing"),
    ("text/html", None, "content type text/html"),
    ("text/json", None, "content type text/json"),
    ("application/jsonp", None, "content type"),
    ("application/json", "gzip", "content encoding"),
    ("application/json", "br", "content encoding"),
], ids=["missing", "html", "text-json", "jsonp", "gzip", "br"])
def test_other_representations_are_unusable(
    content_type: str | None, encoding: str | None, why: str
) -> None:
    with pytest.raises(UnusableDocument, match=why):
        check_representation(content_type, encoding, 10)


def test_the_entity_tag_names_exactly_these_bytes() -> None:
    tag = entity_tag(b"{}")
    assert tag.startswith('"') and tag.endswith('"') and tag == entity_tag(b"{}")
    assert tag != entity_tag(b"{ }")


@pytest.mark.parametrize(("header", "matches"), [
    ([], False),
    (['"abc"'], True),
    (['W/"abc"'], True),  # If-None-Match compares weakly
    (['"x", "abc"'], True),
    (['"x"', ' W/"abc" '], True),
    (["*"], True),
    (['"abcd"'], False),
    (["abc"], False),  # not an entity-tag
    (['"x", *'], False),
], ids=["none", "same", "weak", "list", "two-fields", "star", "other", "unquoted",
        "star-in-list"])
def test_if_none_match(header: list[str], matches: bool) -> None:
    assert none_match(header, '"abc"') is matches
