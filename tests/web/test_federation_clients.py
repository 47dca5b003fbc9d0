"""Which client a federated token authenticates: ambiguity, shadow trusts, own keys beside."""

from __future__ import annotations

import time

from tests.conftest import ISSUER, TOKEN_PATH, Backend
from tests.support.platform_claims import github_claims
from tests.support.platform_issuer import PlatformIssuer
from tests.support.tokens import make_signer, valid_claims
from tests.web.test_federation import (
    GHA_SUBJECT,
    PRODUCTION,
    Lab,
    accepted,
    basic,
    client,
    declared,
    refused,
    trust,
)


async def test_an_identity_two_clients_trust_needs_client_id_and_is_used_once(
    lab: Lab, github: PlatformIssuer, backend: Backend
) -> None:
    live = await lab.start({"github": declared(github)}, {
        "deploy-api": client(PRODUCTION), "deploy-api-next": client(PRODUCTION)})
    token = github.github_token(ISSUER, environment="production")
    line = await refused(live, token, "ambiguous_identity")
    assert (line["method"], line["issuer"], line["subject"]) == (
        "federated", "github", GHA_SUBJECT)
    line = await accepted(live, token, client_id="deploy-api-next")
    assert (line["client"], line["trust"]) == ("deploy-api-next", "gha-production")
    assert backend.seen[-1].headers["Authorization"] == basic("deploy-api-next")
    # single_use holds across clients: the token is spent for the other one too.
    await refused(live, token, "replayed", client_id="deploy-api")
    assert len(backend.seen) == 1


async def test_shadow_trusts_are_counted_but_never_decide(
    lab: Lab, github: PlatformIssuer
) -> None:
    candidate = trust("gha-branches", "github",
                      subject_pattern="repo:acme@1234/api@5678:ref:refs/heads/*",
                      claims={"event_name": ["push"]}, mode="shadow")
    live = await lab.start({"github": declared(github)},
                           {"deploy-api": client(PRODUCTION, candidate)})
    # The enforced trust accepts what the shadow one would refuse ...
    line = await accepted(live, github.github_token(ISSUER, environment="production"))
    assert line["trust"] == "gha-production"
    # ... and refuses what the shadow one would accept.
    await refused(live, github.github_token(ISSUER), "subject_mismatch", client_id="deploy-api")
    await refused(live, github.github_token(ISSUER), "subject_mismatch", client_id="deploy-api")
    assert live.decisions("deploy-api", "gha-production") == (1, 2)
    assert live.decisions("deploy-api", "gha-branches", mode="shadow") == (2, 1)
    assert live.decisions("deploy-api", "gha-branches") == (0, 0)  # never as enforce
    # A token whose signature fails is evaluated by no trust.
    await refused(live, github.github_token(ISSUER, key=github.outsider(kid=github.current_kid)),
                  "bad_signature", client_id="deploy-api")
    assert live.decisions("deploy-api", "gha-production") == (1, 2)
    assert live.decisions("deploy-api", "gha-branches", mode="shadow") == (2, 1)


async def test_a_client_with_own_keys_and_a_trust_never_crosses_them(
    lab: Lab, github: PlatformIssuer
) -> None:
    own = make_signer("RS256", kid="hybrid-own", slot=7)  # the same alg as the platform's
    live = await lab.start({"github": declared(github)}, {
        "hybrid": client(PRODUCTION, jwks={"keys": [own.public_jwk]})})
    line = await accepted(live, own.assertion("hybrid", ISSUER, now=time.time()))
    assert (line["client"], line["method"], line["kid"]) == ("hybrid", "private_key_jwt",
                                                            "hybrid-own")
    assert "trust" not in line and "issuer" not in line
    line = await accepted(live, github.github_token(ISSUER, environment="production"))
    assert (line["client"], line["method"], line["trust"]) == ("hybrid", "federated",
                                                              "gha-production")
    # A platform-shaped token signed with the client's own key, under either kid ...
    platform_claims = github_claims(github.issuer, ISSUER, environment="production")
    for kid, reason in (("hybrid-own", "no_matching_key"),
                        (github.current_kid, "bad_signature")):
        forged = github.mint(platform_claims, key=own.with_jwk(kid=kid))
        line = await refused(live, forged, reason, client_id="hybrid")
        assert line["method"] == "federated"
    # ... and the client's own assertion signed with the platform's key.
    forged = github.mint(valid_claims("hybrid", ISSUER, now=time.time()))
    await refused(live, forged, "no_matching_key", client_id="hybrid")
    await refused(live, forged, "no_matching_key")
    assert live.metric("pkjwt_client_auth_total", client="hybrid", endpoint=TOKEN_PATH,
                       result="accepted", reason="ok", method="private_key_jwt") == 1
    assert live.metric("pkjwt_client_auth_total", client="hybrid", endpoint=TOKEN_PATH,
                       result="accepted", reason="ok", method="federated") == 1

