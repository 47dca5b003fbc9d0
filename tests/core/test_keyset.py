"""Verification keys: one check-and-import of a JWK Set, algorithms per key, thumbprints."""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwa import JWSAlgModel

from gateway.core.jwk_rules import decode_base64url
from gateway.core.keyset import (
    JWS_ALGORITHMS,
    VerificationKey,
    import_jwks,
    key_algorithms,
    prepare_keyset,
)
from tests.support.key_certificates import DAY, with_certificate
from tests.support.tokens import NOW, OMIT, Signer, b64url, make_signer, merge

PATH = "clients.acme.jwks"

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


def public_okp(curve: str = "Ed25519") -> dict[str, Any]:
    private = ed25519.Ed25519PrivateKey if curve == "Ed25519" else ed448.Ed448PrivateKey
    raw = private.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": curve, "x": b64url(raw)}


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(public_rsa(), id="rsa-2048"),
        pytest.param(public_ec("P-256"), id="ec-p256"),
        pytest.param(public_ec("P-384"), id="ec-p384"),
        pytest.param(public_ec("P-521"), id="ec-p521"),
        pytest.param(public_okp(), id="okp-ed25519"),
        pytest.param(public_ec(use="sig", kid="k1", alg="ES256"), id="use-sig-with-kid"),
        pytest.param(public_ec(key_ops=["verify"]), id="key-ops-verify"),
    ],
)
def test_public_signing_key_is_imported(key: dict[str, Any]) -> None:
    result = import_jwks({"keys": [key]}, PATH)
    assert (result.problems, result.secret) == ((), ())
    assert result.keys == (key,)
    assert len(result.keyset.keys) == 1


def test_imported_keys_are_copies() -> None:
    key = public_ec()
    result = import_jwks({"keys": [key]}, PATH)
    result.keys[0]["x"] = "changed"
    assert key["x"] != "changed"


def test_ed448_key_is_imported_but_verifies_nothing() -> None:
    (key,) = import_jwks({"keys": [public_okp("Ed448")]}, PATH).keyset.keys
    assert key.algorithms == frozenset()


EC = make_signer("ES256").public_jwk
SECRET = True

UNUSABLE = [
    pytest.param(ec_private_jwk(), "private key material (d)", SECRET, id="ec-private-d"),
    pytest.param(rsa_jwk(2048), "private key material (d)", SECRET, id="rsa-private-d"),
    pytest.param({**public_rsa(), "p": "AQAB", "q": "AQAB"}, "(p, q)", SECRET, id="rsa-primes"),
    pytest.param({"kty": "oct", "k": "c2VjcmV0"}, "symmetric ('oct')", SECRET, id="oct"),
    pytest.param({"kty": "oct"}, "symmetric ('oct')", SECRET, id="oct-without-k"),
    pytest.param({"k": "c2VjcmV0"}, "private key material (k)", SECRET, id="k-without-kty"),
    pytest.param(public_rsa(1024), "1024 bits is too short", False, id="rsa-1024"),
    pytest.param({"kty": "RSA", "n": b64url(b"\xff" * 1025), "e": "AQAB"}, "at most 8192",
                 False, id="rsa-8200"),
    pytest.param(public_ec(use="enc"), "'use' other than 'sig'", False, id="use-enc"),
    pytest.param(public_ec(key_ops=["sign"]), "without 'verify'", False, id="key-ops-sign"),
    pytest.param(public_ec(key_ops="verify"), "list of strings", False, id="key-ops-not-list"),
    pytest.param({"kty": "X", "x": "AA"}, "unsupported kty 'X'", False, id="unknown-kty"),
    pytest.param({"crv": "P-256"}, "has no 'kty'", False, id="no-kty"),
    pytest.param("not-a-key", "must be a mapping", False, id="not-a-mapping"),
    pytest.param(public_ec(x="not base64!"), "'x' is missing or not base64url", False,
                 id="bad-base64-x"),
    pytest.param(public_ec(x=public_ec()["x"] + "="), "not base64url", False,
                 id="padded-base64"),
    pytest.param({**public_rsa(), "n": "A"}, "'n' is missing or not base64url", False,
                 id="impossible-base64-length"),
    pytest.param({**public_rsa(), "n": "!!"}, "'n' is missing", False, id="rsa-bad-base64"),
    pytest.param(merge(public_rsa(), {"e": OMIT}), "'e' is missing", False, id="rsa-no-e"),
    pytest.param({**public_rsa(), "e": "AA"}, "exponent is not valid", False, id="rsa-zero-e"),
    pytest.param(public_ec(crv="secp256k1"), "not a signing curve", False,
                 id="ec-unknown-curve"),
    pytest.param(public_ec(y=b64url(b"\x01" * 31)), "31 bytes, P-256 needs 32", False,
                 id="ec-short-y"),
    pytest.param(merge(EC, {"x": OMIT}), "'x' is missing", False, id="ec-missing-x"),
    pytest.param({"kty": "OKP", "crv": "X25519", "x": b64url(b"\x00" * 32)},
                 "not a signing curve", False, id="okp-x25519"),
    pytest.param(public_ec(kid=7), "'kid' must be a string", False, id="kid-not-string"),
    pytest.param(merge(EC, {"x5t": ["a"]}), "'x5t' must be a string", False,
                 id="x5t-not-string"),
    pytest.param(public_ec(extra={1, 2}), "not JSON", False, id="not-json"),
    # Structurally a P-256 key, but not a point of the curve: only the import can tell.
    pytest.param(merge(EC, {"y": EC["x"]}), "cannot import", False, id="ec-point-off-curve"),
]


