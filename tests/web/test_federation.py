"""Workload identity federation end to end: GitHub Actions tokens through the running gateway.

A real https issuer (tests/support/platform_issuer.py) serves discovery and keys over
loopback; the gateway fetches them, takes the platform's tokens as client assertions and
forwards with each client's backend credential. The harness here (``Lab``, ``Live``,
``declared``, ``trust``, ``client``, ``refused``) serves the other test_federation_*.py
modules too.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from gateway.config.loading import load_settings
from gateway.core.attempt import jti_digest
from gateway.web.app import Gateway, create_gateway
from tests.conftest import ASSERTION_TYPE, ISSUER, TOKEN_PATH, Backend, GatewayStarter
from tests.support.platform_claims import github_claims
from tests.support.platform_issuer import DISCOVERY_PATH, OMIT, PlatformIssuer
from tests.support.tokens import NOW

SECRET_ENV: Final = "FEDERATION_BACKEND_SECRET"
BACKEND_SECRET: Final = "federation-backend-secret-for-tests-only"  # test-only fixture value
ENV: Final = {SECRET_ENV: BACKEND_SECRET}
_SECRET_MARK: Final = "<the backend secret from the environment>"
_ROOMY: Final = {"rate": 1000, "burst": 100000}  # failure brakes out of the way
SETTLE_SECONDS: Final = 5.0
REFUSED_BODY: Final = {"error": "invalid_client",
                       "error_description": "Client authentication failed."}
# Reasons a trust gives once it was evaluated on a verified token (counted as a mismatch).
TRUST_REASONS: Final = frozenset({"subject_mismatch", "claim_mismatch", "bad_audience",
                                  "lifetime_too_long", "missing_jti"})
GHA_SUBJECT: Final = "repo:acme@1234/api@5678:environment:production"


# -- the harness ------------------------------------------------------------------------

def declared(issuer: PlatformIssuer, **changes: Any) -> dict[str, Any]:
    """The federation.issuers entry of a running test issuer: its CA, loopback allowed."""
    entry: dict[str, Any] = {"algorithms": [issuer.alg], "preset": issuer.kind,
                             "ca_file": issuer.ca_file, "allow_private_networks": True}
    if issuer.kind == "spiffe":
        entry.update(trust_domain=issuer.trust_domain, bundle_endpoint=issuer.jwks_uri)
    else:
        entry.update(issuer=issuer.issuer, discovery=True)
    return {**entry, **changes}


def trust(name: str, issuer: str, subject: str | None = None, **rules: Any) -> dict[str, Any]:
    """A federated trust with this gateway's issuer as its audience, unless ``rules`` say."""
    entry: dict[str, Any] = {"name": name, "issuer": issuer, "audience": ISSUER, **rules}
    if subject is not None:
        entry["subject"] = subject
    return entry


