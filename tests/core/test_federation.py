"""Federated trusts in the authenticator, from the attacker's side: real keys, no server."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from gateway.core.authenticator import Approval, Authenticator, Brakes, TokenRequest
from gateway.core.backend_auth import BackendCredential
from gateway.core.brakes import FailureLimiter
from gateway.core.claim_rules import claim_requirement
from gateway.core.clients import ClientRuntime
from gateway.core.credentials import RegisteredKeys
from gateway.core.errors import GatewayError, InvalidClient, InvalidRequest
from gateway.core.federation import (
    Federation,
    FederationIssuer,
    IssuerTrusts,
    Trust,
)
from gateway.core.form import ASSERTION_TYPE, SPIFFE_ASSERTION_TYPE
from gateway.core.keyset import KeySet
from gateway.core.keysource import KeySourceStatus, StaticKeySource
from gateway.core.reasons import Reason
from gateway.core.replay import MemoryReplayLedger
from gateway.core.subject_pattern import compile_subject_pattern
from tests.core.test_authenticator import ENDPOINT, FORM, FakeClock, policy
from tests.support.tokens import AUDIENCE, NOW, OMIT, Signer, make_signer, merge

GITHUB = "https://token.actions.githubusercontent.com"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "repo:acme@1234/api@5678:environment:production"
SKEW = 15.0


class CountingSource(StaticKeySource):
    """Static keys that count how often they were asked for (a fetch would be one)."""

    def __init__(self, keyset: KeySet) -> None:
        super().__init__(keyset, "jwks")
        self.asked = 0
        self.refreshed = 0

    def current(self) -> KeySet:
        self.asked += 1
        return super().current()

    async def refresh_for_unknown_kid(self) -> KeySet:
        self.refreshed += 1
        return super().current()

    def status(self) -> KeySourceStatus:
        return super().status()


def github_claims(subject: str = SUBJECT, **overrides: Any) -> dict[str, Any]:
    claims = {"iss": GITHUB, "sub": subject, "aud": AUDIENCE, "iat": int(NOW) - 5,
              "nbf": int(NOW) - 10, "exp": int(NOW) + 295, "jti": secrets.token_hex(16),
              "repository": "acme/api", "repository_id": "5678", "repository_owner": "acme",
              "repository_owner_id": "1234", "event_name": "push", "environment": "production",
              "runner_environment": "github-hosted", "ref": "refs/heads/main"}
    return merge(claims, overrides)


def trust(name: str = "gha", *, subject: str | None = SUBJECT, pattern: str | None = None,
          audience: str | None = AUDIENCE, claims: Mapping[str, tuple[str, ...]] | None = None,
          max_lifetime: float = 600.0, reuse: bool = False, shadow: bool = False) -> Trust:
    return Trust(
        name=name, audience=audience, subject=None if pattern else subject,
        pattern=compile_subject_pattern(pattern) if pattern else None,
        claims=tuple(claim_requirement(k, frozenset(v)) for k, v in (claims or {}).items()),
        max_lifetime=max_lifetime, reuse=reuse, shadow=shadow)


@dataclass
class Platform:
    """One declared issuer and its signing key (the platform's, not the client's)."""

    name: str
    signer: Signer
    issuer: FederationIssuer

    def token(self, claims: Mapping[str, Any], **header: Any) -> str:
        return self.signer.sign(self.signer.header(typ="JWT", **header), claims)


def platform(name: str = "github", iss: str | None = GITHUB, *, slot: int = 0,
             trust_domain: str | None = None, algorithms: tuple[str, ...] = ("RS256",)
             ) -> Platform:
    signer = make_signer(algorithms[0], slot=slot, kid=f"{name}-{slot}")
    source = CountingSource(signer.keyset())
    return Platform(name, signer, FederationIssuer(name, iss, trust_domain,
                                                   frozenset(algorithms), source))


@dataclass
class World:
    clients: dict[str, ClientRuntime] = field(default_factory=dict)
    issuers: list[FederationIssuer] = field(default_factory=list)
    ledger: MemoryReplayLedger = field(default_factory=lambda: MemoryReplayLedger(1000))
    clock: FakeClock = field(default_factory=FakeClock)

    def add(self, client_id: str, issuer: FederationIssuer, *trusts: Trust,
            own: RegisteredKeys | None = None) -> None:
        shadows = tuple(t for t in trusts if t.shadow)
        credential = IssuerTrusts(client_id, issuer, tuple(t for t in trusts if not t.shadow),
                                  shadows, (), SKEW)
        self.clients[client_id] = ClientRuntime(
            client_id, (own,) if own else (),
            BackendCredential(client_id, "client_secret_basic", "s3cret"),
            federated={issuer.name: credential})
        if issuer not in self.issuers:
            self.issuers.append(issuer)

    @property
    def federation(self) -> Federation:
        exact: dict[tuple[str, str], tuple[str, ...]] = {}
        for client in self.clients.values():
            for name, credential in client.federated.items():
                for t in credential.enforced:
                    if t.subject is not None:
                        exact[(name, t.subject)] = (*exact.get((name, t.subject), ()),
                                                    client.client_id)
        return Federation(
            by_iss={i.issuer: i for i in self.issuers if i.issuer},
            by_trust_domain={i.trust_domain: i for i in self.issuers if i.trust_domain},
            exact=exact)

    async def run(self, assertion: str, client_id: str | None = "deploy-api", *,
                  assertion_type: str = ASSERTION_TYPE) -> Approval:
        fields = {"grant_type": "client_credentials",
                  "client_assertion_type": quote(assertion_type, safe=""),
                  "client_assertion": assertion}
        if client_id is not None:
            fields["client_id"] = client_id
        payload = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
        authenticator = Authenticator(
            self.ledger, Brakes(FailureLimiter(1.0, 100, 100), FailureLimiter(1.0, 100, 100)),
            max_body=65536, clock=self.clock)
        return await authenticator.authenticate(
            TokenRequest(ENDPOINT, payload, FORM, None, "", "192.0.2.1"), self.clients,
            self.federation)

    async def refused(self, assertion: str, client_id: str | None = "deploy-api",
                      **options: Any) -> GatewayError:
        with pytest.raises(GatewayError) as caught:
            await self.run(assertion, client_id, **options)
        return caught.value


@pytest.fixture
def github() -> Platform:
    return platform()


@pytest.fixture
def world(github: Platform) -> World:
    world = World()
    world.add("deploy-api", github.issuer, trust())
    return world


async def test_a_platform_token_authenticates_the_client_that_trusts_it(
    world: World, github: Platform
) -> None:
    approval = await world.run(github.token(github_claims()))
    attempt = approval.attempt
    assert approval.client.client_id == "deploy-api"
    assert (attempt.method, attempt.issuer, attempt.trust) == ("federated", "github", "gha")
    assert attempt.subject == SUBJECT
    assert attempt.key_thumbprint == github.signer.keyset().keys[0].thumbprint
    assert [(d.trust, d.mode, d.result) for d in attempt.decisions] == [
        ("gha", "enforce", "match")]


async def test_without_client_id_an_exact_subject_names_the_client(
    world: World, github: Platform
) -> None:
    approval = await world.run(github.token(github_claims()), client_id=None)
    assert approval.client.client_id == "deploy-api"


async def test_one_identity_trusted_by_two_clients_needs_client_id(
    world: World, github: Platform
) -> None:
    world.add("release-api", github.issuer, trust("gha-release"))
    refusal = await world.refused(github.token(github_claims()), client_id=None)
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.AMBIGUOUS_IDENTITY)
    # Named, each of them may use it (one token once: the second is a replay).
    assert (await world.run(github.token(github_claims()), "release-api")).attempt.trust == \
        "gha-release"
    assert (await world.run(github.token(github_claims()))).attempt.trust == "gha"


async def test_a_single_use_token_spent_on_one_client_is_a_replay_on_another(
    world: World, github: Platform
) -> None:
    world.add("release-api", github.issuer, trust("gha-release"))
    token = github.token(github_claims())
    await world.run(token, "deploy-api")
    refusal = await world.refused(token, "release-api")
    assert refusal.reason == Reason.REPLAYED
    assert (await world.refused(token, "deploy-api")).reason == Reason.REPLAYED


@pytest.mark.parametrize("iss", [
    GITHUB + "/", GITHUB.upper(), GITHUB + "/acme-enterprise", "http://token.actions."
    "githubusercontent.com", "https://token.actions.githubusercontent.com.evil.example",
], ids=["trailing-slash", "case", "enterprise-slug", "http", "suffix-host"])
async def test_an_issuer_lookalike_is_unknown_and_nothing_is_fetched(
    world: World, github: Platform, iss: str
) -> None:
    source = github.issuer.source
    assert isinstance(source, CountingSource)
    refusal = await world.refused(github.token(github_claims(iss=iss)))
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.UNKNOWN_ISSUER)
    assert (source.asked, source.refreshed) == (0, 0)
    refusal = await world.refused(github.token(github_claims(iss=iss)), client_id=None)
    assert refusal.reason == Reason.UNKNOWN_ISSUER


@pytest.mark.parametrize(("subject", "claims"), [
    ("repo:evil@999/api@5678:environment:production", {"repository_owner_id": "999"}),
    ("repo:acme@1234/api@9999:environment:production", {"repository_id": "9999"}),
    ("repo:acme@1234/api@5678:environment:staging", {"environment": "staging"}),
    ("repo:acme@1234/api@5678:pull_request", {"event_name": "pull_request"}),
], ids=["other-owner", "recreated-repo", "other-environment", "pull-request"])
async def test_another_identity_is_a_subject_mismatch(
    world: World, github: Platform, subject: str, claims: dict[str, str]
) -> None:
    refusal = await world.refused(github.token(github_claims(subject, **claims)))
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.SUBJECT_MISMATCH)
    assert [(d.trust, d.result) for d in refusal.attempt.decisions] == [("gha", "mismatch")]


async def test_a_renamed_and_recreated_repository_fails_the_owner_id_claim(
    github: Platform
) -> None:
    world = World()
    world.add("deploy-api", github.issuer, trust(
        subject="repo:acme/api:ref:refs/heads/main",
        claims={"repository_owner_id": ("1234",), "repository_id": ("5678",)}))
    same_name = github_claims("repo:acme/api:ref:refs/heads/main", repository_id="7777")
    refusal = await world.refused(github.token(same_name))
    assert refusal.reason == Reason.CLAIM_MISMATCH
    ok = github_claims("repo:acme/api:ref:refs/heads/main")
    assert (await world.run(github.token(ok))).attempt.trust == "gha"


@pytest.mark.parametrize(("subject", "accepted"), [
    ("repo:acme@1234/app@1:ref:refs/heads/main", True),
    ("repo:acme@1234/app@1:ref:refs/heads/feature", True),
    ("repo:acme@1234/app-evil@2:ref:refs/heads/main", False),
    ("repo:acme@1234/app@1:ref:refs/heads/feature/x", False),
    ("repo:acme@1234/app@1:pull_request", False),
    ("repo:acme@1234/app@1:ref:refs/heads/main:extra", False),
], ids=["main", "branch", "sibling-repo", "nested-branch", "pull-request", "colon-suffix"])
async def test_a_pattern_stays_within_its_segment(
    github: Platform, subject: str, accepted: bool
) -> None:
    world = World()
    world.add("deploy-api", github.issuer,
              trust(pattern="repo:acme@1234/app@1:ref:refs/heads/*"))
    token = github.token(github_claims(subject))
    if accepted:
        await world.run(token)
    else:
        assert (await world.refused(token)).reason == Reason.SUBJECT_MISMATCH


@pytest.mark.parametrize("aud", [
    "https://github.com/acme", ["https://github.com/acme"], [AUDIENCE, "https://other.example"],
    [], 42, None,
], ids=["platform-default", "default-in-array", "two-audiences", "empty", "number", "none"])
async def test_an_audience_other_than_the_trusts_is_refused(
    world: World, github: Platform, aud: object
) -> None:
    claims = github_claims(aud=aud) if aud is not None else github_claims(aud=OMIT)
    refusal = await world.refused(github.token(claims))
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.BAD_AUDIENCE)


async def test_a_one_element_audience_array_is_the_audience(world: World, github: Platform) -> None:
    await world.run(github.token(github_claims(aud=[AUDIENCE])))


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk"])
async def test_a_key_named_by_the_token_is_refused(
    world: World, github: Platform, member: str
) -> None:
    value: object = {"kty": "RSA"} if member == "jwk" else "https://attacker.example/keys"
    refusal = await world.refused(github.token(github_claims(), **{member: value}))
    assert refusal.reason == Reason.FORBIDDEN_HEADER


async def test_an_x5c_header_is_refused_on_a_federated_token(
    world: World, github: Platform
) -> None:
    refusal = await world.refused(github.token(github_claims(), x5c=["MIIB"]))
    assert refusal.reason in (Reason.FORBIDDEN_HEADER, Reason.BAD_HEADER)


@pytest.mark.parametrize("typ", ["at+jwt", "client-authentication+jwt", "secevent+jwt"])
async def test_a_platform_token_typed_for_another_purpose_is_refused(
    world: World, github: Platform, typ: str
) -> None:
    token = github.signer.sign(github.signer.header(typ=typ), github_claims())
    refusal = await world.refused(token)
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.BAD_TYP)


@pytest.mark.parametrize("typ", ["jwt", "application/JWT", "JOSE", "application/jose"])
async def test_a_platform_token_typed_jwt_or_jose_is_accepted(
    world: World, github: Platform, typ: str
) -> None:
    await world.run(github.signer.sign(github.signer.header(typ=typ), github_claims()))


async def test_a_token_signed_by_a_key_the_issuer_does_not_publish(
    world: World, github: Platform
) -> None:
    forger = make_signer("RS256", slot=1, kid="github-0")  # the published kid, another key
    refusal = await world.refused(forger.sign(forger.header(typ="JWT"), github_claims()))
    assert isinstance(refusal, InvalidClient) and refusal.reason == Reason.BAD_SIGNATURE
    unknown = make_signer("RS256", slot=1, kid="not-published")
    refusal = await world.refused(unknown.sign(unknown.header(), github_claims()))
    assert refusal.reason == Reason.NO_MATCHING_KEY
    source = github.issuer.source
    assert isinstance(source, CountingSource) and source.refreshed >= 1


async def test_the_clients_own_key_never_verifies_a_federated_token(github: Platform) -> None:
    own = make_signer("RS256", slot=2, kid="own")
    world = World()
    registered = RegisteredKeys("deploy-api", StaticKeySource(own.keyset(), "jwks"),
                                {ENDPOINT: policy("deploy-api",
                                                  algorithms=frozenset({"RS256"}))})
    world.add("deploy-api", github.issuer, trust(), own=registered)
    # The platform's claims signed with the client's own key (kid of the platform's).
    forged = own.sign(own.header(kid="github-0"), github_claims())
    assert (await world.refused(forged)).reason == Reason.BAD_SIGNATURE
    # The client's own assertion signed by the platform's key.
    claims = {"iss": "deploy-api", "sub": "deploy-api", "aud": AUDIENCE, "iat": int(NOW),
              "exp": int(NOW) + 60, "jti": "j1"}
    crossed = github.signer.sign(github.signer.header(kid="own"), claims)
    assert (await world.refused(crossed)).reason == Reason.BAD_SIGNATURE
    # Each the right way round works.
    await world.run(own.sign(own.header(), claims))
    await world.run(github.token(github_claims()))


async def test_a_federated_only_client_has_no_own_assertion(
    world: World, github: Platform
) -> None:
    claims = {"iss": "deploy-api", "sub": "deploy-api", "aud": AUDIENCE, "iat": int(NOW),
              "exp": int(NOW) + 60, "jti": "j1"}
    refusal = await world.refused(github.token(claims))
    assert refusal.reason == Reason.UNKNOWN_ISSUER


async def test_a_client_without_a_trust_in_the_issuer(github: Platform) -> None:
    cluster = platform("prod-cluster", CLUSTER, slot=1)
    world = World()
    world.add("deploy-api", cluster.issuer, trust(subject="system:serviceaccount:ci:deployer"))
    world.issuers.append(github.issuer)
    refusal = await world.refused(github.token(github_claims()))
    assert (refusal.reason, refusal.attempt.client) == (Reason.NO_TRUST, "deploy-api")
    refusal = await world.refused(github.token(github_claims()), client_id=None)
    assert refusal.reason == Reason.NO_TRUST


async def test_a_pattern_trust_is_never_found_without_client_id(github: Platform) -> None:
    world = World()
    world.add("deploy-api", github.issuer, trust(pattern="repo:acme@1234/api@5678:environment:*"))
    refusal = await world.refused(github.token(github_claims()), client_id=None)
    assert refusal.reason == Reason.NO_TRUST
    await world.run(github.token(github_claims()))


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"iat": OMIT}, Reason.MISSING_IAT),
    ({"exp": OMIT}, Reason.MISSING_EXP),
    ({"iat": int(NOW) - 700, "exp": int(NOW) + 10}, Reason.LIFETIME_TOO_LONG),
    ({"iat": int(NOW) - 100, "nbf": OMIT, "exp": int(NOW) - SKEW - 1}, Reason.EXPIRED),
    ({"iat": int(NOW) + 100, "exp": int(NOW) + 200}, Reason.ISSUED_IN_FUTURE),
    ({"jti": OMIT}, Reason.MISSING_JTI),
    ({"jti": ""}, Reason.BAD_JTI),
], ids=["no-iat", "no-exp", "too-long", "expired", "future", "no-jti", "empty-jti"])
async def test_time_and_jti_rules(
    world: World, github: Platform, overrides: dict[str, Any], reason: Reason
) -> None:
    refusal = await world.refused(github.token(github_claims(**overrides)))
    assert (type(refusal), refusal.reason) == (InvalidClient, reason)


async def test_the_trusts_max_lifetime_replaces_the_policys(github: Platform) -> None:
    world = World()
    world.add("deploy-api", github.issuer, trust(max_lifetime=3600.0))
    hour = github_claims(iat=int(NOW) - 5, exp=int(NOW) + 3590)
    await world.run(github.token(hour))
    refusal = await world.refused(github.token(github_claims(iat=int(NOW), exp=int(NOW) + 3700)))
    assert refusal.reason == Reason.LIFETIME_TOO_LONG


def kubernetes_claims(**overrides: Any) -> dict[str, Any]:
    claims = {"iss": CLUSTER, "sub": "system:serviceaccount:ci:deployer", "aud": [AUDIENCE],
              "iat": int(NOW) - 100, "nbf": int(NOW) - 100, "exp": int(NOW) + 3500,
              "kubernetes.io": {"namespace": "ci", "serviceaccount": {
                  "name": "deployer", "uid": "sa-uid-1"}, "pod": {"name": "p", "uid": "pod-1"}}}
    return merge(claims, overrides)


@pytest.fixture
def cluster_world() -> tuple[World, Platform]:
    cluster = platform("prod-cluster", CLUSTER, slot=1)
    world = World()
    world.add("deploy-api", cluster.issuer, trust(
        "k8s", subject="system:serviceaccount:ci:deployer", max_lifetime=3600.0, reuse=True,
        claims={"/kubernetes.io/serviceaccount/uid": ("sa-uid-1",)}))
    return world, cluster


async def test_reuse_accepts_the_same_kubernetes_token_until_it_expires(
    cluster_world: tuple[World, Platform]
) -> None:
    world, cluster = cluster_world
    token = cluster.token(kubernetes_claims(jti="k8s-jti-1"))
    for _ in range(3):
        await world.run(token)
    # Another token carrying the same jti is not the same token.
    other = cluster.token(kubernetes_claims(jti="k8s-jti-1", iat=int(NOW) - 99))
    assert (await world.refused(other)).reason == Reason.REPLAYED
    world.clock.now = NOW + 3500 + SKEW + 1
    assert (await world.refused(token)).reason == Reason.EXPIRED


async def test_reuse_without_jti_is_keyed_by_the_token(
    cluster_world: tuple[World, Platform]
) -> None:
    world, cluster = cluster_world
    token = cluster.token(kubernetes_claims())  # older clusters: no jti
    await world.run(token)
    await world.run(token)


async def test_a_nested_claim_is_checked_by_json_pointer(
    cluster_world: tuple[World, Platform]
) -> None:
    world, cluster = cluster_world
    recreated = kubernetes_claims()
    recreated["kubernetes.io"] = {**recreated["kubernetes.io"],
                                  "serviceaccount": {"name": "deployer", "uid": "sa-uid-2"}}
    assert (await world.refused(cluster.token(recreated))).reason == Reason.CLAIM_MISMATCH


async def test_a_shadow_trust_is_evaluated_and_never_decides(github: Platform) -> None:
    world = World()
    narrower = trust("gha-narrow", claims={"runner_environment": ("self-hosted",)},
                     shadow=True)
    world.add("deploy-api", github.issuer, trust(), narrower)
    approval = await world.run(github.token(github_claims()))
    assert [(d.trust, d.mode, d.result) for d in approval.attempt.decisions] == [
        ("gha", "enforce", "match"), ("gha-narrow", "shadow", "mismatch")]
    assert approval.attempt.trust == "gha"
    # A shadow trust alone authenticates nothing, even when it matches.
    alone = World()
    alone.add("deploy-api", github.issuer, trust("only-shadow", shadow=True))
    refusal = await alone.refused(github.token(github_claims()))
    assert refusal.reason == Reason.NO_TRUST
    assert [(d.trust, d.mode, d.result) for d in refusal.attempt.decisions] == [
        ("only-shadow", "shadow", "match")]


SPIFFE_ID = "spiffe://example.org/ns/prod/sa/api"


def spiffe_claims(**overrides: Any) -> dict[str, Any]:
    return merge({"sub": SPIFFE_ID, "aud": [AUDIENCE], "iat": int(NOW) - 1,
                  "exp": int(NOW) + 299}, overrides)


@pytest.fixture
def mesh_world() -> tuple[World, Platform]:
    mesh = platform("mesh", None, slot=2, trust_domain="example.org",
                    algorithms=("ES256", "RS256"))
    world = World()
    world.add("deploy-api", mesh.issuer, trust("mesh-api", subject=SPIFFE_ID, reuse=True))
    return world, mesh


@pytest.mark.parametrize("assertion_type", [SPIFFE_ASSERTION_TYPE, ASSERTION_TYPE],
                         ids=["jwt-spiffe", "jwt-bearer"])
async def test_a_jwt_svid_is_found_by_its_trust_domain(
    mesh_world: tuple[World, Platform], assertion_type: str
) -> None:
    world, mesh = mesh_world
    token = mesh.signer.sign({"alg": "ES256", "typ": "JOSE"}, spiffe_claims())
    approval = await world.run(token, assertion_type=assertion_type)
    assert (approval.attempt.issuer, approval.attempt.subject) == ("mesh", SPIFFE_ID)
    # Without client_id: the exact SPIFFE ID names the client.
    await world.run(token, client_id=None, assertion_type=assertion_type)


async def test_a_jwt_svid_of_another_trust_domain_is_unknown(
    mesh_world: tuple[World, Platform]
) -> None:
    world, mesh = mesh_world
    other = spiffe_claims(sub="spiffe://example.org.evil/ns/prod/sa/api")
    refusal = await world.refused(mesh.signer.sign({"alg": "ES256"}, other),
                                  assertion_type=SPIFFE_ASSERTION_TYPE)
    assert refusal.reason == Reason.UNKNOWN_ISSUER


async def test_jwt_spiffe_is_only_for_spiffe_issuers(
    world: World, github: Platform
) -> None:
    refusal = await world.refused(github.token(github_claims()),
                                  assertion_type=SPIFFE_ASSERTION_TYPE)
    assert (type(refusal), refusal.reason) == (InvalidRequest, Reason.BAD_ASSERTION_TYPE)


async def test_an_algorithm_outside_the_issuers_list_is_refused(github: Platform) -> None:
    es = platform("github", GITHUB, algorithms=("RS256",))
    world = World()
    world.add("deploy-api", es.issuer, trust())
    forged = github.signer.sign({"alg": "PS256", "kid": "github-0"}, github_claims(),
                                sign_alg="PS256")
    assert (await world.refused(forged)).reason == Reason.ALG_NOT_ALLOWED