@pytest.mark.parametrize(("key", "needle", "secret"), UNUSABLE)
def test_unusable_key_is_refused_with_its_path(key: object, needle: str, secret: bool) -> None:
    good = public_okp()
    result = import_jwks({"keys": [good, key]}, PATH)
    assert result.keys == (good,) and len(result.keyset.keys) == 1
    [(path, message)] = result.problems
    assert path == f"{PATH}.keys[1]" and needle in message
    assert result.secret == (((path, message),) if secret else ())


@pytest.mark.parametrize(("key", "needle", "secret"), UNUSABLE)
def test_prepare_keyset_names_the_first_unusable_key(
    key: object, needle: str, secret: bool
) -> None:
    with pytest.raises(ValueError, match=r"^key 1: ") as caught:
        prepare_keyset([RFC7638_KEY, key])  # type: ignore[list-item]
    assert needle in str(caught.value)


def test_problems_never_hold_key_material() -> None:
    private = ec_private_jwk()
    document = {"keys": [private, {"kty": "oct", "k": "c2VjcmV0LXZhbHVl"}, rsa_jwk(2048)]}
    text = repr(import_jwks(document, PATH))
    for value in (private["d"], private["x"], "c2VjcmV0LXZhbHVl", rsa_jwk(2048)["d"]):
        assert value not in text


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"keys": []}, id="empty-set"),
        pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, id="only-unusable-keys"),
    ],
)
def test_set_without_usable_key_is_a_problem(document: dict[str, Any]) -> None:
    result = import_jwks(document, PATH)
    assert result.keys == () and result.keyset.keys == ()
    assert (PATH, "holds no usable public signing key") in result.problems


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
    result = import_jwks(document, PATH)
    assert result.problems == ((PATH, "must be a JWK Set: a mapping with a 'keys' list"),)
    assert (result.keys, result.keyset.keys, result.secret) == ((), (), ())


def test_every_problem_is_reported() -> None:
    document = {"keys": [ec_private_jwk(), {"kty": "oct", "k": "AA"}, public_ec(use="enc")]}
    result = import_jwks(document, PATH)
    assert [path for path, _ in result.problems] == [
        f"{PATH}.keys[0]", f"{PATH}.keys[1]", f"{PATH}.keys[2]", PATH]
    assert [path for path, _ in result.secret] == [f"{PATH}.keys[0]", f"{PATH}.keys[1]"]


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


def test_empty_keyset() -> None:
    keys = prepare_keyset([])
    assert keys.keys == () and dict(keys.by_kid) == {}


