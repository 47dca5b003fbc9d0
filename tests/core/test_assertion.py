"""Client assertions from the attacker's side: every rule refused with its exact reason."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import textwrap
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli.mint import generate_key, load_private_key, mint_assertion
from gateway.core import certificates
from gateway.core.assertion import (
    MAX_JTI_LENGTH,
    MAX_TOKEN_LENGTH,
    AssertionPolicy,
    ParsedAssertion,
    VerifiedAssertion,
    parse_assertion,
    verify_assertion,
)
from gateway.core.errors import GatewayError, InvalidClient, KeyMiss
from gateway.core.keyset import MAX_KEY_TRIES, KeySet, prepare_keyset
from tests.support.key_certificates import with_certificate
from tests.support.tokens import (
    AUDIENCE,
    CLIENT_ID,
    NOW,
    OMIT,
    Signer,
    b64url,
    compact,
    encode_segment,
    make_signer,
    valid_claims,
)

ALL_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
POLICY = AssertionPolicy(
    client_id=CLIENT_ID,
    algorithms=frozenset({"PS256", "ES256", "EdDSA", "RS256"}),
    audiences=frozenset({AUDIENCE}),
    max_lifetime=300.0,
    clock_skew=15.0,
    require_typ=False,
)
ES = make_signer("ES256")
RS = make_signer("RS256")


def check(token: str, keys: KeySet, policy: AssertionPolicy = POLICY,
          now: float = NOW) -> VerifiedAssertion:
    return verify_assertion(parse_assertion(token), keys, policy, now)


def refused(token: str, keys: KeySet, policy: AssertionPolicy = POLICY,
            now: float = NOW) -> InvalidClient:
    with pytest.raises(GatewayError) as caught:
        check(token, keys, policy, now)
    exc = caught.value
    assert isinstance(exc, InvalidClient)  # KeyMiss (a key miss) is one too
    assert (exc.code, exc.status) == ("invalid_client", 401)
    return exc


# ---------------------------------------------------------------- positive cases


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_each_algorithm_verifies(alg: str) -> None:
    signer = make_signer(alg)
    token = signer.assertion(jti="jti-1")
    result = check(token, signer.keyset(), replace(POLICY, algorithms=frozenset(ALL_ALGS)))
    assert result == VerifiedAssertion(
        client_id=CLIENT_ID, jti="jti-1", exp=NOW + 60, alg=alg, kid=signer.kid,
        key_thumbprint=signer.keyset().keys[0].thumbprint, iat=int(NOW),
    )


@pytest.mark.parametrize(
    ("token_alg", "allowed"),
    [
        pytest.param("EdDSA", "Ed25519", id="eddsa-token-ed25519-allowed"),
        pytest.param("Ed25519", "EdDSA", id="ed25519-token-eddsa-allowed"),
    ],
)
def test_eddsa_names_are_equivalent(token_alg: str, allowed: str) -> None:
    signer = make_signer(token_alg).with_jwk(alg=allowed)
    policy = replace(POLICY, algorithms=frozenset({allowed}))
    assert check(signer.assertion(), signer.keyset(), policy).alg == token_alg


def test_fractional_numeric_dates_are_accepted() -> None:
    token = ES.assertion(iat=NOW - 0.25, exp=NOW + 59.75, nbf=NOW - 0.5)
    assert check(token, ES.keyset()).exp == NOW + 59.75


def test_parsed_assertion_exposes_subject_and_kid() -> None:
    parsed = parse_assertion(ES.assertion())
    assert (parsed.subject, parsed.kid) == (CLIENT_ID, ES.kid)
    odd = parse_assertion(ES.assertion(header={"kid": OMIT}, sub=42))
    assert (odd.subject, odd.kid) == (None, None)


# ---------------------------------------------------------------- parsing

GOOD = ES.assertion()
HEADER, PAYLOAD, SIGNATURE = GOOD.split(".")
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip_spare_bit(last: str) -> str:
    # 64 signature bytes leave 4 unused bits in the last character: same bytes, other text.
    return B64URL[B64URL.index(last) ^ 1]


def _signed(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes | None = None) -> str:
    return ES.sign(header, valid_claims() if claims is None else claims)


PARSE_REFUSALS: list[Any] = [
    pytest.param("", "malformed", id="empty"),
    pytest.param(f"{HEADER}.{PAYLOAD}", "malformed", id="two-segments"),
    pytest.param(f"{GOOD}.{SIGNATURE}", "malformed", id="four-segments"),
    pytest.param(f"{HEADER}.x.y.{PAYLOAD}.{SIGNATURE}", "malformed", id="five-segments-jwe"),
    pytest.param(f"{HEADER}..{SIGNATURE}", "malformed", id="empty-payload-detached"),
    pytest.param(f"{HEADER}.{PAYLOAD}.", "malformed", id="empty-signature"),
    pytest.param(f"{GOOD}=", "malformed", id="padding"),
    pytest.param(f"{HEADER}=.{PAYLOAD}.{SIGNATURE}", "malformed", id="padded-header"),
    pytest.param(f"{GOOD}\n", "malformed", id="trailing-newline"),
    pytest.param(f" {GOOD}", "malformed", id="leading-space"),
    pytest.param(f"{HEADER}.{PAYLOAD[:10]} {PAYLOAD[10:]}.{SIGNATURE}", "malformed",
                 id="inner-space"),
    pytest.param(GOOD.replace("-", "+").replace("_", "/") + "+/", "malformed",
                 id="standard-base64-alphabet"),
    pytest.param(f"{HEADER}.{PAYLOAD}.{SIGNATURE}é", "malformed", id="non-ascii"),
    pytest.param(f"{HEADER}.{PAYLOAD}A.{SIGNATURE}", "malformed", id="impossible-length"),
    pytest.param(f"{HEADER}.{PAYLOAD}.{SIGNATURE[:-1]}{_flip_spare_bit(SIGNATURE[-1])}",
                 "malformed", id="non-canonical-signature"),
    pytest.param(f"{HEADER}.{'A' * MAX_TOKEN_LENGTH}.{SIGNATURE}", "malformed", id="oversize"),
    pytest.param(_signed(b"not json"), "malformed", id="header-not-json"),
    pytest.param(_signed(b"\xff\xfe{}"), "malformed", id="header-not-utf8"),
    pytest.param(_signed('{"alg":"ES256"}'.encode("utf-16")), "malformed", id="header-utf16"),
    pytest.param(_signed(b'\xef\xbb\xbf{"alg":"ES256"}'), "malformed", id="header-bom"),
    pytest.param(_signed(b'{"alg":"ES256"} x'), "malformed", id="header-trailing-data"),
    pytest.param(_signed(b"[" * 3000 + b"]" * 3000), "malformed", id="header-deep-nesting"),
    pytest.param(_signed(b'{"alg":"ES256","alg":"none"}'), "malformed", id="dup-header-member"),
    pytest.param(_signed(b'{"alg":"ES256","kid":"a","kid":"a"}'), "malformed",
                 id="dup-header-member-same-value"),
    pytest.param(_signed({"alg": "ES256"}, b'{"sub":"client-a","sub":"victim"}'), "malformed",
                 id="dup-payload-member"),
    pytest.param(_signed({"alg": "ES256"}, b'{"x":{"a":1,"a":2}}'), "malformed",
                 id="dup-nested-payload-member"),
    pytest.param(_signed({"alg": "ES256"}, b'{"exp":NaN}'), "malformed", id="payload-nan"),
    pytest.param(_signed({"alg": "ES256"}, b'{"exp":Infinity}'), "malformed",
                 id="payload-infinity"),
    pytest.param(_signed({"alg": "ES256"}, b'{"exp":1' + b"0" * 5000 + b"}"), "malformed",
                 id="payload-huge-integer"),
    pytest.param(_signed({"alg": "ES256"}, b'["client-a"]'), "malformed", id="payload-list"),
    pytest.param(_signed({"alg": "ES256"}, b'"claims"'), "malformed", id="payload-string"),
    pytest.param(_signed({"alg": "ES256"}, b"garbage"), "malformed", id="payload-not-json"),
    pytest.param(_signed(b'"ES256"'), "bad_header", id="header-json-string"),
    pytest.param(_signed(b'["ES256"]'), "bad_header", id="header-json-list"),
    pytest.param(_signed(b"null"), "bad_header", id="header-json-null"),
    pytest.param(_signed(b"7"), "bad_header", id="header-json-number"),
    pytest.param(_signed({}), "bad_header", id="header-empty-object"),
    pytest.param(_signed({"kid": "k"}), "bad_header", id="no-alg"),
    pytest.param(_signed({"alg": None}), "bad_header", id="alg-null"),
    pytest.param(_signed({"alg": ["ES256"]}), "bad_header", id="alg-list"),
    pytest.param(_signed({"alg": "ES256", "kid": 1}), "bad_header", id="kid-number"),
    pytest.param(_signed({"alg": "ES256", "typ": {"a": 1}}), "bad_header", id="typ-object"),
    pytest.param(_signed({"alg": "ES256", "x5t": True}), "bad_header", id="x5t-bool"),
]
FORBIDDEN: dict[str, dict[str, Any]] = {
    "crit-kid": {"crit": ["kid"]},
    "crit-null": {"crit": None},
    "crit-list-null": {"crit": [None]},
    "crit-empty": {"crit": []},
    "b64-false": {"b64": False, "crit": ["b64"]},
    "b64-alone": {"b64": False},
    "jwk": {"jwk": ES.public_jwk},
    "jku": {"jku": "https://attacker.example/jwks.json"},
    "x5u": {"x5u": "https://attacker.example/cert.pem"},
    "zip": {"zip": "DEF"},
    "enc": {"enc": "A128GCM"},
    "cty": {"cty": "JWT"},
    "unknown": {"foo": "bar"},
    "kid-case-variant": {"KID": "es256-0"},
}
PARSE_REFUSALS += [
    pytest.param(_signed({**ES.header(), **extra}), "forbidden_header", id=f"header-{name}")
    for name, extra in FORBIDDEN.items()
]


@pytest.mark.parametrize(("token", "reason"), PARSE_REFUSALS)
def test_parse_refusals(token: str, reason: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_assertion(token)
    exc = caught.value
    assert type(exc) is InvalidClient
    assert (exc.code, exc.status, exc.reason) == ("invalid_client", 401, reason)


def test_token_of_maximum_length_is_parsed() -> None:
    padding_claim = "x" * ((MAX_TOKEN_LENGTH - len(GOOD)) * 3 // 4 - 12)
    token = ES.assertion(pad=padding_claim)
    assert MAX_TOKEN_LENGTH - 8 <= len(token) <= MAX_TOKEN_LENGTH
    assert check(token, ES.keyset()).client_id == CLIENT_ID


@pytest.mark.parametrize("value", [None, b"bytes", 42])
def test_non_string_token(value: Any) -> None:
    with pytest.raises(InvalidClient) as caught:
        parse_assertion(value)
    assert caught.value.reason == "malformed"


# ---------------------------------------------------------------- header policy and keys

RSA_PEM = RS.private_key.as_pem(private=False)
OTHER_ES = make_signer("ES256", slot=1)


def _hs256_with_public_key() -> str:
    header = encode_segment({"alg": "HS256", "kid": RS.kid})
    signing_input = f"{header}.{encode_segment(valid_claims())}"
    mac = hmac.new(RSA_PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


KEY_REFUSALS: list[Any] = [
    pytest.param(compact({"alg": "none"}, valid_claims(), b"\0"), RS, POLICY, "alg_not_allowed",
                 id="alg-none"),
    pytest.param(compact({"alg": "None"}, valid_claims(), b"\0"), RS, POLICY, "alg_not_allowed",
                 id="alg-None"),
    pytest.param(_hs256_with_public_key(), RS, POLICY, "alg_not_allowed",
                 id="hs256-with-public-key"),
    pytest.param(_hs256_with_public_key(), RS,
                 replace(POLICY, algorithms=frozenset({"HS256", "RS256"})), "alg_not_allowed",
                 id="hs256-even-if-configured"),
    pytest.param(RS.sign(RS.header(alg="RS512"), valid_claims(), sign_alg="RS512"), RS, POLICY,
                 "alg_not_allowed", id="alg-not-in-client-list"),
    pytest.param(ES.assertion(header={"alg": "ES256K"}), ES, POLICY, "alg_not_allowed",
                 id="alg-es256k"),
    pytest.param(ES.assertion(header={"alg": "es256"}), ES, POLICY, "alg_not_allowed",
                 id="alg-lowercase"),
    pytest.param(ES.assertion(), ES, replace(POLICY, algorithms=frozenset({"RS256"})),
                 "alg_not_allowed", id="es256-client-allows-rs256-only"),
    pytest.param(ES.assertion(header={"kid": "nope"}), ES, POLICY, "no_matching_key",
                 id="kid-unknown"),
    pytest.param(ES.assertion(header={"kid": ""}), ES, POLICY, "no_matching_key",
                 id="kid-empty"),
    pytest.param(OTHER_ES.assertion(), ES, POLICY, "no_matching_key",
                 id="kid-of-another-clients-key"),
    pytest.param(OTHER_ES.assertion(header={"kid": ES.kid}), ES, POLICY, "bad_signature",
                 id="own-kid-foreign-key"),
    pytest.param(ES.assertion(), RS, POLICY, "no_matching_key", id="es256-against-rsa-set"),
    pytest.param(ES.assertion(header={"kid": OMIT}), RS, POLICY, "no_matching_key",
                 id="es256-no-kid-against-rsa-set"),
    pytest.param(RS.sign(RS.header(alg="PS256"), valid_claims(), sign_alg="PS256"),
                 RS.with_jwk(alg="RS256"), POLICY, "no_matching_key",
                 id="key-alg-rs256-refuses-ps256"),
    pytest.param(RS.sign(RS.header(), valid_claims(), sign_alg="PS256"), RS, POLICY,
                 "bad_signature", id="rs256-header-ps256-signature"),
    pytest.param(ES.assertion(header={"typ": "at+jwt"}), ES, POLICY, "bad_typ", id="typ-at-jwt"),
    pytest.param(ES.assertion(header={"typ": ""}), ES, POLICY, "bad_typ", id="typ-empty"),
    pytest.param(ES.assertion(header={"typ": "JOSE"}), ES, POLICY, "bad_typ", id="typ-jose"),
    pytest.param(ES.assertion(header={"typ": "client-authentication+jwt "}), ES, POLICY,
                 "bad_typ", id="typ-trailing-space"),
    pytest.param(ES.assertion(), ES, replace(POLICY, require_typ=True), "missing_typ",
                 id="require-typ-absent"),
    pytest.param(ES.assertion(header={"typ": "JWT"}), ES, replace(POLICY, require_typ=True),
                 "missing_typ", id="require-typ-jwt"),
]


@pytest.mark.parametrize(("token", "signer", "policy", "reason"), KEY_REFUSALS)
def test_header_and_key_refusals(token: str, signer: Any, policy: AssertionPolicy,
                                 reason: str) -> None:
    assert refused(token, signer.keyset(), policy).reason == reason


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{encode_segment(valid_claims(sub='victim'))}.{signature}"


def _es_signature(token: str, signature: bytes) -> str:
    return f"{token.rsplit('.', 1)[0]}.{b64url(signature)}"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(_tampered(ES.assertion()), id="payload-swapped"),
        pytest.param(_es_signature(ES.assertion(), b"\0" * 64), id="zero-signature"),
        pytest.param(_es_signature(ES.assertion(), b"\1" * 63), id="short-signature"),
        pytest.param(_es_signature(ES.assertion(), b"\1" * 65), id="long-signature"),
        pytest.param(_es_signature(ES.assertion(), b"\xff" * 64), id="r-s-above-order"),
    ],
)
def test_bad_signatures(token: str) -> None:
    assert refused(token, ES.keyset()).reason == "bad_signature"


@pytest.mark.parametrize(
    "signature",
    [pytest.param(b"\0" * 256, id="zero"), pytest.param(b"\1" * 10, id="short"),
     pytest.param(b"\xff" * 256, id="above-modulus"), pytest.param(b"\1" * 512, id="long")],
)
def test_bad_rsa_signatures(signature: bytes) -> None:
    token = _es_signature(RS.assertion(), signature)
    assert refused(token, RS.keyset()).reason == "bad_signature"


@pytest.mark.parametrize(
    ("typ", "require_typ"),
    [
        pytest.param("JWT", False, id="JWT"),
        pytest.param("jwt", False, id="jwt-lowercase"),
        pytest.param("application/jwt", False, id="application-jwt"),
        pytest.param("client-authentication+jwt", False, id="explicit"),
        pytest.param("client-authentication+jwt", True, id="explicit-required"),
        pytest.param("application/client-authentication+jwt", True, id="media-type-required"),
        pytest.param("Client-Authentication+JWT", True, id="explicit-mixed-case"),
    ],
)
def test_accepted_typ(typ: str, require_typ: bool) -> None:
    token = ES.assertion(header={"typ": typ})
    assert check(token, ES.keyset(), replace(POLICY, require_typ=require_typ))


# ---------------------------------------------------------------- key selection


def test_no_kid_with_two_keys_finds_the_right_one() -> None:
    first, second = make_signer("ES256", kid=None), make_signer("ES256", kid=None, slot=1)
    keys = first.keyset(second)
    result = check(second.assertion(), keys)
    assert result.key_thumbprint == keys.keys[1].thumbprint and result.kid is None


def test_no_kid_tries_only_compatible_keys() -> None:
    rsa, ec = make_signer("RS256", kid=None), make_signer("ES256", kid=None)
    assert check(ec.assertion(), rsa.keyset(ec)).alg == "ES256"


def test_no_kid_tries_a_bounded_number_of_keys() -> None:
    signers = [make_signer("ES256", kid=None, slot=i) for i in range(MAX_KEY_TRIES + 1)]
    keys = prepare_keyset([s.public_jwk for s in signers])
    assert check(signers[MAX_KEY_TRIES - 1].assertion(), keys)
    assert refused(signers[MAX_KEY_TRIES].assertion(), keys).reason == "bad_signature"


def test_kid_with_duplicate_keys_tries_each() -> None:
    first, second = make_signer("ES256", kid="dup"), make_signer("ES256", kid="dup", slot=1)
    assert check(second.assertion(), first.keyset(second))


def _thumb(data: bytes, digest: str) -> str:
    return base64.urlsafe_b64encode(hashlib.new(digest, data).digest()).decode()


CERT_A, CERT_B = b"certificate a", b"certificate b"


@pytest.mark.parametrize("member,digest", [("x5t", "sha1"), ("x5t#S256", "sha256")])
@pytest.mark.parametrize("jwk_padded", [True, False], ids=["jwk-padded", "jwk-unpadded"])
@pytest.mark.parametrize("header_padded", [True, False], ids=["header-padded", "header-unpadded"])
def test_certificate_thumbprint_selects_the_key(member: str, digest: str, jwk_padded: bool,
                                                header_padded: bool) -> None:
    def form(value: str, padded: bool) -> str:
        return value if padded else value.rstrip("=")

    a = make_signer("ES256", kid=None).with_jwk(
        **{member: form(_thumb(CERT_A, digest), jwk_padded)})
    b = make_signer("ES256", kid=None, slot=1).with_jwk(
        **{member: form(_thumb(CERT_B, digest), jwk_padded)})
    keys = a.keyset(b)
    token = b.assertion(header={member: form(_thumb(CERT_B, digest), header_padded)})
    assert check(token, keys).key_thumbprint == keys.keys[1].thumbprint
    wrong = b.assertion(header={member: form(_thumb(CERT_A, digest), header_padded)})
    assert refused(wrong, keys).reason == "bad_signature"


def test_certificate_thumbprint_of_no_key() -> None:
    a = make_signer("ES256", kid=None).with_jwk(x5t=_thumb(CERT_A, "sha1"))
    token = a.assertion(header={"x5t": _thumb(CERT_B, "sha1")})
    assert refused(token, a.keyset()).reason == "no_matching_key"


def test_certificate_thumbprint_falls_back_to_keys_without_one() -> None:
    # A JWK pasted without x5t still serves a client (MSAL) that names its certificate.
    signer = make_signer("ES256", kid=None)
    assert check(signer.assertion(header={"x5t": _thumb(CERT_A, "sha1")}), signer.keyset())


def test_kid_takes_precedence_over_thumbprint() -> None:
    a = make_signer("ES256").with_jwk(x5t=_thumb(CERT_A, "sha1"))
    assert check(a.assertion(header={"x5t": _thumb(CERT_B, "sha1")}), a.keyset())


# ---------------------------------------------------------------- x5c: checked, never a key


def _certificate(signer: Signer) -> str:
    """A self-signed certificate for the signer's key, as x5c holds it (standard base64 DER)."""
    key = signer.private_key.raw_value
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_ID)])
    start = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def _pem_lines(certificate: str, newline: str = "\n") -> str:
    # What MSAL puts in x5c: the PEM body, line breaks kept.
    return newline.join(textwrap.wrap(certificate, 64))


