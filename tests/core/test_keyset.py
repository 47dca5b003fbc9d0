"""Verification keys: import once, algorithms per key, thumbprints, refusals of unusable JWKs."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from joserfc.jwa import JWSAlgModel

from gateway.core.keyset import JWS_ALGORITHMS, key_algorithms, prepare_keyset
from tests.support.tokens import OMIT, make_signer, merge

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
         "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
         "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
         "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


def test_rfc7638_thumbprint_and_members() -> None:
    (key,) = prepare_keyset([RFC7638_KEY]).keys
    assert key.thumbprint == RFC7638_THUMBPRINT
    assert key.kid == "2011-04-29"
    assert key.algorithms == {"RS256"}
    assert key.x5t is None and key.x5t_s256 is None


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        pytest.param("RS256", RSA_ALGS, id="rsa"),
        pytest.param("ES256", {"ES256"}, id="p256"),
        pytest.param("ES384", {"ES384"}, id="p384"),
        pytest.param("ES512", {"ES512"}, id="p521"),
        pytest.param("Ed25519", {"EdDSA", "Ed25519"}, id="ed25519"),
    ],
)
def test_algorithms_from_key_type(alg: str, expected: set[str]) -> None:
    (key,) = make_signer(alg).keyset().keys
    assert key.algorithms == expected


@pytest.mark.parametrize(
    ("jwk_alg", "signer_alg", "expected"),
    [
        pytest.param("PS256", "RS256", {"PS256"}, id="rsa-declared-ps256"),
        pytest.param("EdDSA", "Ed25519", {"EdDSA", "Ed25519"}, id="declared-eddsa-allows-both"),
        pytest.param("Ed25519", "Ed25519", {"EdDSA", "Ed25519"}, id="declared-ed25519-allows-both"),
        pytest.param("ES256", "RS256", set(), id="declared-alg-of-another-type"),
        pytest.param("HS256", "RS256", set(), id="declared-hs256"),
        pytest.param("ES384", "ES256", set(), id="declared-other-curve"),
    ],
)
def test_declared_alg_narrows(jwk_alg: str, signer_alg: str, expected: set[str]) -> None:
    (key,) = make_signer(signer_alg).with_jwk(alg=jwk_alg).keyset().keys
    assert key.algorithms == expected


def test_ed448_key_verifies_nothing() -> None:
    assert key_algorithms({"kty": "OKP", "crv": "Ed448", "x": "AA"}) == frozenset()


def test_x5t_members_are_kept_unpadded() -> None:
    sha1 = base64.urlsafe_b64encode(hashlib.sha1(b"cert").digest()).decode()
    sha256 = base64.urlsafe_b64encode(hashlib.sha256(b"cert").digest()).decode()
    assert sha1.endswith("=") and sha256.endswith("=")
    signer = make_signer("ES256").with_jwk(x5t=sha1, **{"x5t#S256": sha256})
    (key,) = signer.keyset().keys
    assert (key.x5t, key.x5t_s256) == (sha1.rstrip("="), sha256.rstrip("="))


def test_by_kid_groups_keys_and_skips_keys_without_kid() -> None:
    first = make_signer("ES256", kid="shared")
    second = make_signer("ES256", kid="shared", slot=1)
    anonymous = make_signer("RS256", kid=None)
    keys = first.keyset(second, anonymous)
    assert len(keys.keys) == 3
    assert set(keys.by_kid) == {"shared"}
    assert [k.thumbprint for k in keys.by_kid["shared"]] == [k.thumbprint for k in keys.keys[:2]]


def test_keys_are_imported_once() -> None:
    keys = make_signer("ES256").keyset()
    assert keys.keys[0].key.public_key is keys.keys[0].key.public_key


def test_registry_is_explicit() -> None:
    assert set(JWS_ALGORITHMS) == RSA_ALGS | {"ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
    # One model for both Ed25519 names, and it is the one without a deprecation warning.
    assert JWS_ALGORITHMS["EdDSA"] is JWS_ALGORITHMS["Ed25519"]
    model: JWSAlgModel = JWS_ALGORITHMS["EdDSA"]
    assert model.security_warning is None


def _rsa(bits: int) -> dict[str, Any]:
    n = base64.urlsafe_b64encode((1 << (bits - 1) | 1).to_bytes(bits // 8, "big"))
    return {"kty": "RSA", "n": n.decode().rstrip("="), "e": "AQAB"}


EC = make_signer("ES256").public_jwk


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        pytest.param({"kty": "oct", "k": "c2VjcmV0"}, "unsupported kty", id="oct"),
        pytest.param({"kty": "XYZ"}, "unsupported kty", id="unknown-kty"),
        pytest.param({"n": "AA"}, "unsupported kty", id="no-kty"),
        pytest.param(merge(EC, {"d": "AAAA"}), "private members", id="private-ec"),
        pytest.param({**RFC7638_KEY, "p": "AA"}, "private members", id="private-rsa"),
        pytest.param(_rsa(1024), "1024 bits", id="rsa-1024"),
        pytest.param({**_rsa(2048), "n": "!!"}, "0 bits", id="rsa-bad-base64"),
        pytest.param(merge(RFC7638_KEY, {"n": OMIT}), "0 bits", id="rsa-no-n"),
        pytest.param(merge(EC, {"use": "enc"}), "use must be", id="use-enc"),
        pytest.param(merge(EC, {"key_ops": ["sign"]}), "key_ops", id="key-ops-without-verify"),
        pytest.param(merge(EC, {"key_ops": "verify"}), "key_ops", id="key-ops-not-a-list"),
        pytest.param(merge(EC, {"kid": 7}), "kid must be a string", id="kid-not-string"),
        pytest.param(merge(EC, {"x5t": ["a"]}), "x5t must be a string", id="x5t-not-string"),
        pytest.param(merge(EC, {"y": EC["x"]}), "cannot import", id="ec-point-off-curve"),
        pytest.param(merge(EC, {"crv": "P-999"}), "cannot import", id="ec-unknown-curve"),
        pytest.param(merge(EC, {"x": OMIT}), "cannot import", id="ec-missing-x"),
        pytest.param("not a mapping", "JSON object", id="not-a-mapping"),
    ],
)
def test_unusable_keys_are_refused(jwk: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        prepare_keyset([RFC7638_KEY, jwk])
    assert str(caught.value).startswith("key 1:")


def test_empty_keyset() -> None:
    keys = prepare_keyset([])
    assert keys.keys == () and dict(keys.by_kid) == {}
