"""CA-anchored certificates in the core: anchors and CRLs, chain validation, identity, cache.

Every refusal is the attacker's attempt: a certificate made to look like the client's in
one way and wrong in another, with the exact reason it must get.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.core.assertion import AssertionPolicy, parse_assertion
from gateway.core.attempt import Attempt
from gateway.core.certificate_chain import (
    CertificateTrust,
    TrustFileProblem,
    decode_x5c,
    load_trust,
)
from gateway.core.certificate_credential import CertificateCredential, ChainCache
from gateway.core.certificate_identity import parse_identity
from gateway.core.errors import GatewayError, InvalidClient, KeyMiss
from gateway.core.reasons import Reason
from tests.support.pki import CA, DAY, Issued, attacks, now_utc
from tests.support.tokens import AUDIENCE

SUBJECT = "CN=partner-acme,O=Acme Corp,C=DE"
SKEW = 15.0
ENDPOINT = "/token"


@pytest.fixture(scope="module")
def root() -> CA:
    return CA()


@pytest.fixture(scope="module")
def issuing(root: CA) -> CA:
    return root.intermediate()


def trust_of(*anchors: CA, crl: bytes | None = None) -> CertificateTrust:
    return load_trust(b"".join(anchor.pem for anchor in anchors), crl)


def certs(entries: list[str]) -> tuple[x509.Certificate, ...]:
    return decode_x5c(entries)


def refusal(trust: CertificateTrust, x5c: list[str], now: float | None = None) -> Reason:
    with pytest.raises(InvalidClient) as caught:
        trust.validate(certs(x5c), time.time() if now is None else now, SKEW)
    return caught.value.reason


# -- anchors and CRLs ---------------------------------------------------------------------

def test_anchors_and_crls_that_cannot_serve_are_problems_of_their_setting(
    root: CA, issuing: CA,
) -> None:
    leaf = issuing.issue()
    cases: list[tuple[bytes, bytes | None, str, str]] = [
        (b"not a certificate", None, "ca_file", "holds no PEM certificate"),
        (leaf.pem, None, "ca_file", "is not a CA certificate"),
        (root.pem, b"-----BEGIN CERTIFICATE-----\n", "crl_file", "holds no PEM X509 CRL"),
        (root.pem, b"\x30\x03\x02\x01\x00", "crl_file", "is not a CRL"),
        # The root's CRL, signed by another key: it would revoke nothing that it names.
        (root.pem, root.crl(signer=CA("Impostor").key), "crl_file", "is not signed by"),
    ]
    for ca_data, crl_data, setting, message in cases:
        with pytest.raises(TrustFileProblem) as caught:
            load_trust(ca_data, crl_data)
        assert caught.value.setting == setting and message in caught.value.message


def test_the_identity_changes_with_either_file(root: CA) -> None:
    plain, with_crl = trust_of(root), trust_of(root, crl=root.crl())
    assert plain.identity == trust_of(root).identity
    assert plain.identity != with_crl.identity != trust_of(root, CA("Other")).identity


def test_a_der_crl_is_read_too(root: CA, issuing: CA) -> None:
    leaf = issuing.issue()
    der = x509.load_pem_x509_crl(issuing.crl(leaf)).public_bytes(Encoding.DER)
    assert refusal(trust_of(root, crl=der), issuing.chain(leaf)) == Reason.CERTIFICATE_REVOKED


# -- chains -------------------------------------------------------------------------------

def test_a_chain_to_an_anchor_validates_and_says_what_the_audit_needs(
    root: CA, issuing: CA,
) -> None:
    leaf = issuing.issue()  # no subjectAltName: the subject-name-and-issuer model
    trust = trust_of(root)
    validated = trust.validate(certs(issuing.chain(leaf)), time.time(), SKEW)
    assert validated.leaf == leaf.cert
    assert (validated.subject, validated.serial, validated.thumbprint) == (
        SUBJECT, leaf.serial, leaf.thumbprint)
    assert validated.not_after == leaf.cert.not_valid_after_utc.timestamp()
    earliest = min(c.not_valid_after_utc.timestamp() for c in (leaf.cert, issuing.cert, root.cert))
    assert validated.expires_at == earliest
    assert trust.validations == 1


def test_an_intermediate_in_ca_file_anchors_a_leaf_sent_alone(issuing: CA) -> None:
    leaf = issuing.issue()
    assert trust_of(issuing).validate(certs([leaf.x5c_entry]), time.time(), SKEW).leaf == leaf.cert


ATTACKS = ("self-signed-leaf", "leaf-of-another-ca", "expired-leaf", "not-yet-valid-leaf",
           "intermediate-without-ca-rights", "intermediate-without-basic-constraints",
           "leaf-without-signature-usage", "leaf-eku-server-only", "intermediate-left-out",
           "ca-certificate-as-leaf", "subject-one-attribute-off",
           "valid-chain-another-key-signed", "oversized-chain", "x5c-not-base64-der",
           "x5c-not-base64")


@pytest.mark.parametrize("attack", ATTACKS)
def test_chains_an_attacker_sends_are_refused(root: CA, issuing: CA, attack: str) -> None:
    sent = attacks(root, issuing, SUBJECT)[attack]
    trust, now = trust_of(root), time.time()
    token = sent.signer.signer().assertion("acme", now=now, header={"x5c": sent.x5c})
    with pytest.raises(GatewayError) as caught:
        credential("acme", trust).verify(parse_assertion(token), ENDPOINT, now, Attempt())
    assert caught.value.reason == sent.reason


def test_every_attack_is_tested() -> None:
    assert set(ATTACKS) == set(attacks(CA(), CA().intermediate(), SUBJECT))


def test_an_expired_intermediate_makes_the_chain_expired(root: CA) -> None:
    old = root.intermediate("Old Issuing", not_after=now_utc() - DAY)
    leaf = old.issue(not_before=now_utc() - 2 * DAY, not_after=now_utc() + DAY)
    assert refusal(trust_of(root), old.chain(leaf)) == Reason.CERTIFICATE_EXPIRED


def test_validity_gets_the_clock_skew_and_no_more(root: CA, issuing: CA) -> None:
    leaf = issuing.issue(not_before=now_utc() - DAY, not_after=now_utc())
    not_after = leaf.cert.not_valid_after_utc.timestamp()
    trust = trust_of(root)
    assert trust.validate(certs(issuing.chain(leaf)), not_after + SKEW - 1, SKEW).leaf == leaf.cert
    assert refusal(trust, issuing.chain(leaf), not_after + SKEW + 1) == Reason.CERTIFICATE_EXPIRED
    young = issuing.issue(not_before=now_utc() + DAY)
    not_before = young.cert.not_valid_before_utc.timestamp()
    assert trust.validate(certs(issuing.chain(young)), not_before - SKEW + 1, SKEW)
    assert refusal(trust, issuing.chain(young), not_before - SKEW - 1) == \
        Reason.CERTIFICATE_UNTRUSTED


def test_a_serial_on_the_crl_is_revoked_at_any_level(root: CA) -> None:
    issuing = root.intermediate("Revocable Issuing")
    leaf, other = issuing.issue(), issuing.issue()
    crl = issuing.crl(leaf)
    assert refusal(trust_of(root, crl=crl), issuing.chain(leaf)) == Reason.CERTIFICATE_REVOKED
    assert trust_of(root, crl=crl).validate(certs(issuing.chain(other)), time.time(), SKEW)
    # The root revokes the intermediate: every leaf under it goes.
    both = root.crl(issuing.issued) + crl
    assert refusal(trust_of(root, crl=both), issuing.chain(other)) == Reason.CERTIFICATE_REVOKED


def test_an_intermediates_crl_signed_by_another_key_is_not_trusted(root: CA) -> None:
    issuing = root.intermediate("Issuing With Forged CRL")
    forged = issuing.crl(signer=CA("Forger").key)  # names the issuer, lists nothing
    trust = trust_of(root, crl=forged)  # an intermediate's CRL is checked when used
    assert refusal(trust, issuing.chain(issuing.issue())) == Reason.CERTIFICATE_UNTRUSTED


@pytest.mark.parametrize("entry", [
    base64.b64encode(b"not a certificate").decode(),
    "TWFu=",  # non-canonical base64
])
def test_x5c_that_is_not_base64_der_is_a_bad_header(entry: str) -> None:
    with pytest.raises(InvalidClient) as caught:
        decode_x5c([entry])
    assert caught.value.reason == Reason.BAD_HEADER


# -- identity -----------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "garbage", "cn=partner-acme,o=Acme Corp",
                                  "CN=partner-acme, O=Acme Corp"])
def test_a_subject_that_is_not_rfc_4514_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 4514"):
        parse_identity(text)


def test_the_subject_is_compared_as_a_name_attribute_by_attribute(issuing: CA) -> None:
    identity = parse_identity(SUBJECT)
    assert identity.matches(issuing.issue(SUBJECT).cert)
    for other in ("CN=partner-acme,O=Acme Corp,C=FR", "CN=partner-acme,O=Acme Corp",
                  "CN=partner-acme,O=Acme Corp,OU=Sales,C=DE", "CN=Partner-acme,O=Acme Corp,C=DE",
                  "C=DE,O=Acme Corp,CN=partner-acme"):
        assert not identity.matches(issuing.issue(other).cert), other


@pytest.mark.parametrize(("kind", "wanted", "general", "shown"), [
    ("dns", "client.acme.example", x509.DNSName, "Client.ACME.example"),
    ("uri", "spiffe://acme.example/client", x509.UniformResourceIdentifier,
     "spiffe://acme.example/client"),
    ("email", "client@acme.example", x509.RFC822Name, "client@ACME.example"),
])
def test_a_san_of_the_configured_kind_matches(
    issuing: CA, kind: str, wanted: str, general: Any, shown: str,
) -> None:
    identity = parse_identity(None, kind, wanted)
    assert identity.matches(issuing.issue("CN=anything", san=[general(shown)]).cert)
    assert not identity.matches(issuing.issue(SUBJECT).cert)  # no SAN at all
    assert not identity.matches(issuing.issue(
        "CN=anything", san=[general(shown.replace("lient", "intruder"))]).cert)
    other_kind = x509.DNSName("client.acme.example") if kind != "dns" else \
        x509.UniformResourceIdentifier("https://client.acme.example")
    assert not identity.matches(issuing.issue("CN=anything", san=[other_kind]).cert)


# -- the credential: signature, identity, cache -------------------------------------------

def policy(client_id: str) -> AssertionPolicy:
    return AssertionPolicy(client_id=client_id, algorithms=frozenset({"ES256", "PS256"}),
                           audiences=frozenset({AUDIENCE}), max_lifetime=300.0,
                           clock_skew=SKEW, require_typ=False)


def credential(client_id: str, trust: CertificateTrust, subject: str = SUBJECT,
               chains: ChainCache | None = None) -> CertificateCredential:
    return CertificateCredential(client_id, trust, parse_identity(subject),
                                 {ENDPOINT: policy(client_id)},
                                 chains=chains if chains is not None else ChainCache())


def verify(cred: CertificateCredential, leaf: Issued, x5c: list[str], now: float,
           client_id: str | None = None, signer: Issued | None = None) -> Attempt:
    token = (signer or leaf).signer().assertion(client_id or cred.client_id, now=now,
                                                header={"x5c": x5c})
    attempt = Attempt()
    cred.verify(parse_assertion(token), ENDPOINT, now, attempt)
    return attempt


def test_the_chain_is_validated_once_and_its_outcome_reused(root: CA, issuing: CA) -> None:
    leaf, now = issuing.issue(), time.time()
    trust = trust_of(root)
    cred = credential("acme", trust)
    for _ in range(5):
        attempt = verify(cred, leaf, issuing.chain(leaf), now)
        assert attempt.method == "certificate"
        assert (attempt.certificate_subject, attempt.certificate_serial,
                attempt.certificate_thumbprint) == (SUBJECT, leaf.serial, leaf.thumbprint)
        assert attempt.certificate_not_after == leaf.cert.not_valid_after_utc.timestamp()
    assert trust.validations == 1 and len(cred.chains) == 1


def test_a_cached_chain_lapses_at_its_earliest_not_after(root: CA, issuing: CA) -> None:
    leaf = issuing.issue(not_after=now_utc() + DAY)
    not_after = leaf.cert.not_valid_after_utc.timestamp()
    trust = trust_of(root)
    cred = credential("acme", trust)
    verify(cred, leaf, issuing.chain(leaf), not_after - 120)
    verify(cred, leaf, issuing.chain(leaf), not_after - 60)
    assert trust.validations == 1
    verify(cred, leaf, issuing.chain(leaf), not_after + 1)  # within the skew: validated again
    assert trust.validations == 2
    with pytest.raises(InvalidClient) as caught:
        verify(cred, leaf, issuing.chain(leaf), not_after + SKEW + 60)
    assert caught.value.reason == Reason.CERTIFICATE_EXPIRED and trust.validations == 3


def test_a_chain_validated_for_one_client_does_not_authenticate_another(
    root: CA, issuing: CA,
) -> None:
    leaf, now = issuing.issue(), time.time()
    trust, shared = trust_of(root), ChainCache()  # even sharing one cache object
    acme = credential("acme", trust, chains=shared)
    globex = credential("globex", trust, "CN=globex,O=Globex,C=US", chains=shared)
    verify(acme, leaf, issuing.chain(leaf), now)
    with pytest.raises(InvalidClient) as caught:
        verify(globex, leaf, issuing.chain(leaf), now)
    assert caught.value.reason == Reason.CERTIFICATE_SUBJECT_MISMATCH
    assert trust.validations == 2  # globex's request was validated, not served from acme's


def test_a_valid_chain_whose_key_did_not_sign_is_a_bad_signature(root: CA, issuing: CA) -> None:
    leaf, thief = issuing.issue(), issuing.issue()
    with pytest.raises(KeyMiss) as caught:
        verify(credential("acme", trust_of(root)), leaf, issuing.chain(leaf), time.time(),
               signer=thief)
    assert caught.value.reason == Reason.BAD_SIGNATURE


def test_a_cached_chain_still_needs_its_leafs_signature(root: CA, issuing: CA) -> None:
    leaf, thief, now = issuing.issue(), issuing.issue(), time.time()
    trust = trust_of(root)
    cred = credential("acme", trust)
    verify(cred, leaf, issuing.chain(leaf), now)  # acme's chain, validated and cached
    with pytest.raises(KeyMiss) as caught:  # the same x5c, signed with another key
        verify(cred, leaf, issuing.chain(leaf), now, signer=thief)
    assert caught.value.reason == Reason.BAD_SIGNATURE
    assert trust.validations == 1  # refused by the cached outcome's key, not a new validation


def test_an_assertion_without_x5c_names_no_certificate(root: CA, issuing: CA) -> None:
    leaf = issuing.issue()
    token = leaf.signer().assertion("acme", now=time.time())
    with pytest.raises(InvalidClient) as caught:
        credential("acme", trust_of(root)).verify(parse_assertion(token), ENDPOINT,
                                                  time.time(), Attempt())
    assert caught.value.reason == Reason.CERTIFICATE_UNTRUSTED


def test_an_alg_the_leafs_key_cannot_verify_is_no_matching_key(root: CA, issuing: CA) -> None:
    leaf = issuing.issue()  # an EC key; the header claims PS256
    token = leaf.signer().sign({"alg": "PS256", "x5c": issuing.chain(leaf)}, {"iss": "acme"})
    with pytest.raises(InvalidClient) as caught:
        credential("acme", trust_of(root)).verify(parse_assertion(token), ENDPOINT,
                                                  time.time(), Attempt())
    assert caught.value.reason == Reason.NO_MATCHING_KEY


def test_the_cache_is_bounded() -> None:
    cache = ChainCache(max_entries=2)
    entry: Any = type("Entry", (), {"chain": type("Chain", (), {"expires_at": 10.0})()})()
    for key in ("a", "b", "c"):
        cache.put(key, entry)
    assert len(cache) == 2 and cache.get("a", 0.0) is None and cache.get("c", 0.0) is entry
    assert cache.get("c", 10.0) is None and len(cache) == 1