# Each key's verifiers call cryptography directly; joserfc's models are the oracle.
ALL_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
MESSAGE = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJjbGllbnQtYSJ9"
# The group orders of the NIST curves (SEC 2): r and s live in [1, n).
CURVE_ORDERS = {
    "ES256": int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16),
    "ES384": int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77A"
                 "ECEC196ACCC52973", 16),
    "ES512": int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F"
                 "966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
}
VERIFIER_SETTINGS = settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def signer_of(alg: str, slot: int = 0) -> Signer:
    return make_signer(alg, slot=slot)  # loading an RSA private key takes ~50 ms


@functools.cache
def only_key(alg: str, slot: int = 0) -> VerificationKey:
    (key,) = signer_of(alg, slot=slot).keyset().keys
    return key


def signed(signer: Signer, alg: str | None = None, message: bytes = MESSAGE) -> bytes:
    return JWS_ALGORITHMS[alg or signer.alg].sign(message, signer.private_key)


def joserfc_verdict(key: VerificationKey, alg: str, message: bytes, signature: bytes) -> bool:
    try:
        return JWS_ALGORITHMS[alg].verify(message, signature, key.key)
    except Exception:
        return False


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def ec_signature(r: int, s: int, size: int) -> bytes:
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_every_algorithm_of_a_key_has_a_verifier(alg: str) -> None:
    key = only_key(alg)
    assert set(key.verifiers) == key.algorithms


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_verifier_accepts_joserfc_signatures_and_nothing_altered(alg: str) -> None:
    key = only_key(alg)
    verify, signature = key.verifiers[alg], signed(signer_of(alg))
    assert verify(MESSAGE, signature) and joserfc_verdict(key, alg, MESSAGE, signature)
    last_bit, half = len(signature) * 8 - 1, len(signature) // 2
    altered = {
        # For ECDSA the same r and s, each one byte longer than the curve allows.
        "zero-padded-halves": b"\x00" + signature[:half] + b"\x00" + signature[half:],
        "first-bit": flip_bit(signature, 0), "last-bit": flip_bit(signature, last_bit),
        "one-byte-short": signature[:-1], "one-byte-long": signature + b"\x00",
        "leading-zero": b"\x00" + signature, "empty": b"", "doubled": signature * 2,
        "zeros": bytes(len(signature)), "ones": b"\xff" * len(signature),
    }
    for name, forged in altered.items():
        assert not verify(MESSAGE, forged), name
        assert not joserfc_verdict(key, alg, MESSAGE, forged), name
    assert not verify(MESSAGE + b".", signature)
    assert not verify(MESSAGE, signed(signer_of(alg, slot=1)))


def test_an_rsa_signature_verifies_only_under_its_own_algorithm() -> None:
    key = only_key("RS256")
    for signing_alg in sorted(RSA_ALGS):
        signature = signed(signer_of(signing_alg), signing_alg)
        for alg in sorted(RSA_ALGS):
            expected = alg == signing_alg
            assert key.verifiers[alg](MESSAGE, signature) is expected, (signing_alg, alg)
            assert joserfc_verdict(key, alg, MESSAGE, signature) is expected, (signing_alg, alg)


def test_both_ed25519_names_verify_the_same_signatures() -> None:
    key = only_key("Ed25519")
    signature = signed(signer_of("Ed25519"))
    assert key.verifiers["EdDSA"](MESSAGE, signature)
    assert key.verifiers["Ed25519"](MESSAGE, signature)


