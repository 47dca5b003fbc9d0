"""CA-anchored certificate clients end to end: x5c chains through the running gateway.

The client's certificate comes in each assertion's x5c; the gateway holds only the CA
bundle (and a CRL). Every attack is sent over a real socket and must get its exact reason
with nothing reaching the backend.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography import x509

from gateway.adapters.assemble import build_runtime
from gateway.config.errors import ConfigError
from gateway.config.loading import load_settings
from gateway.core.certificate_credential import CertificateCredential
from tests.conftest import ISSUER, TOKEN_PATH, Backend
from tests.support.pki import CA, Issued, attacks
from tests.web.test_federation import ENV, Lab, Live, accepted, basic, client, refused

SUBJECT: Final = "CN=partner-acme,O=Acme Corp,C=DE"
ACME: Final = "partner-acme"
# Header shapes the assertion parser refuses for every client (x5c count, size, alphabet).
REFUSED_BY_THE_PARSER: Final = frozenset({"oversized-chain", "x5c-not-base64"})


@pytest.fixture(scope="module")
def root() -> CA:
    return CA("Partners Root CA")


@pytest.fixture(scope="module")
def issuing(root: CA) -> CA:
    return root.intermediate("Partners Issuing CA")


@pytest.fixture(scope="module")
def revoked(issuing: CA) -> Issued:
    return issuing.issue(SUBJECT)


def cert_client(**certificate: Any) -> dict[str, Any]:
    return client(certificate={"ca_file": "ca.pem", "subject": SUBJECT, **certificate})


def assertion(leaf: Issued, x5c: list[str], client_id: str = ACME, **claims: Any) -> str:
    return leaf.signer().assertion(client_id, ISSUER, now=time.time(), header={"x5c": x5c},
                                   **claims)


async def start(lab: Lab, tmp_path: Path, *anchors: CA, crl: bytes | None = None,
                clients: dict[str, Any] | None = None) -> Live:
    (tmp_path / "ca.pem").write_bytes(b"".join(anchor.pem for anchor in anchors))
    if crl is not None:
        (tmp_path / "crl.pem").write_bytes(crl)
    return await lab.start({}, clients or {ACME: cert_client()})


def credential_of(live: Live, client_id: str = ACME) -> CertificateCredential:
    (found,) = live.gateway.runtime.clients[client_id].credentials
    assert isinstance(found, CertificateCredential)
    return found


def auth_count(live: Live, reason: str, client_id: str = ACME) -> float:
    result = "accepted" if reason == "ok" else "rejected"
    return live.metric("pkjwt_client_auth_total", client=client_id, endpoint=TOKEN_PATH,
                       result=result, reason=reason, method="certificate")


async def test_a_leaf_without_san_is_accepted_by_its_subject_and_audited(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA, backend: Backend,
) -> None:
    live = await start(lab, tmp_path, root)
    leaf = issuing.issue(SUBJECT)  # no subjectAltName
    line = await accepted(live, assertion(leaf, issuing.chain(leaf)))
    (seen,) = backend.seen
    assert seen.headers["Authorization"] == basic(ACME)
    assert seen.form() == [("grant_type", "client_credentials")]
    assert {name: line.get(name) for name in (
        "client", "method", "certificate_subject", "certificate_serial",
        "certificate_thumbprint")} == {
        "client": ACME, "method": "certificate", "certificate_subject": SUBJECT,
        "certificate_serial": leaf.serial, "certificate_thumbprint": leaf.thumbprint}
    assert line["key_thumbprint"]  # the leaf key's RFC 7638 thumbprint, as for every key
    assert auth_count(live, "ok") == 1
    # The key comes with the assertion: no key set to count for this client.
    live.gateway.metrics.flush()
    assert live.gateway.metrics.registry.get_sample_value(
        "pkjwt_jwks_keys", {"client": ACME}) is None


@pytest.mark.parametrize("attack", [
    "self-signed-leaf", "leaf-of-another-ca", "expired-leaf", "not-yet-valid-leaf",
    "intermediate-without-ca-rights", "intermediate-without-basic-constraints",
    "leaf-without-signature-usage", "leaf-eku-server-only", "intermediate-left-out",
    "ca-certificate-as-leaf", "subject-one-attribute-off", "valid-chain-another-key-signed",
    "oversized-chain", "x5c-not-base64-der", "x5c-not-base64",
])
async def test_an_attackers_chain_is_refused_with_its_reason(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA, attack: str,
) -> None:
    live = await start(lab, tmp_path, root)
    sent = attacks(root, issuing, SUBJECT)[attack]
    line = await refused(live, assertion(sent.signer, sent.x5c), sent.reason)
    if attack in REFUSED_BY_THE_PARSER:  # before any client is looked up
        assert line.get("client") is None
        return
    assert (line["client"], line["method"]) == (ACME, "certificate")
    assert auth_count(live, sent.reason) == 1


async def test_a_revoked_serial_is_refused_and_its_neighbour_is_not(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA, revoked: Issued,
) -> None:
    live = await start(lab, tmp_path, root, crl=issuing.crl(revoked),
                       clients={ACME: cert_client(crl_file="crl.pem")})
    line = await refused(live, assertion(revoked, issuing.chain(revoked)), "certificate_revoked")
    assert line["certificate_serial"] == revoked.serial
    other = issuing.issue(SUBJECT)
    await accepted(live, assertion(other, issuing.chain(other)))


async def test_an_assertion_without_x5c_is_refused(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA,
) -> None:
    live = await start(lab, tmp_path, root)
    leaf = issuing.issue(SUBJECT)
    await refused(live, leaf.signer().assertion(ACME, ISSUER, now=time.time()),
                  "certificate_untrusted")


@pytest.mark.parametrize(("kind", "value", "general"), [
    ("dns", "client.acme.example", x509.DNSName),
    ("uri", "spiffe://acme.example/client", x509.UniformResourceIdentifier),
    ("email", "client@acme.example", x509.RFC822Name),
])
async def test_a_client_matched_by_san(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA, kind: str, value: str, general: Any,
) -> None:
    live = await start(lab, tmp_path, root, clients={ACME: client(
        certificate={"ca_file": "ca.pem", "san": {kind: value}})})
    leaf = issuing.issue("CN=whatever the CA puts here", san=[general(value)])
    await accepted(live, assertion(leaf, issuing.chain(leaf)))
    other = issuing.issue(SUBJECT, san=[general(value.replace("client", "other"))])
    await refused(live, assertion(other, issuing.chain(other)), "certificate_subject_mismatch")


async def test_a_chain_validated_for_one_client_is_refused_for_another(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA, backend: Backend,
) -> None:
    globex = "CN=globex,O=Globex,C=US"
    live = await start(lab, tmp_path, root, clients={
        ACME: cert_client(), "globex": client(certificate={"ca_file": "ca.pem",
                                                           "subject": globex})})
    leaf = issuing.issue(SUBJECT)
    await accepted(live, assertion(leaf, issuing.chain(leaf)))  # validated and kept for acme
    line = await refused(live, assertion(leaf, issuing.chain(leaf), "globex"),
                         "certificate_subject_mismatch")
    assert line["client"] == "globex"
    assert credential_of(live, "globex").trust.validations == 1  # not acme's cached outcome
    assert len(backend.seen) == 1


async def test_one_chain_is_validated_once(lab: Lab, tmp_path: Path, root: CA,
                                           issuing: CA) -> None:
    live = await start(lab, tmp_path, root)
    leaf = issuing.issue(SUBJECT)
    for _ in range(4):
        await accepted(live, assertion(leaf, issuing.chain(leaf)))
    assert credential_of(live).trust.validations == 1


async def test_a_client_rotates_its_certificate_under_load_without_a_gateway_change(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA, backend: Backend,
) -> None:
    live = await start(lab, tmp_path, root)
    runtime = live.gateway.runtime
    old, new = issuing.issue(SUBJECT), issuing.issue(SUBJECT)  # the new one: a new key

    async def send(leaf: Issued) -> int:
        status, _ = await live.post(assertion(leaf, issuing.chain(leaf)))
        return status

    # Concurrent requests; midway the client's instances switch to the new certificate.
    statuses = await asyncio.gather(*(send(old if index < 20 else new) for index in range(40)))
    assert statuses == [200] * 40
    assert len(backend.seen) == 40
    assert live.gateway.runtime is runtime  # nothing reloaded, nothing configured
    assert credential_of(live).trust.validations == 2  # one per certificate


async def test_reload_keeps_the_cache_unless_the_ca_or_crl_file_changed(
    lab: Lab, tmp_path: Path, root: CA, issuing: CA,
) -> None:
    live = await start(lab, tmp_path, root)
    leaf = issuing.issue(SUBJECT)
    text = live.path.read_text()
    await accepted(live, assertion(leaf, issuing.chain(leaf)))
    first = credential_of(live)
    await live.reload(text)  # the same files
    await accepted(live, assertion(leaf, issuing.chain(leaf)))
    assert credential_of(live).chains is first.chains and first.trust.validations == 1
    # The CA bundle changes (another anchor added): every chain is validated anew.
    (tmp_path / "ca.pem").write_bytes(root.pem + CA("Another Partners CA").pem)
    await live.reload(text)
    await accepted(live, assertion(leaf, issuing.chain(leaf)))
    second = credential_of(live)
    assert second.chains is not first.chains and second.trust is not first.trust
    assert (first.trust.validations, second.trust.validations) == (1, 1)
    # The CRL now lists the leaf: the outcome validated before must not outlive it.
    (tmp_path / "crl.pem").write_bytes(issuing.crl(leaf))
    await live.reload(text.replace('"ca_file": "ca.pem"',
                                   '"ca_file": "ca.pem", "crl_file": "crl.pem"'))
    await refused(live, assertion(leaf, issuing.chain(leaf)), "certificate_revoked")
    # The same CRL file path with new contents (the leaf no longer listed) drops it too.
    (tmp_path / "crl.pem").write_bytes(issuing.crl())
    await live.reload(live.path.read_text())
    await accepted(live, assertion(leaf, issuing.chain(leaf)))


async def test_a_ca_file_that_cannot_serve_is_refused_at_load_with_its_path(
    lab: Lab, tmp_path: Path, issuing: CA,
) -> None:
    leaf = issuing.issue(SUBJECT)
    (tmp_path / "ca.pem").write_bytes(leaf.pem)  # a leaf, not a CA
    path = tmp_path / "gateway.yaml"
    path.write_text(lab.config({}, {ACME: cert_client(subject="cn=partner-acme")}))
    with pytest.raises(ConfigError) as caught:
        build_runtime(load_settings(path, env=ENV))
    where = "clients.partner-acme.certificate"
    assert {problem[0] for problem in caught.value.problems} == {
        f"{where}.subject", f"{where}.ca_file"}
    (tmp_path / "ca.pem").unlink()
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=ENV)
    assert [p for p in caught.value.problems if p[0] == f"{where}.ca_file"]