PS = make_signer("PS256")
ES_CERT, OTHER_ES_CERT, RS_CERT = _certificate(ES), _certificate(OTHER_ES), _certificate(RS)


@pytest.mark.parametrize(
    ("signer", "x5c"),
    [
        pytest.param(ES, [ES_CERT], id="es256-own-certificate"),
        pytest.param(PS, [RS_CERT], id="ps256-own-certificate"),
        pytest.param(ES, [_pem_lines(ES_CERT)], id="pem-line-breaks"),
        pytest.param(ES, [_pem_lines(ES_CERT, "\r\n")], id="pem-crlf-line-breaks"),
        pytest.param(ES, [ES_CERT, OTHER_ES_CERT, RS_CERT], id="chain-only-first-checked"),
        pytest.param(ES, [ES_CERT] * certificates.MAX_X5C_CERTIFICATES, id="chain-of-maximum"),
    ],
)
def test_x5c_certifying_the_verifying_key_is_accepted(signer: Signer, x5c: list[str]) -> None:
    token = signer.assertion(header={"x5c": x5c})
    assert check(token, signer.keyset()).key_thumbprint == signer.keyset().keys[0].thumbprint


def test_msal_certificate_header_is_accepted() -> None:
    # MSAL with public_certificate: PS256, padded x5t#S256, x5c with line breaks, no kid.
    der = base64.b64decode(RS_CERT)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode()
    signer = make_signer("PS256", kid=None).with_jwk(**{"x5t#S256": thumbprint.rstrip("=")})
    header = {"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint, "x5c": [_pem_lines(RS_CERT)]}
    claims = valid_claims(iat=NOW - 0.5, exp=NOW + 299.5)
    assert check(signer.sign(header, claims), signer.keyset()).alg == "PS256"


def _not_a_certificate() -> str:
    return base64.b64encode(b"\x30\x03\x02\x01\x01").decode()  # DER, but not a certificate


X5C_REFUSALS: list[Any] = [
    pytest.param(ES, [OTHER_ES_CERT], "certificate_key_mismatch", id="certificate-of-another-key"),
    pytest.param(ES, [RS_CERT], "certificate_key_mismatch", id="certificate-of-another-key-type"),
    pytest.param(ES, [OTHER_ES_CERT, ES_CERT], "certificate_key_mismatch",
                 id="own-certificate-second-in-chain"),
    pytest.param(ES, ["MIIB"], "bad_header", id="truncated-certificate"),
    pytest.param(ES, [_not_a_certificate()], "bad_header", id="der-not-a-certificate"),
    pytest.param(ES, [ES_CERT[:-8]], "bad_header", id="certificate-cut-short"),
    pytest.param(ES, [ES_CERT.rstrip("=") + "==="], "bad_header", id="certificate-bad-padding"),
    pytest.param(ES, [ES_CERT.rstrip("=") + "A="], "bad_header", id="certificate-trailing-data"),
    pytest.param(ES, [], "bad_header", id="empty-array"),
    pytest.param(ES, [""], "bad_header", id="empty-string"),
    pytest.param(ES, ["\n"], "bad_header", id="only-a-line-break"),
    pytest.param(ES, ES_CERT, "bad_header", id="string-not-array"),
    pytest.param(ES, {"0": ES_CERT}, "bad_header", id="object-not-array"),
    pytest.param(ES, None, "bad_header", id="null"),
    pytest.param(ES, [[ES_CERT]], "bad_header", id="nested-array"),
    pytest.param(ES, [ES_CERT, 7], "bad_header", id="number-in-chain"),
    pytest.param(ES, ["garbage!"], "bad_header", id="not-base64"),
    pytest.param(ES, [ES_CERT.replace("+", "-").replace("/", "_") + "-_"], "bad_header",
                 id="base64url-alphabet"),
    pytest.param(ES, [ES_CERT[:40] + " " + ES_CERT[40:]], "bad_header", id="inner-space"),
    pytest.param(ES, [ES_CERT] * (certificates.MAX_X5C_CERTIFICATES + 1), "bad_header",
                 id="too-many-certificates"),
    pytest.param(ES, ["A" * (certificates.MAX_X5C_CHARS + 4)], "bad_header",
                 id="oversized-certificate"),
    pytest.param(ES, [ES_CERT, "A" * (certificates.MAX_X5C_CHARS - len(ES_CERT) + 4)],
                 "bad_header", id="oversized-chain"),
]


@pytest.mark.parametrize(("signer", "x5c", "reason"), X5C_REFUSALS)
def test_x5c_refusals(signer: Signer, x5c: Any, reason: str) -> None:
    token = signer.assertion(header={"x5c": x5c})
    assert len(token) <= MAX_TOKEN_LENGTH  # refused for its x5c, not for its length
    exc = refused(token, signer.keyset())
    assert (exc.code, exc.status, exc.reason) == ("invalid_client", 401, reason)
    assert exc.description == "Client authentication failed."


@pytest.mark.parametrize(
    ("kid", "reason"),
    [
        pytest.param(OMIT, "bad_signature", id="no-kid"),
        pytest.param(ES.kid, "bad_signature", id="registered-kid"),
        pytest.param(OTHER_ES.kid, "no_matching_key", id="own-kid"),
    ],
)
def test_x5c_is_never_a_source_of_keys(kid: Any, reason: str) -> None:
    # Signed by a key the client never registered, with a certificate for exactly that key.
    token = OTHER_ES.assertion(header={"kid": kid, "x5c": [OTHER_ES_CERT]})
    assert refused(token, ES.keyset()).reason == reason


def test_certificate_is_read_only_for_a_verified_signature() -> None:
    certificates._certified_key.cache_clear()
    check(ES.assertion(), ES.keyset())
    forged = _es_signature(ES.assertion(header={"x5c": [ES_CERT]}), b"\1" * 64)
    assert refused(forged, ES.keyset()).reason == "bad_signature"
    assert certificates._certified_key.cache_info().currsize == 0
    for _ in range(3):
        check(ES.assertion(header={"x5c": [ES_CERT]}), ES.keyset())
    info = certificates._certified_key.cache_info()
    assert (info.misses, info.hits) == (1, 2)  # one certificate, parsed once


def test_certificate_cache_stays_bounded() -> None:
    certificates._certified_key.cache_clear()
    for index in range(certificates.CERTIFICATE_CACHE_SIZE + 10):
        token = ES.assertion(header={"x5c": [base64.b64encode(b"%d" % index).decode()]})
        assert refused(token, ES.keyset()).reason == "bad_header"
    cache = certificates._certified_key.cache_info()
    assert cache.currsize == certificates.CERTIFICATE_CACHE_SIZE


# ---------------------------------------------------------------- claims

SKEW = POLICY.clock_skew
MAX_LIFETIME = POLICY.max_lifetime

CLAIM_REFUSALS: list[Any] = [
    pytest.param({"iss": OMIT}, "bad_issuer", id="iss-missing"),
    pytest.param({"iss": "client-b"}, "bad_issuer", id="iss-differs-from-sub"),
    pytest.param({"iss": "Client-A"}, "bad_issuer", id="iss-case"),
    pytest.param({"iss": "client-a "}, "bad_issuer", id="iss-trailing-space"),
    pytest.param({"iss": ["client-a"]}, "bad_issuer", id="iss-list"),
    pytest.param({"iss": None}, "bad_issuer", id="iss-null"),
    pytest.param({"sub": OMIT}, "bad_subject", id="sub-missing"),
    pytest.param({"sub": "client-b", "iss": "client-a"}, "bad_subject", id="sub-not-client-id"),
    pytest.param({"iss": "client-b", "sub": "client-b"}, "bad_issuer",
                 id="iss-and-sub-another-client"),
    pytest.param({"sub": 1}, "bad_subject", id="sub-number"),
    pytest.param({"aud": OMIT}, "bad_audience", id="aud-missing"),
    pytest.param({"aud": "https://other.example.com"}, "bad_audience", id="aud-wrong"),
    pytest.param({"aud": AUDIENCE + "/"}, "bad_audience", id="aud-trailing-slash"),
    pytest.param({"aud": [AUDIENCE, "https://other.example.com"]}, "bad_audience",
                 id="aud-array-of-two"),
    pytest.param({"aud": [AUDIENCE, AUDIENCE]}, "bad_audience", id="aud-array-same-twice"),
    pytest.param({"aud": []}, "bad_audience", id="aud-empty-array"),
    pytest.param({"aud": [["nested"]]}, "bad_audience", id="aud-nested-array"),
    pytest.param({"aud": {"a": AUDIENCE}}, "bad_audience", id="aud-object"),
    pytest.param({"aud": 1}, "bad_audience", id="aud-number"),
    pytest.param({"exp": OMIT}, "missing_exp", id="exp-missing"),
    pytest.param({"exp": str(int(NOW + 60))}, "bad_claims", id="exp-string"),
    pytest.param({"exp": True}, "bad_claims", id="exp-bool"),
    pytest.param({"exp": None}, "bad_claims", id="exp-null"),
    pytest.param({"exp": [NOW + 60]}, "bad_claims", id="exp-list"),
    pytest.param({"exp": 1e300}, "bad_claims", id="exp-absurd"),
    pytest.param({"exp": 10**13}, "bad_claims", id="exp-beyond-1e12"),
    pytest.param({"exp": -1}, "bad_claims", id="exp-negative"),
    pytest.param({"exp": NOW - SKEW, "iat": NOW - 60}, "expired", id="exp-just-outside-skew"),
    pytest.param({"exp": NOW - 3600, "iat": NOW - 3660}, "expired", id="exp-long-ago"),
    pytest.param({"iat": "now"}, "bad_claims", id="iat-string"),
    pytest.param({"iat": False}, "bad_claims", id="iat-bool"),
    pytest.param({"nbf": {}}, "bad_claims", id="nbf-object"),
    pytest.param({"nbf": -5}, "bad_claims", id="nbf-negative"),
    pytest.param({"iat": NOW + SKEW + 1, "exp": NOW + SKEW + 61}, "issued_in_future",
                 id="iat-beyond-skew"),
    pytest.param({"nbf": NOW + SKEW + 0.5}, "not_yet_valid", id="nbf-beyond-skew"),
    pytest.param({"iat": NOW, "exp": NOW + MAX_LIFETIME + 1}, "lifetime_too_long",
                 id="lifetime-above-max-with-iat"),
    pytest.param({"iat": NOW - 1000, "exp": NOW + 10}, "lifetime_too_long",
                 id="lifetime-above-max-old-iat"),
    pytest.param({"iat": OMIT, "exp": NOW + MAX_LIFETIME + 0.001}, "lifetime_too_long",
                 id="lifetime-above-max-without-iat"),
    pytest.param({"iat": NOW, "exp": NOW + 3600}, "lifetime_too_long", id="authlib-3600s"),
    pytest.param({"jti": OMIT}, "missing_jti", id="jti-missing"),
    pytest.param({"jti": ""}, "bad_jti", id="jti-empty"),
    pytest.param({"jti": "j" * (MAX_JTI_LENGTH + 1)}, "bad_jti", id="jti-257-chars"),
    pytest.param({"jti": 12345}, "bad_jti", id="jti-number"),
    pytest.param({"jti": None}, "bad_jti", id="jti-null"),
    pytest.param({"jti": ["a"]}, "bad_jti", id="jti-list"),
    pytest.param({"jti": "\ud800"}, "bad_jti", id="jti-lone-surrogate"),
]


@pytest.mark.parametrize(("overrides", "reason"), CLAIM_REFUSALS)
def test_claim_refusals(overrides: dict[str, Any], reason: str) -> None:
    assert refused(ES.assertion(**overrides), ES.keyset()).reason == reason


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"exp": NOW - SKEW + 0.001, "iat": NOW - 60}, id="exp-just-inside-skew"),
        pytest.param({"iat": NOW + SKEW, "exp": NOW + SKEW + 60}, id="iat-at-skew"),
        pytest.param({"nbf": NOW + SKEW}, id="nbf-at-skew"),
        pytest.param({"iat": NOW, "exp": NOW + MAX_LIFETIME}, id="lifetime-exactly-max"),
        pytest.param({"iat": OMIT, "exp": NOW + MAX_LIFETIME}, id="lifetime-max-without-iat"),
        pytest.param({"aud": [AUDIENCE]}, id="aud-array-of-one"),
        pytest.param({"jti": "j" * MAX_JTI_LENGTH}, id="jti-256-chars"),
        pytest.param({"jti": "ü"}, id="jti-non-ascii"),
        pytest.param({"client_id": CLIENT_ID, "extra": {"nested": [1, 2]}}, id="extra-claims"),
    ],
)
def test_claims_accepted(overrides: dict[str, Any]) -> None:
    assert check(ES.assertion(**overrides), ES.keyset()).client_id == CLIENT_ID


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iat": NOW, "exp": NOW}, id="exp-equals-iat"),
        pytest.param({"iat": NOW, "exp": NOW - 1}, id="exp-before-iat"),
        pytest.param({"iat": NOW + SKEW, "exp": NOW + 1}, id="exp-before-iat-in-future"),
        pytest.param({"iat": NOW + 0.5, "exp": NOW + 0.25}, id="exp-before-iat-fractional"),
        pytest.param({"iat": OMIT, "nbf": NOW + 5, "exp": NOW + 5}, id="nbf-equals-exp"),
        pytest.param({"nbf": NOW + 10, "exp": NOW + 5}, id="nbf-after-exp"),
        pytest.param({"iat": OMIT, "nbf": NOW - 1, "exp": NOW - 2}, id="nbf-after-exp-no-iat"),
        pytest.param({"iat": NOW - 5, "nbf": NOW + 5, "exp": NOW + 5},
                     id="nbf-equals-exp-after-iat"),
    ],
)
def test_empty_or_inverted_time_window_is_refused(overrides: dict[str, Any]) -> None:
    # Every case is inside the clock skew: only the window itself is wrong.
    claims = valid_claims(**overrides)
    assert claims["exp"] + SKEW > NOW and claims.get("iat", NOW) <= NOW + SKEW
    assert claims.get("nbf", NOW) <= NOW + SKEW
    exc = refused(ES.sign(ES.header(), claims), ES.keyset())
    assert (exc.code, exc.status, exc.reason) == ("invalid_client", 401, "bad_time_window")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iat": NOW, "exp": NOW + 0.001}, id="exp-just-after-iat"),
        pytest.param({"nbf": NOW + 4.999, "exp": NOW + 5}, id="nbf-just-before-exp"),
        pytest.param({"iat": NOW, "nbf": NOW - 30, "exp": NOW + 60}, id="nbf-before-iat"),
        pytest.param({"iat": NOW, "nbf": NOW, "exp": NOW + 60}, id="nbf-equals-iat"),
    ],
)
def test_narrow_time_windows_are_accepted(overrides: dict[str, Any]) -> None:
    assert check(ES.assertion(**overrides), ES.keyset()).client_id == CLIENT_ID


