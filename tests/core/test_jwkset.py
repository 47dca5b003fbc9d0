"""filter_public_jwks keeps public asymmetric signing keys and names every key it refuses."""

from __future__ import annotations

import base64
import functools
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.core.jwkset import decode_base64url, filter_public_jwks

PATH = "clients.acme.jwks"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@functools.cache
def rsa_jwk(bits: int) -> dict[str, Any]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
    public = numbers.public_numbers
    return {"kty": "RSA", "n": int_b64(public.n), "e": int_b64(public.e), "d": int_b64(numbers.d)}


def public_rsa(bits: int = 2048) -> dict[str, Any]:
    return {k: v for k, v in rsa_jwk(bits).items() if k != "d"}


@functools.cache
def ec_private_jwk(curve_name: str = "P-256") -> dict[str, Any]:
    curve: ec.EllipticCurve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(),
                               "P-521": ec.SECP521R1()}[curve_name]
    size = (curve.key_size + 7) // 8
    numbers = ec.generate_private_key(curve).private_numbers()
    point = numbers.public_numbers
    return {"kty": "EC", "crv": curve_name, "x": b64url(point.x.to_bytes(size, "big")),
            "y": b64url(point.y.to_bytes(size, "big")),
            "d": b64url(numbers.private_value.to_bytes(size, "big"))}


def public_ec(curve_name: str = "P-256", **extra: Any) -> dict[str, Any]:
    key = {k: v for k, v in ec_private_jwk(curve_name).items() if k != "d"}
    return {**key, **extra}


def public_ed25519() -> dict[str, Any]:
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(public_rsa(), id="rsa-2048"),
        pytest.param(public_ec("P-256"), id="ec-p256"),
        pytest.param(public_ec("P-384"), id="ec-p384"),
        pytest.param(public_ec("P-521"), id="ec-p521"),
        pytest.param(public_ed25519(), id="okp-ed25519"),
        pytest.param(public_ec(use="sig", kid="k1", alg="ES256"), id="use-sig-with-kid"),
        pytest.param(public_ec(key_ops=["verify"]), id="key-ops-verify"),
    ],
)
def test_public_signing_key_is_kept(key: dict[str, Any]) -> None:
    kept, problems = filter_public_jwks({"keys": [key]}, PATH)
    assert problems == []
    assert kept == (key,)


def test_kept_keys_are_copies() -> None:
    key = public_ec()
    kept, _ = filter_public_jwks({"keys": [key]}, PATH)
    kept[0]["x"] = "changed"
    assert key["x"] != "changed"


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        pytest.param(ec_private_jwk(), "private key material (d)", id="ec-private-d"),
        pytest.param(rsa_jwk(2048), "private key material (d)", id="rsa-private-d"),
        pytest.param({**public_rsa(), "p": "AQAB", "q": "AQAB"}, "(p, q)", id="rsa-primes"),
        pytest.param({"kty": "oct", "k": "c2VjcmV0"}, "symmetric ('oct')", id="oct"),
        pytest.param(public_rsa(1024), "1024 bits is too short", id="rsa-1024"),
        pytest.param(public_ec(use="enc"), "'use' other than 'sig'", id="use-enc"),
        pytest.param(public_ec(key_ops=["encrypt"]), "without 'verify'", id="key-ops-encrypt"),
        pytest.param(public_ec(key_ops="verify"), "list of strings", id="key-ops-not-list"),
        pytest.param({"kty": "X", "x": "AA"}, "unsupported kty 'X'", id="unknown-kty"),
        pytest.param({"crv": "P-256"}, "has no 'kty'", id="no-kty"),
        pytest.param("not-a-key", "must be a mapping", id="not-a-mapping"),
        pytest.param(public_ec(x="not base64!"), "'x' is missing or not base64url",
                     id="bad-base64-x"),
        pytest.param(public_ec(x=public_ec()["x"] + "="), "not base64url", id="padded-base64"),
        pytest.param({**public_rsa(), "n": "A"}, "'n' is missing or not base64url",
                     id="impossible-base64-length"),
        pytest.param({k: v for k, v in public_rsa().items() if k != "e"}, "'e' is missing",
                     id="rsa-no-e"),
        pytest.param({**public_rsa(), "e": "AA"}, "exponent is not valid", id="rsa-zero-e"),
        pytest.param(public_ec(crv="secp256k1"), "not a signing curve", id="ec-unknown-curve"),
        pytest.param(public_ec(y=b64url(b"\x01" * 31)), "31 bytes, P-256 needs 32",
                     id="ec-short-y"),
        pytest.param({"kty": "OKP", "crv": "X25519", "x": b64url(b"\x00" * 32)},
                     "not a signing curve", id="okp-x25519"),
        pytest.param(public_ec(kid=7), "'kid' must be a string", id="kid-not-string"),
    ],
)
def test_unusable_key_is_refused_with_its_path(key: object, needle: str) -> None:
    good = public_ed25519()
    kept, problems = filter_public_jwks({"keys": [good, key]}, PATH)
    assert kept == (good,)
    assert len(problems) == 1
    path, message = problems[0]
    assert path == f"{PATH}.keys[1]"
    assert needle in message


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"keys": []}, id="empty-set"),
        pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, id="only-unusable-keys"),
    ],
)
def test_set_without_usable_key_is_a_problem(document: dict[str, Any]) -> None:
    kept, problems = filter_public_jwks(document, PATH)
    assert kept == ()
    assert (PATH, "holds no usable public signing key") in problems


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([public_ec()], id="bare-list"),
        pytest.param({"key": [public_ec()]}, id="no-keys-member"),
        pytest.param({"keys": "abc"}, id="keys-not-a-list"),
        pytest.param(None, id="none"),
    ],
)
def test_not_a_jwk_set(document: object) -> None:
    assert filter_public_jwks(document, PATH) == (
        (), [(PATH, "must be a JWK Set: a mapping with a 'keys' list")])


def test_every_problem_is_reported() -> None:
    document = {"keys": [ec_private_jwk(), {"kty": "oct", "k": "AA"}, public_ec(use="enc")]}
    _, problems = filter_public_jwks(document, PATH)
    assert [path for path, _ in problems] == [
        f"{PATH}.keys[0]", f"{PATH}.keys[1]", f"{PATH}.keys[2]", PATH]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("AQAB", b"\x01\x00\x01", id="plain"),
        pytest.param("_-8", b"\xff\xef", id="url-alphabet"),
        pytest.param("AQAB=", None, id="padding"),
        pytest.param("a+b/", None, id="standard-alphabet"),
        pytest.param("", None, id="empty"),
        pytest.param("A", None, id="impossible-length"),
        pytest.param(5, None, id="not-a-string"),
    ],
)
def test_decode_base64url(text: object, expected: bytes | None) -> None:
    assert decode_base64url(text) == expected


def test_rsa_modulus_over_8192_bits_is_refused() -> None:
    import base64

    from gateway.core.jwkset import filter_public_jwks

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    huge = {"kty": "RSA", "kid": "huge", "n": b64(b"\xff" * 1025), "e": "AQAB"}  # 8200 bits
    kept, problems = filter_public_jwks({"keys": [huge]}, "jwks")
    assert kept == ()
    assert any("at most 8192" in message for _, message in problems)