@pytest.mark.parametrize(
    ("alg", "salt_length"),
    [
        pytest.param("PS256", padding.PSS.MAX_LENGTH, id="ps256-longest-salt"),
        pytest.param("PS256", 0, id="ps256-no-salt"),
        pytest.param("PS512", 32, id="ps512-sha256-length-salt"),
    ],
)
def test_pss_salt_must_be_the_hash_length(alg: str, salt_length: int) -> None:
    # RFC 7518 §3.5: the salt is as long as the hash output; joserfc checks exactly that.
    sha = {"PS256": hashes.SHA256(), "PS512": hashes.SHA512()}[alg]
    private = signer_of(alg).private_key.get_op_key("sign")
    signature = private.sign(MESSAGE, padding.PSS(padding.MGF1(sha), salt_length), sha)
    key = only_key(alg)
    assert not key.verifiers[alg](MESSAGE, signature)
    assert not joserfc_verdict(key, alg, MESSAGE, signature)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_verdicts_on_hostile_r_and_s_match_joserfc(alg: str) -> None:
    key, order = only_key(alg), CURVE_ORDERS[alg]
    genuine = signed(signer_of(alg))
    size = len(genuine) // 2
    r, s = int.from_bytes(genuine[:size], "big"), int.from_bytes(genuine[size:], "big")
    # ECDSA is malleable: (r, n - s) is valid too, and joserfc accepts it.
    assert key.verifiers[alg](MESSAGE, ec_signature(r, order - s, size))
    assert joserfc_verdict(key, alg, MESSAGE, ec_signature(r, order - s, size))
    specials = [0, 1, order - 1, order, order + 1, r, s, r + order, s + order, 256**size - 1]
    for hostile_r in specials:
        for hostile_s in specials:
            if max(hostile_r, hostile_s) < 256**size:
                forged = ec_signature(hostile_r, hostile_s, size)
                assert key.verifiers[alg](MESSAGE, forged) is joserfc_verdict(
                    key, alg, MESSAGE, forged), (hostile_r, hostile_s)


def hostile_signatures(genuine: bytes) -> st.SearchStrategy[bytes]:
    length, half = len(genuine), len(genuine) // 2
    return st.one_of(
        st.just(genuine),
        st.just(b"\x00" + genuine[:half] + b"\x00" + genuine[half:]),
        st.binary(max_size=2 * length + 2),
        st.binary(min_size=length, max_size=length),
        st.integers(0, length * 8 - 1).map(lambda bit: flip_bit(genuine, bit)),
        st.integers(-4, 4).map(lambda cut: genuine[:cut] if cut < 0 else genuine + bytes(cut)),
    )


@pytest.mark.parametrize("alg", ALL_ALGS)
@VERIFIER_SETTINGS
@given(data=st.data())
def test_verifier_verdict_equals_joserfc_for_hostile_signatures(alg: str,
                                                                data: st.DataObject) -> None:
    key, genuine = only_key(alg), signed(signer_of(alg))
    signature = data.draw(hostile_signatures(genuine), label="signature")
    message = data.draw(st.sampled_from([MESSAGE, MESSAGE + b"x", MESSAGE[:-1], b""]),
                        label="message")
    assert key.verifiers[alg](message, signature) is joserfc_verdict(key, alg, message, signature)


def test_ecdsa_signature_from_der_form_is_refused() -> None:
    # cryptography's own (DER) form is not a JWS signature: the length alone refuses it.
    key = only_key("ES256")
    genuine = signed(signer_of("ES256"))
    r, s = int.from_bytes(genuine[:32], "big"), int.from_bytes(genuine[32:], "big")
    private = signer_of("ES256").private_key.get_op_key("sign")
    der = private.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert decode_dss_signature(der) != (r, s)  # a fresh signature, still valid
    assert not key.verifiers["ES256"](MESSAGE, der)
    assert not joserfc_verdict(key, "ES256", MESSAGE, der)


# ---------------------------------------------------------------- x5c: the key's own certificate


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA", "ES512"])
def test_x5c_leaf_not_after_is_read_once_at_import(alg: str) -> None:
    signer = with_certificate(make_signer(alg), not_before=NOW - 20 * DAY,
                              not_after=NOW + 5 * DAY, serial=0xABC)
    result = import_jwks({"keys": [signer.public_jwk]}, PATH)
    assert result.problems == ()
    (key,) = result.keyset.keys
    assert key.not_after == NOW + 5 * DAY
    assert key.certificate is not None
    assert (key.certificate.subject, key.certificate.issuer) == (
        "O=Acme Corp,CN=client-a", "O=Acme Corp,CN=client-a")
    assert (key.certificate.serial, key.certificate.not_before) == ("0ABC", NOW - 20 * DAY)
    assert result.keyset.certificate_not_after == NOW + 5 * DAY