def test_any_configured_audience_is_accepted() -> None:
    policy = replace(POLICY, audiences=frozenset({AUDIENCE, "https://gw.example.com/token"}))
    assert check(ES.assertion(aud="https://gw.example.com/token"), ES.keyset(), policy)


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"1" + b"0" * 400])
def test_numbers_json_cannot_hold_as_a_float(literal: bytes) -> None:
    claims = json.dumps(valid_claims(exp=0)).encode().replace(b'"exp": 0', b'"exp": ' + literal)
    assert literal in claims
    assert refused(ES.sign(ES.header(), claims), ES.keyset()).reason == "bad_claims"


def test_signature_is_checked_before_claims() -> None:
    token = _es_signature(ES.assertion(exp=OMIT), b"\1" * 64)
    assert refused(token, ES.keyset()).reason == "bad_signature"


# ---------------------------------------------------------------- minting


@pytest.mark.parametrize("alg", ["ES256", "PS256", "RS256", "EdDSA", "Ed25519", "ES384"])
def test_minted_assertion_verifies(alg: str) -> None:
    pem, public = generate_key(alg, "minted", rsa_bits=2048)
    assert public["kid"] == "minted" and public["alg"] == alg and public["use"] == "sig"
    assert "d" not in public
    key = load_private_key(pem, alg)
    token = mint_assertion(key, alg=alg, client_id=CLIENT_ID, audience=AUDIENCE, now=NOW,
                           kid="minted", jti="fixed")
    parsed = parse_assertion(token)
    assert parsed.header == {"alg": alg, "typ": "client-authentication+jwt", "kid": "minted"}
    assert parsed.claims == {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": AUDIENCE,
                             "iat": int(NOW), "exp": int(NOW) + 60, "jti": "fixed"}
    policy = replace(POLICY, algorithms=frozenset(ALL_ALGS), require_typ=True)
    assert check(token, prepare_keyset([public]), policy).jti == "fixed"


