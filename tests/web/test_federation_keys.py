"""Federation issuers' keys in the running gateway: misses, refetches, rotation and reload."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import ISSUER
from tests.support.platform_issuer import PlatformIssuer
from tests.support.tokens import Signer
from tests.web.test_federation import (
    PRODUCTION,
    Lab,
    accepted,
    client,
    declared,
    refused,
    trust,
)

GHA_STAGING = "repo:acme@1234/api@5678:environment:staging"


def _claiming_a_published_kid(github: PlatformIssuer) -> Signer:
    return github.outsider(kid=github.current_kid)


def _unpublished(github: PlatformIssuer) -> str:
    return github.rotate(published=False)  # it signs from now on, but is never served


@pytest.mark.parametrize(("signing_key", "reason"), [
    pytest.param(_claiming_a_published_kid, "bad_signature", id="foreign-key-published-kid"),
    pytest.param(_unpublished, "no_matching_key", id="unpublished-key"),
    pytest.param(lambda github: github.outsider(), "no_matching_key", id="unknown-kid"),
])
async def test_keys_the_issuer_does_not_publish_cost_one_refetch_and_are_refused(
    lab: Lab, github: PlatformIssuer, signing_key: Callable[[PlatformIssuer], str | Signer],
    reason: str,
) -> None:
    live = await lab.start({"github": declared(github)}, {"deploy-api": client(PRODUCTION)})
    fetched = github.jwks_fetches
    key = signing_key(github)
    for _ in range(2):  # the second miss falls within unknown_kid_refresh: no second fetch
        token = github.github_token(ISSUER, environment="production", key=key)
        line = await refused(live, token, reason, client_id="deploy-api")
        assert (line["method"], line["issuer"]) == ("federated", "github")
    assert github.jwks_fetches == fetched + 1
    assert live.decisions("deploy-api", "gha-production") == (0, 0)  # never verified


async def test_a_key_rotated_in_while_running_is_accepted_after_one_refetch(
    lab: Lab, github: PlatformIssuer
) -> None:
    live = await lab.start({"github": declared(github)}, {"deploy-api": client(PRODUCTION)})
    old_kid = github.current_kid
    await accepted(live, github.github_token(ISSUER, environment="production"))
    fetched = github.jwks_fetches
    new_kid = github.rotate()
    line = await accepted(live, github.github_token(ISSUER, environment="production"))
    assert (line["kid"], line["key_thumbprint"]) == (
        new_kid, github.current.private_key.thumbprint())
    assert github.jwks_fetches == fetched + 1
    line = await accepted(live, github.github_token(ISSUER, environment="production",
                                                    key=old_kid))
    assert line["kid"] == old_kid  # still published, and held without asking again
    assert github.jwks_fetches == fetched + 1


async def test_a_reload_keeps_the_keys_of_an_unchanged_issuer(
    lab: Lab, github: PlatformIssuer
) -> None:
    issuers = {"github": declared(github)}
    live = await lab.start(issuers, {"deploy-api": client(PRODUCTION)})
    source = live.gateway.runtime.federation.by_iss[github.issuer].source
    asked = len(github.asked)
    staging = trust("gha-staging", "github", GHA_STAGING,
                    claims={"repository_owner_id": "1234"})
    await live.reload(lab.config(issuers, {"deploy-api": client(PRODUCTION),
                                           "staging-api": client(staging)}))
    assert live.gateway.runtime.federation.by_iss[github.issuer].source is source
    line = await accepted(live, github.github_token(ISSUER, environment="staging"))
    assert line["client"] == "staging-api"
    await accepted(live, github.github_token(ISSUER, environment="production"))
    assert len(github.asked) == asked  # neither the reload nor the requests fetched

    # Changed issuer settings are another source: its keys are fetched anew.
    changed = {"github": declared(github, algorithms=["RS256", "PS256"])}
    await live.reload(lab.config(changed, {"deploy-api": client(PRODUCTION)}))
    assert live.gateway.runtime.federation.by_iss[github.issuer].source is not source
    assert github.jwks_fetches == 2
    await accepted(live, github.github_token(ISSUER, environment="production"))