def test_the_soonest_certificate_expiry_of_a_set_is_kept() -> None:
    later = with_certificate(make_signer("ES256"), not_after=NOW + 90 * DAY)
    sooner = with_certificate(make_signer("ES256", slot=1), not_after=NOW + 3 * DAY)
    plain = make_signer("RS256")
    keys = later.keyset(sooner, plain)
    assert [key.not_after for key in keys.keys] == [NOW + 90 * DAY, NOW + 3 * DAY, None]
    assert keys.certificate_not_after == NOW + 3 * DAY


def test_a_set_without_certificates_has_no_expiry() -> None:
    assert make_signer("ES256").keyset(make_signer("RS256")).certificate_not_after is None


def test_an_expired_certificate_still_imports_the_key() -> None:
    # Expiry is watched and, with refuse_expired_certificates, enforced per request; the
    # key itself stays usable, so turning refusal off is enough to let it verify again.
    signer = with_certificate(make_signer("ES256"), not_after=NOW - DAY)
    (key,) = signer.keyset().keys
    assert key.not_after == NOW - DAY


def _x5c_of(signer: Signer) -> list[str]:
    x5c: list[str] = with_certificate(signer, not_after=NOW + DAY).public_jwk["x5c"]
    return x5c


X5C_UNUSABLE = [
    pytest.param(_x5c_of(make_signer("ES256", slot=1)), "certifies another key",
                 id="leaf-of-another-key-same-type"),
    pytest.param(_x5c_of(make_signer("RS256")), "certifies another key",
                 id="leaf-of-another-key-type"),
    pytest.param(["MIIB"], "not a base64 DER certificate", id="not-a-certificate"),
    pytest.param([b64url(b"\x30\x03\x02\x01\x01")], "not a base64 DER certificate",
                 id="base64url-not-base64"),
    pytest.param(["!!!!"], "not a base64 DER certificate", id="not-base64"),
    pytest.param("MIIB", "must be a list of 1 to 10", id="a-string"),
    pytest.param([], "must be a list of 1 to 10", id="empty"),
    pytest.param(["MIIB"] * 11, "must be a list of 1 to 10", id="too-many"),
    pytest.param([7], "must be a list of 1 to 10", id="a-number"),
]


@pytest.mark.parametrize(("x5c", "message"), X5C_UNUSABLE)
def test_x5c_that_does_not_certify_the_jwk_makes_the_key_unusable(x5c: Any,
                                                                   message: str) -> None:
    good = make_signer("RS256")
    broken = make_signer("ES256").with_jwk(x5c=x5c)
    result = import_jwks({"keys": [broken.public_jwk, good.public_jwk]}, PATH)
    assert [path for path, _ in result.problems] == [f"{PATH}.keys[0]"]
    assert message in result.problems[0][1] and "'x5c'" in result.problems[0][1]
    assert [key.thumbprint for key in result.keyset.keys] == [
        key.thumbprint for key in good.keyset().keys]
    assert result.secret == ()
    with pytest.raises(ValueError, match="key 0: 'x5c'"):
        prepare_keyset([broken.public_jwk])


def test_a_leaf_of_another_key_is_refused_even_with_a_valid_chain_after_it() -> None:
    # Only the first certificate is the key's; the rest of the chain cannot rescue it.
    signer = make_signer("ES256")
    x5c = [*_x5c_of(make_signer("ES256", slot=1)), *_x5c_of(signer)]
    result = import_jwks({"keys": [signer.with_jwk(x5c=x5c).public_jwk]}, PATH)
    assert "certifies another key" in result.problems[0][1]


def test_a_problem_message_never_holds_the_certificate() -> None:
    leaf = _x5c_of(make_signer("ES256", slot=1))
    result = import_jwks({"keys": [make_signer("ES256").with_jwk(x5c=leaf).public_jwk]}, PATH)
    assert all(leaf[0][:16] not in message for _, message in result.problems)