def test_minted_defaults() -> None:
    pem, public = generate_key("ES256", None)
    key = load_private_key(pem.encode(), "ES256")
    assert public["kid"] == prepare_keyset([public]).keys[0].thumbprint
    first = parse_assertion(mint_assertion(key, alg="ES256", client_id="c", audience="a", typ=None))
    second = parse_assertion(mint_assertion(key, alg="ES256", client_id="c", audience="a"))
    assert "typ" not in first.header and "kid" not in first.header
    assert first.claims["jti"] != second.claims["jti"] and len(first.claims["jti"]) >= 22


def test_default_rsa_key_size() -> None:
    _, public = generate_key("PS256", "k")
    assert len(base64.urlsafe_b64decode(public["n"] + "==")) * 8 == 3072


@pytest.mark.parametrize(
    ("pem", "alg", "message"),
    [
        pytest.param(RS.private_key.as_pem(private=True), "ES256", "EC private key",
                     id="rsa-pem-for-es256"),
        pytest.param(RSA_PEM, "RS256", "public key", id="public-pem"),
        pytest.param(b"garbage", "RS256", "RSA private key", id="garbage"),
        pytest.param(make_signer("ES384").private_key.as_pem(private=True), "ES256",
                     "cannot sign ES256", id="p384-for-es256"),
        pytest.param(ES.private_key.as_pem(private=True), "HS256", "unsupported algorithm",
                     id="hs256"),
    ],
)
def test_load_private_key_refusals(pem: bytes, alg: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_private_key(pem, alg)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda: generate_key("none", "k"), "unsupported algorithm", id="keygen-none"),
        pytest.param(lambda: generate_key("RS256", "k", rsa_bits=1024), "2048",
                     id="keygen-rsa-1024"),
        pytest.param(lambda: mint_assertion(ES.private_key, alg="HS256", client_id="c",
                                            audience="a"), "unsupported", id="mint-hs256"),
        pytest.param(lambda: mint_assertion(ES.private_key, alg="ES256", client_id="c",
                                            audience="a", lifetime=0.5), "lifetime",
                     id="mint-lifetime"),
    ],
)
def test_mint_refusals(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- nothing foreign escapes

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
HEADER_NAMES = st.sampled_from(["alg", "kid", "typ", "x5t", "x5t#S256", "x5c", "crit", "b64",
                                "jwk"])
HEADERS = st.dictionaries(HEADER_NAMES, JSON_VALUES | st.sampled_from(
    ["ES256", "RS256", "none", "HS256", "EdDSA", "es256-0", "JWT"]), max_size=4)
CLAIM_NAMES = st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "x"])
CLAIMS = st.dictionaries(CLAIM_NAMES, JSON_VALUES | st.sampled_from(
    [CLIENT_ID, AUDIENCE, NOW, NOW + 30, [AUDIENCE], "jti"]), max_size=8)