def client(*trusts: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A client authenticating to the backend with client_secret_basic (secret from !env)."""
    return {"backend_auth": {"method": "client_secret_basic", "secret": _SECRET_MARK},
            "federated": list(trusts), **settings}


def config_text(backend_url: str, issuers: Mapping[str, Any], clients: Mapping[str, Any],
                policy: Mapping[str, Any]) -> str:
    """The config file: JSON (which YAML reads) with the secret as ``!env``."""
    document = {
        "limits": {"failures_per_client": _ROOMY, "failures_per_address": _ROOMY},
        "issuer": ISSUER,
        "backend": {"url": backend_url, "timeout": "1s"},
        "endpoints": [TOKEN_PATH],
        "policy": {"algorithms": ["PS256", "ES256", "RS256"], "max_lifetime": "300s",
                   "clock_skew": "15s", **policy},
        "federation": {"issuers": dict(issuers)},
        "clients": dict(clients),
    }
    return json.dumps(document, indent=1).replace(json.dumps(_SECRET_MARK), f"!env {SECRET_ENV}")


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def basic(client_id: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{BACKEND_SECRET}".encode()).decode()


@dataclass
class Live:
    """A running gateway from a config file, its audit lines, metrics and backend."""

    gateway: Gateway
    url: str
    audit: io.StringIO
    backend: Backend
    path: Path

    async def post(self, assertion: str, *, client_id: str | None = None,
                   assertion_type: str = ASSERTION_TYPE) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": "client_credentials", "client_assertion_type": assertion_type,
                "client_assertion": assertion}
        if client_id is not None:
            form["client_id"] = client_id
        async with aiohttp.ClientSession() as session, session.post(
                self.url + TOKEN_PATH, data=form) as response:
            return response.status, dict(await response.json())

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        return [line for line in lines if "event" not in line]  # decisions, not key events

    def last_audit(self) -> dict[str, Any]:
        return self.audit_lines()[-1]

    def metric(self, name: str, **labels: str) -> float:
        self.gateway.metrics.flush()  # as a scrape of /metrics does
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def decisions(self, client_id: str, trust_name: str, mode: str = "enforce",
                  ) -> tuple[float, float]:
        """(match, mismatch) counts of one trust in pkjwt_federation_decisions_total."""
        match, mismatch = (
            self.metric("pkjwt_federation_decisions_total", client=client_id,
                        trust=trust_name, mode=mode, result=result)
            for result in ("match", "mismatch"))
        return match, mismatch

    async def settled(self) -> None:
        """Wait until every key source has fetched (and holds) its keys."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while not self.gateway.runtime.keys_settled():
            assert time.monotonic() < deadline, "the first key fetches did not settle"
            await asyncio.sleep(0.01)
        assert all(source.ready() for source in self.gateway.runtime.sources())

    async def reload(self, text: str) -> None:
        self.path.write_text(text)
        await self.gateway.reload(load_settings(self.path, env=ENV))
        await self.settled()


class Lab:
    """Starts gateways in front of the test backend from issuers and clients."""

    def __init__(self, backend: Backend, tmp_path: Path, gateway_server: GatewayStarter) -> None:
        self.backend, self.tmp_path, self.gateway_server = backend, tmp_path, gateway_server

    def config(self, issuers: Mapping[str, Any], clients: Mapping[str, Any],
               **policy: Any) -> str:
        return config_text(self.backend.url, issuers, clients, policy)

    async def start(self, issuers: Mapping[str, Any], clients: Mapping[str, Any],
                    **policy: Any) -> Live:
        """A gateway for these settings (``ca_file`` is read at load: hence a real file),
        once its issuers' keys are fetched."""
        path = self.tmp_path / "gateway.yaml"
        path.write_text(self.config(issuers, clients, **policy))
        audit = io.StringIO()
        gateway = create_gateway(load_settings(path, env=ENV), audit_stream=audit,
                                 config_path=path)
        server = await self.gateway_server(gateway)
        live = Live(gateway, str(server.make_url("")).rstrip("/"), audit, self.backend, path)
        await live.settled()
        return live


async def accepted(live: Live, assertion: str, **form: Any) -> dict[str, Any]:
    """Send ``assertion``: it must be forwarded and answered; returns its audit line."""
    status, body = await live.post(assertion, **form)
    line = live.last_audit()
    assert (status, line["result"], line["reason"]) == (200, "accepted", "ok"), line
    assert body["token_type"] == "Bearer"
    return line


async def refused(live: Live, assertion: str, reason: str, **form: Any) -> dict[str, Any]:
    """Send ``assertion``: 401 invalid_client for ``reason``, the backend sees nothing.
    Returns its audit line."""
    forwarded = len(live.backend.seen)
    status, body = await live.post(assertion, **form)
    line = live.last_audit()
    assert (status, body, line["result"], line["reason"]) == (
        401, REFUSED_BODY, "rejected", reason), line
    assert len(live.backend.seen) == forwarded, "a refused request reached the backend"
    return line


# -- GitHub Actions ---------------------------------------------------------------------

PRODUCTION: Final = trust("gha-production", "github", GHA_SUBJECT,
                          claims={"repository_owner_id": "1234", "event_name": ["push"]},
                          max_lifetime="10m", replay="single_use", mode="enforce")
# A name-based subject (a repository from before immutable subjects), pinned by its ids.
STAGING: Final = trust("gha-staging", "github", "repo:acme/api:environment:staging",
                       claims={"repository_owner_id": "1234", "repository_id": "5678"})
BRANCHES: Final = trust("gha-branches", "github", subject_pattern="repo:acme/app:ref:refs/heads/*",
                        claims={"repository_owner_id": "1234", "event_name": ["push"]})
TRUST_OF: Final = {"deploy-api": "gha-production", "legacy-api": "gha-staging",
                   "app-ci": "gha-branches"}


async def start_github(lab: Lab, github: PlatformIssuer) -> Live:
    return await lab.start({"github": declared(github)}, {
        "deploy-api": client(PRODUCTION), "legacy-api": client(STAGING),
        "app-ci": client(BRANCHES)})


async def test_a_github_token_is_exchanged_for_the_backend_credential(
    lab: Lab, github: PlatformIssuer, backend: Backend
) -> None:
    live = await start_github(lab, github)
    assert [asked.path for asked in github.asked] == [DISCOVERY_PATH, github.jwks_path]
    token = github.github_token(ISSUER, environment="production")
    status, body = await live.post(token)  # no client_id: the exact subject names one client
    assert (status, body["access_token"]) == (200, "at-1")
    (seen,) = backend.seen
    assert seen.headers["Authorization"] == basic("deploy-api")
    assert seen.form() == [("grant_type", "client_credentials")]
    assert token not in seen.body.decode() and token not in str(dict(seen.headers))
    jti = claims_of(token)["jti"]
    line = live.last_audit()
    assert {name: line.get(name) for name in (
        "result", "reason", "client", "method", "trust", "issuer", "subject", "kid", "alg",
        "key_thumbprint", "jti_hash")} == {
        "result": "accepted", "reason": "ok", "client": "deploy-api", "method": "federated",
        "trust": "gha-production", "issuer": "github", "subject": GHA_SUBJECT,
        "kid": github.current_kid, "alg": "RS256",
        "key_thumbprint": github.current.private_key.thumbprint(),
        "jti_hash": jti_digest("deploy-api", jti)}
    assert token not in live.audit.getvalue() and jti not in live.audit.getvalue()
    assert live.metric("pkjwt_client_auth_total", client="deploy-api", endpoint=TOKEN_PATH,
                       result="accepted", reason="ok", method="federated") == 1
    assert live.decisions("deploy-api", "gha-production") == (1, 0)
    assert github.jwks_fetches == 1


async def test_a_single_use_token_is_accepted_once(lab: Lab, github: PlatformIssuer) -> None:
    live = await start_github(lab, github)
    token = github.github_token(ISSUER, environment="production")
    await accepted(live, token)
    line = await refused(live, token, "replayed")
    assert (line["method"], line["trust"], line["client"]) == (
        "federated", "gha-production", "deploy-api")
    await refused(live, token, "replayed", client_id="deploy-api")
    assert live.metric("pkjwt_client_auth_total", client="deploy-api", endpoint=TOKEN_PATH,
                       result="rejected", reason="replayed", method="federated") == 2


@pytest.mark.parametrize(("client_id", "shape"), [
    pytest.param("deploy-api", {"environment": "production"}, id="environment"),
    pytest.param("legacy-api", {"immutable": False, "environment": "staging"},
                 id="name-subject-pinned-by-ids"),
    pytest.param("app-ci", {"immutable": False, "repo": "app", "repo_id": "4242",
                            "ref": "refs/heads/feature-1"}, id="branch-pattern"),
])
async def test_each_trusted_identity_is_accepted(
    lab: Lab, github: PlatformIssuer, client_id: str, shape: dict[str, Any]
) -> None:
    live = await start_github(lab, github)
    line = await accepted(live, github.github_token(ISSUER, **shape), client_id=client_id)
    assert (line["client"], line["trust"]) == (client_id, TRUST_OF[client_id])


OTHER_OWNER: Final = {"owner": "evil", "owner_id": "6666", "repo_id": "9999",
                      "environment": "production"}


@pytest.mark.parametrize(("client_id", "shape", "reason"), [
    pytest.param("deploy-api", OTHER_OWNER, "subject_mismatch", id="another-owner"),
    pytest.param(None, OTHER_OWNER, "no_trust", id="another-owner-without-client-id"),
    # The owner and the repository were renamed; someone recreated both names.
    pytest.param("legacy-api", {"immutable": False, "owner_id": "7777", "repo_id": "8888",
                                "environment": "staging"}, "claim_mismatch",
                 id="renamed-and-recreated-repository"),
    pytest.param("app-ci", {"immutable": False, "repo": "app-evil", "repo_id": "4243"},
                 "subject_mismatch", id="sibling-repository"),
    pytest.param("app-ci", {"immutable": False, "repo": "app", "repo_id": "4242",
                            "event_name": "pull_request", "ref": "refs/pull/7/merge"},
                 "subject_mismatch", id="fork-pull-request"),
    # Its subject names the base branch: only the pinned event_name stops it.
    pytest.param("app-ci", {"immutable": False, "repo": "app", "repo_id": "4242",
                            "event_name": "pull_request_target"}, "claim_mismatch",
                 id="pull-request-target"),
    pytest.param("deploy-api", {"environment": "production", "event_name": "workflow_dispatch"},
                 "claim_mismatch", id="event-not-pinned"),
    pytest.param("deploy-api", {"aud": None, "environment": "production"}, "bad_audience",
                 id="platform-default-audience"),
    pytest.param("deploy-api", {"aud": [ISSUER, "https://rp.example.net"],
                                "environment": "production"}, "bad_audience",
                 id="multi-audience"),
    pytest.param("deploy-api", {"aud": "https://rp.example.net", "environment": "production"},
                 "bad_audience", id="another-audience"),
    pytest.param("deploy-api", {"environment": "production", "lifetime": 3600},
                 "lifetime_too_long", id="lifetime-too-long"),
    pytest.param("deploy-api", {"environment": "production", "jti": OMIT}, "missing_jti",
                 id="missing-jti"),
    pytest.param("deploy-api", {"environment": "production", "iat": OMIT}, "missing_iat",
                 id="missing-iat"),
    pytest.param("deploy-api", {"environment": "production", "now": NOW}, "expired",
                 id="expired"),
    pytest.param("deploy-api", {"environment": "production", "header": {"alg": "PS256"}},
                 "alg_not_allowed", id="alg-not-allowed"),
    # An access token or a logout token of the same issuer is not a workload's identity.
    pytest.param("deploy-api", {"environment": "production", "header": {"typ": "at+jwt"}},
                 "bad_typ", id="typ-access-token"),
])
async def test_tokens_of_other_identities_are_refused(
    lab: Lab, github: PlatformIssuer, client_id: str | None, shape: dict[str, Any],
    reason: str,
) -> None:
    live = await start_github(lab, github)
    token = github.github_token(**{"aud": ISSUER, **shape})
    line = await refused(live, token, reason, client_id=client_id)
    assert (line["method"], line["issuer"], line["subject"]) == (
        "federated", "github", claims_of(token)["sub"])
    assert "trust" not in line
    if client_id is not None:
        evaluated = reason in TRUST_REASONS
        assert live.decisions(client_id, TRUST_OF[client_id]) == (0, 1 if evaluated else 0)
        assert live.metric("pkjwt_client_auth_total", client=client_id, endpoint=TOKEN_PATH,
                           result="rejected", reason=reason, method="federated") == 1


@pytest.mark.parametrize("lookalike", [
    pytest.param(lambda issuer: issuer + "/", id="trailing-slash"),
    pytest.param(str.upper, id="upper-case"),
    pytest.param(lambda issuer: issuer + "/acme", id="enterprise-slug"),
])
@pytest.mark.parametrize("client_id", [None, "deploy-api"], ids=["no-client-id", "client-id"])
async def test_issuer_lookalikes_are_unknown_and_never_fetched(
    lab: Lab, github: PlatformIssuer, lookalike: Callable[[str], str], client_id: str | None
) -> None:
    live = await start_github(lab, github)
    asked = len(github.asked)
    iss = lookalike(github.issuer)
    assert iss != github.issuer
    token = github.mint(github_claims(iss, ISSUER, environment="production"))
    await refused(live, token, "unknown_issuer", client_id=client_id)
    assert len(github.asked) == asked


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
async def test_headers_that_bring_their_own_keys_are_forbidden(
    lab: Lab, github: PlatformIssuer, member: str
) -> None:
    live = await start_github(lab, github)
    asked = len(github.asked)
    outsider = github.outsider()
    value = {"jku": github.jwks_uri, "x5u": github.origin + "/signing.pem",
             "jwk": outsider.public_jwk, "x5c": github.current.public_jwk["x5c"]}[member]
    key = github.current if member == "x5c" else outsider
    token = github.github_token(ISSUER, environment="production", header={member: value},
                                key=key)
    await refused(live, token, "forbidden_header", client_id="deploy-api")
    assert len(github.asked) == asked


@pytest.mark.parametrize("sub", [
    pytest.param(1234, id="number"),
    pytest.param([GHA_SUBJECT], id="array-of-the-subject"),
    pytest.param(OMIT, id="missing"),
])
async def test_a_subject_that_is_not_a_string_is_refused(
    lab: Lab, github: PlatformIssuer, sub: object
) -> None:
    live = await start_github(lab, github)
    token = github.github_token(ISSUER, environment="production", sub=sub)
    line = await refused(live, token, "bad_subject", client_id="deploy-api")
    assert "subject" not in line and "trust" not in line
    assert live.decisions("deploy-api", "gha-production") == (0, 0)


@pytest.mark.parametrize("aud", [
    pytest.param(42, id="number"),
    pytest.param({"aud": ISSUER}, id="object"),
    pytest.param([42], id="array-of-a-number"),
    pytest.param([], id="empty-array"),
    pytest.param(["https://rp.example.net", ISSUER], id="two-audiences"),
])
async def test_any_audience_is_still_one_string(
    lab: Lab, github: PlatformIssuer, aud: Any
) -> None:
    anywhere = trust("gha-anywhere", "github", GHA_SUBJECT, audience=None,
                     allow_any_audience=True, claims={"repository_owner_id": "1234"})
    live = await lab.start({"github": declared(github)}, {"deploy-api": client(anywhere)})
    await accepted(live, github.github_token("https://rp.example.net", environment="production"))
    token = github.github_token(environment="production", aud=aud)
    await refused(live, token, "bad_audience", client_id="deploy-api")


@pytest.mark.parametrize("order", [(BRANCHES, PRODUCTION), (PRODUCTION, BRANCHES)],
                         ids=["mismatch-first", "mismatch-last"])
async def test_the_refusal_names_the_trust_whose_subject_matched(
    lab: Lab, github: PlatformIssuer, order: tuple[dict[str, Any], ...]
) -> None:
    live = await lab.start({"github": declared(github)}, {"deploy-api": client(*order)})
    # gha-production's subject, but an event it does not pin; gha-branches' subject differs.
    token = github.github_token(ISSUER, environment="production", event_name="workflow_dispatch")
    await refused(live, token, "claim_mismatch", client_id="deploy-api")
    assert live.decisions("deploy-api", "gha-production") == (0, 1)
    assert live.decisions("deploy-api", "gha-branches") == (0, 1)
