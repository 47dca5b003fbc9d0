"""GitLab CI, Kubernetes and SPIFFE tokens through the running gateway, each platform's way."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import ISSUER
from tests.support.platform_claims import spiffe_claims
from tests.support.platform_issuer import platform_issuer
from tests.web.test_federation import (
    Lab,
    accepted,
    claims_of,
    client,
    declared,
    refused,
    trust,
)

GITLAB_SUBJECT = "project_path:group/project:ref_type:branch:ref:main"
SERVICE_ACCOUNT = "system:serviceaccount:ci:deployer"
SA_UID = "5f1c2c6e-0000-4000-8000-000000000001"  # the builder's default uid
SPIFFE_ID = "spiffe://example.org/ns/prod/sa/api"
SPIFFE_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"


async def test_gitlab_tokens_are_pinned_by_namespace_and_project_ids(
    lab: Lab, tmp_path: Path
) -> None:
    async with platform_issuer(tmp_path, "gitlab") as gitlab:
        pinned = trust("gl-main", "gitlab", GITLAB_SUBJECT, max_lifetime="1h",
                       claims={"namespace_id": "72", "project_id": "42", "ref_protected": True})
        live = await lab.start({"gitlab": declared(gitlab)}, {"deploy-api": client(pinned)})
        line = await accepted(live, gitlab.gitlab_token(ISSUER))
        assert (line["method"], line["trust"], line["issuer"], line["subject"]) == (
            "federated", "gl-main", "gitlab", GITLAB_SUBJECT)
        # The same paths, re-registered after a deletion or a move: other ids.
        for recreated in (gitlab.gitlab_token(ISSUER, project_id="4242"),
                          gitlab.gitlab_token(ISSUER, namespace_id="7272")):
            await refused(live, recreated, "claim_mismatch", client_id="deploy-api")
        await refused(live, gitlab.gitlab_token(ISSUER, ref_protected="false"),
                      "claim_mismatch", client_id="deploy-api")
        assert live.decisions("deploy-api", "gl-main") == (1, 3)


async def test_a_kubernetes_token_is_checked_by_pointer_with_keys_behind_a_bearer_token(
    lab: Lab, tmp_path: Path
) -> None:
    token_file = tmp_path / "reader.token"
    token_file.write_text("reader-token-1\n")
    async with platform_issuer(tmp_path, "kubernetes", bearer_token="reader-token-1") as cluster:
        deployer = trust("ci-deployer", "cluster", SERVICE_ACCOUNT, max_lifetime="1h",
                         claims={"/kubernetes.io/serviceaccount/uid": SA_UID})
        live = await lab.start({"cluster": declared(cluster, bearer_token_file=str(token_file))},
                               {"deploy-api": client(deployer)})
        assert {asked.headers["Authorization"] for asked in cluster.asked} == {
            "Bearer reader-token-1"}
        line = await accepted(live, cluster.kubernetes_token(ISSUER))
        assert (line["trust"], line["issuer"], line["subject"]) == (
            "ci-deployer", "cluster", SERVICE_ACCOUNT)
        recreated = cluster.kubernetes_token(ISSUER, sa_uid="5f1c2c6e-0000-4000-8000-00000000dead")
        await refused(live, recreated, "claim_mismatch", client_id="deploy-api")

        # The kubelet rotates the reader's token; the next fetch (forced by a new kid)
        # must read the file again.
        asked = len(cluster.asked)
        token_file.write_text("reader-token-2\n")
        cluster.bearer_token = "reader-token-2"
        new_kid = cluster.rotate()
        line = await accepted(live, cluster.kubernetes_token(ISSUER))
        assert line["kid"] == new_kid
        assert {a.headers["Authorization"] for a in cluster.asked[asked:]} == {
            "Bearer reader-token-2"}
        assert "reader-token" not in live.audit.getvalue()


@pytest.mark.parametrize("with_jti", [True, False], ids=["by-jti", "by-token-hash"])
async def test_a_reusable_kubernetes_token_is_accepted_again_until_it_expires(
    lab: Lab, tmp_path: Path, with_jti: bool
) -> None:
    async with platform_issuer(tmp_path, "kubernetes") as cluster:
        reread = trust("pod-token", "cluster", SERVICE_ACCOUNT, max_lifetime="1h",
                       replay="reuse")
        # No clock tolerance: the token's own exp is when reuse ends.
        live = await lab.start({"cluster": declared(cluster)},
                               {"deploy-api": client(reread, clock_skew="0s")})
        expires = time.time() + 1.0  # room for three requests on a loaded machine
        token = cluster.kubernetes_token(ISSUER, with_jti=with_jti, exp=expires)
        first = await accepted(live, token)
        again = await accepted(live, token)
        assert first["jti_hash"] == again["jti_hash"]
        if with_jti:  # another token carrying the same jti is no reuse
            other = cluster.kubernetes_token(ISSUER, jti=claims_of(token)["jti"], exp=expires,
                                             pod="runner-other")
            assert other != token
            await refused(live, other, "replayed")
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
        await refused(live, token, "expired")
        assert len(live.backend.seen) == 2


async def test_spiffe_jwt_svids_are_verified_with_the_trust_bundle(
    lab: Lab, tmp_path: Path
) -> None:
    async with platform_issuer(tmp_path, "spiffe", x509_authority=True) as mesh:
        assert all("alg" not in key for key in mesh.published_jwks()["keys"])
        svid = trust("mesh-api", "mesh", SPIFFE_ID, replay="reuse")  # SVIDs carry no jti
        live = await lab.start({"mesh": declared(mesh)}, {"mesh-api": client(svid)})
        for assertion_type in (SPIFFE_ASSERTION_TYPE, SPIFFE_ASSERTION_TYPE.replace(
                "jwt-spiffe", "jwt-bearer")):
            line = await accepted(live, mesh.spiffe_token(ISSUER),
                                  assertion_type=assertion_type)
            assert (line["client"], line["method"], line["trust"], line["issuer"],
                    line["subject"]) == ("mesh-api", "federated", "mesh-api", "mesh", SPIFFE_ID)
        await accepted(live, mesh.spiffe_token(ISSUER), client_id="mesh-api",
                       assertion_type=SPIFFE_ASSERTION_TYPE)
        other_domain = mesh.spiffe_token(ISSUER, trust_domain="example.net")
        await refused(live, other_domain, "unknown_issuer", assertion_type=SPIFFE_ASSERTION_TYPE)
        other_workload = mesh.spiffe_token(ISSUER, path="/ns/prod/sa/billing")
        await refused(live, other_workload, "subject_mismatch", client_id="mesh-api",
                      assertion_type=SPIFFE_ASSERTION_TYPE)
        await refused(live, mesh.spiffe_token([ISSUER, "https://rp.example.net"]),
                      "bad_audience", client_id="mesh-api", assertion_type=SPIFFE_ASSERTION_TYPE)
        assert mesh.jwks_fetches == 1


async def test_a_jwt_svid_naming_another_issuer_is_not_the_trust_domains(
    lab: Lab, tmp_path: Path
) -> None:
    async with platform_issuer(tmp_path, "spiffe") as mesh:
        svid = trust("mesh-api", "mesh", SPIFFE_ID, replay="reuse")
        named = {**declared(mesh), "issuer": mesh.issuer}
        live = await lab.start({"mesh": named}, {"mesh-api": client(svid)})
        await accepted(live, mesh.spiffe_token(ISSUER), assertion_type=SPIFFE_ASSERTION_TYPE)
        await accepted(live, mesh.spiffe_token(ISSUER, with_iss=True),
                       assertion_type=SPIFFE_ASSERTION_TYPE)
        # Signed with the bundle's key, in the trust domain, but it says another issuer made it.
        foreign = mesh.mint(spiffe_claims("https://other-issuer.example", ISSUER, with_iss=True))
        await refused(live, foreign, "unknown_issuer", client_id="mesh-api",
                      assertion_type=SPIFFE_ASSERTION_TYPE)