KEYS = ES.keyset(RS, make_signer("Ed25519"))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_and_verify(token: Any) -> None:
    try:
        parsed = parse_assertion(token)
        verify_assertion(parsed, KEYS, POLICY, NOW)
    except GatewayError:
        pass


@SETTINGS
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_text_only_raises_gateway_errors(token: str) -> None:
    _parse_and_verify(token)


@SETTINGS
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=5))
def test_random_segments_only_raise_gateway_errors(segments: list[bytes]) -> None:
    _parse_and_verify(".".join(b64url(segment) for segment in segments))


@SETTINGS
@given(HEADERS, CLAIMS)
def test_signed_random_json_only_raises_gateway_errors(header: dict[str, Any],
                                                       claims: dict[str, Any]) -> None:
    _parse_and_verify(ES.sign(header, claims))


@SETTINGS
@given(st.binary(max_size=120), st.binary(max_size=120))
def test_signed_random_bytes_only_raise_gateway_errors(header: bytes, claims: bytes) -> None:
    _parse_and_verify(ES.sign(header, claims))


@SETTINGS
@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=5), CLAIMS)
def test_verify_of_odd_parsed_values_only_raises_gateway_errors(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    parsed = ParsedAssertion(header=header, claims=claims, signing_input=b"x", signature=b"y")
    try:
        verify_assertion(parsed, KEYS, POLICY, NOW)
    except GatewayError:
        pass


def test_json_encoder_round_trip_of_fixture() -> None:
    # Guards the fixtures themselves: a dict header is written as compact JSON.
    assert json.loads(base64.urlsafe_b64decode(HEADER + "==")) == ES.header()


def test_checked_headers_are_kept_read_only_and_bounded() -> None:
    from gateway.core import assertion as module

    signer = make_signer("ES256")
    token = signer.assertion()
    first, second = parse_assertion(token).header, parse_assertion(signer.assertion()).header
    assert first is second  # the same segment is checked once
    with pytest.raises(TypeError):
        first["alg"] = "none"  # type: ignore[index]
    refused = signer.sign({"alg": "ES256", "jku": "https://evil.example/jwks"}, valid_claims())
    with pytest.raises(InvalidClient):
        parse_assertion(refused)
    assert refused.split(".")[0] not in module._HEADERS  # only valid headers are kept
    for kid in range(module.MAX_CACHED_HEADERS + 10):
        parse_assertion(signer.sign({"alg": "ES256", "kid": f"k{kid}"}, valid_claims()))
    assert len(module._HEADERS) <= module.MAX_CACHED_HEADERS


# ---------------------------------------------------------------- registered keys' certificates

REFUSING = replace(POLICY, refuse_expired_certificates=True)
SKEW = POLICY.clock_skew


@pytest.mark.parametrize(
    ("not_after", "policy", "outcome"),
    [
        pytest.param(NOW - 3600, POLICY, "accepted", id="expired-refusal-off"),
        pytest.param(NOW - 3600, REFUSING, "certificate_expired", id="expired-refusal-on"),
        pytest.param(NOW - SKEW, REFUSING, "certificate_expired", id="expired-by-the-skew"),
        pytest.param(NOW - SKEW + 1, REFUSING, "accepted", id="within-the-skew"),
        pytest.param(NOW + 3600, REFUSING, "accepted", id="valid-refusal-on"),
    ],
)
def test_an_expired_key_certificate_stops_verifying_only_when_refused(
    not_after: float, policy: AssertionPolicy, outcome: str
) -> None:
    signer = with_certificate(ES, not_after=not_after)
    token = signer.assertion()
    if outcome == "accepted":
        assert check(token, signer.keyset(), policy).kid == ES.kid
    else:
        error = refused(token, signer.keyset(), policy)
        assert isinstance(error, KeyMiss)  # a refetch may bring the renewed certificate
        assert error.reason == outcome and "notAfter" in error.detail


def test_an_expired_certificate_of_another_key_does_not_refuse_a_valid_key() -> None:
    expired = with_certificate(make_signer("ES256", kid="old", slot=1), not_after=NOW - 3600)
    current = with_certificate(make_signer("ES256", kid="new"), not_after=NOW + 3600)
    keys = expired.keyset(current)
    assert check(current.assertion(), keys, REFUSING).kid == "new"
    assert refused(expired.assertion(), keys, REFUSING).reason == "certificate_expired"


def test_a_key_published_with_its_renewed_certificate_verifies_beside_the_expired_one() -> None:
    # Same key, old and renewed certificate, one kid: the renewed entry verifies, whatever
    # the order the set lists them in.
    old = with_certificate(ES, not_after=NOW - 3600, serial=1)
    renewed = with_certificate(ES, not_after=NOW + 30 * 86_400, serial=2)
    for keys in (old.keyset(renewed), renewed.keyset(old)):
        assert check(ES.assertion(), keys, REFUSING).kid == ES.kid


def test_an_attacker_key_is_refused_for_its_signature_not_for_an_expired_certificate() -> None:
    registered = with_certificate(ES, not_after=NOW - 3600)
    attacker = make_signer("ES256", kid=ES.kid, slot=3)  # same kid, another key
    error = refused(attacker.assertion(), registered.keyset(), REFUSING)
    assert error.reason == "bad_signature"


def test_keys_without_certificates_are_untouched_by_the_refusal() -> None:
    assert check(ES.assertion(), ES.keyset(), REFUSING).kid == ES.kid
