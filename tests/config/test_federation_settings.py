"""Federation settings: issuers and trusts, the lints that refuse to load, check's warnings."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config.lint import lint_settings
from gateway.config.loading import load_settings, parse_settings
from gateway.config.settings import Settings, settings_json_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"
GITHUB = "https://token.actions.githubusercontent.com"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://idp.example.com"
TRUST = "clients.deploy-api.federated[0]"

# One trust per issuer that loads and draws no warning.
GOOD_TRUSTS: dict[str, dict[str, Any]] = {
    "github": {"subject": "repo:acme@1234/api@5678:environment:production",
               "claims": {"runner_environment": "github-hosted"}},
    "ghes": {"subject": "repo:acme@1234/api@5678:environment:production",
             "claims": {"runner_environment": "github-hosted"}},
    "gitlab": {"subject": "project_path:acme/api:ref_type:branch:ref:main",
               "claims": {"project_id": "42", "ref_protected": "true"}},
    "cluster": {"subject": "system:serviceaccount:prod:deploy-api", "max_lifetime": "1h"},
    "mesh": {"subject": "spiffe://example.org/ns/prod/sa/deploy-api"},
    "build-farm": {"subject": "build:deploy-api"},
    "lab": {"subject": "build:deploy-api"},
}


def base_config() -> dict[str, Any]:
    return {
        "issuer": AUDIENCE,
        "backend": {"url": "https://legacy.example.com"},
        "endpoints": ["/oauth2/token"],
        "policy": {"algorithms": ["ES256"]},
        "federation": {"issuers": {
            "github": {"issuer": GITHUB, "discovery": True, "algorithms": ["RS256"],
                       "preset": "github"},
            "ghes": {"issuer": "https://ghe.example.com/_services/token", "discovery": True,
                     "preset": "github"},
            "gitlab": {"issuer": "https://gitlab.com", "discovery": True, "preset": "gitlab"},
            "cluster": {"issuer": CLUSTER, "jwks_uri": "https://kubernetes.default.svc/openid/v1/jwks",
                        "allow_private_networks": True, "preset": "kubernetes"},
            "mesh": {"trust_domain": "example.org",
                     "bundle_endpoint": "https://spire.example.org:8443", "preset": "spiffe"},
            "build-farm": {"issuer": "https://ci.example.com",
                           "jwks_uri": "https://ci.example.com/jwks"},
            "lab": {"issuer": "http://ci.lab.example", "jwks_uri": "https://ci.lab.example/jwks"},
        }},
        "clients": {"deploy-api": {"backend_auth": {"method": "none"}, "federated": []}},
    }


def trust(issuer: str, name: str = "t", **changes: Any) -> dict[str, Any]:
    """A trust in `issuer` that passes every check, with `changes` (None removes a key)."""
    entry = {"name": name, "issuer": issuer, "audience": AUDIENCE,
             **copy.deepcopy(GOOD_TRUSTS[issuer])}
    if "subject_pattern" in changes:
        entry.pop("subject")
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def config(*trusts: dict[str, Any], **sections: Any) -> dict[str, Any]:
    data = base_config()
    data["clients"]["deploy-api"]["federated"] = list(trusts)
    for dotted, value in sections.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def load(tmp_path: Path, data: dict[str, Any] | str) -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return load_settings(path, env={})


def problems(tmp_path: Path, data: dict[str, Any] | str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data)
    return caught.value.problems


@pytest.mark.parametrize("issuer", sorted(set(GOOD_TRUSTS) - {"lab"}))
def test_a_careful_trust_loads_without_warnings(tmp_path: Path, issuer: str) -> None:
    settings = load(tmp_path, config(trust(issuer)))
    assert settings.clients["deploy-api"].federated[0].issuer == issuer
    assert lint_settings(settings) == []


WITH_OWNER_ID = {"repository_owner_id": "1234", "runner_environment": "github-hosted"}
# (trust, path under the trust, a fragment of the message, the switch that lifts it)
LINTS = [
    (trust("github", audience=None), "audience", "is not set", "allow_any_audience",
     "no-audience"),
    (trust("mesh", audience=None), "audience", "is not set", "allow_any_audience",
     "no-audience-spiffe"),
    (trust("github", audience="https://github.com/acme"), "audience",
     "platform's default audience", "allow_platform_audience", "github-owner-audience"),
    (trust("github", audience="https://GitHub.com/acme/"), "audience",
     "platform's default audience", "allow_platform_audience", "github-owner-audience-case"),
    (trust("ghes", audience="https://ghe.example.com/acme"), "audience",
     "platform's default audience", "allow_platform_audience", "ghes-owner-audience"),
    (trust("gitlab", audience="sts.amazonaws.com"), "audience", "platform's default audience",
     "allow_platform_audience", "aws-sts-audience"),
    (trust("build-farm", audience="api://AzureADTokenExchange"), "audience",
     "platform's default audience", "allow_platform_audience", "entra-audience"),
    (trust("cluster", audience="https://kubernetes.default.svc"), "audience",
     "platform's default audience", "allow_platform_audience", "kubernetes-api-audience"),
    (trust("cluster", audience=CLUSTER), "audience", "platform's default audience",
     "allow_platform_audience", "kubernetes-issuer-audience"),
    (trust("github", subject="repo:acme/api:environment:production"), "subject",
     "repository_owner_id", "allow_mutable_identity", "github-names-only"),
    (trust("github", subject="repo:acme@1234/api:environment:production"), "subject",
     "repository_owner_id", "allow_mutable_identity", "github-repo-without-id"),
    (trust("github", subject_pattern="repo:acme/api:ref:refs/heads/*"), "subject_pattern",
     "repository_owner_id", "allow_mutable_identity", "github-pattern-names-only"),
    (trust("gitlab", claims={"ref_protected": "true"}), "claims",
     "neither namespace_id nor project_id", "allow_mutable_identity", "gitlab-no-id"),
    (trust("github", subject_pattern="repo:*/api:ref:refs/heads/main", claims=WITH_OWNER_ID),
     "subject_pattern", "no literal owner (OWNER in repo:OWNER/...)", "allow_broad_pattern",
     "github-owner-wildcard"),
    (trust("github", subject_pattern="repo:acme*/api:ref:refs/heads/main",
           claims=WITH_OWNER_ID), "subject_pattern", "no literal owner",
     "allow_broad_pattern", "github-owner-prefix"),
    (trust("github", subject_pattern="repo:ac**/api:ref:refs/heads/main",
           claims=WITH_OWNER_ID), "subject_pattern", "no literal owner",
     "allow_broad_pattern", "github-owner-double-star"),
    (trust("github", subject_pattern="*:ref:refs/heads/main", claims=WITH_OWNER_ID),
     "subject_pattern", "no literal owner", "allow_broad_pattern", "github-no-prefix"),
    (trust("github", subject_pattern="repo:*", claims=WITH_OWNER_ID), "subject_pattern",
     "only wildcards", "allow_broad_pattern", "github-prefix-and-wildcard"),
    (trust("github", subject_pattern="**:*", claims=WITH_OWNER_ID), "subject_pattern",
     "only wildcards", "allow_broad_pattern", "github-only-wildcards"),
    (trust("gitlab", subject_pattern="project_path:*/api:ref_type:branch:ref:main"),
     "subject_pattern", "no literal owner (GROUP in", "allow_broad_pattern",
     "gitlab-group-wildcard"),
    (trust("cluster", subject_pattern="system:serviceaccount:*:deploy-api"), "subject_pattern",
     "no literal owner (NAMESPACE in", "allow_broad_pattern", "kubernetes-namespace-wildcard"),
    (trust("cluster", subject_pattern="system:serviceaccount:*:*",
           claims={"/kubernetes.io/serviceaccount/name": "deploy-api"}), "subject_pattern",
     "only wildcards", "allow_broad_pattern", "kubernetes-only-wildcards"),
    (trust("mesh", subject_pattern="spiffe://example.org/**"), "subject_pattern",
     "only wildcards", "allow_broad_pattern", "spiffe-whole-trust-domain"),
    (trust("build-farm", subject_pattern="*:*"), "subject_pattern", "only wildcards",
     "allow_broad_pattern", "none-only-wildcards"),
    (trust("cluster", subject="system:serviceaccount:prod:default"), "subject",
     "default service account", "allow_default_service_account", "kubernetes-default-exact"),
    (trust("cluster", subject_pattern="system:serviceaccount:prod:*"), "subject_pattern",
     "default service account", "allow_default_service_account",
     "kubernetes-default-name-wildcard"),
    (trust("cluster", subject_pattern="system:serviceaccount:prod:def*"), "subject_pattern",
     "default service account", "allow_default_service_account",
     "kubernetes-default-name-prefix"),
    (trust("cluster", subject_pattern="system:serviceaccount:prod:*",
           claims={"/kubernetes.io/serviceaccount/name": ["deploy-api", "default"]}),
     "claims./kubernetes.io/serviceaccount/name", "default service account",
     "allow_default_service_account", "kubernetes-default-by-claim"),
    (trust("github", replay="reuse", max_lifetime="2h"), "replay", "7200s",
     "allow_long_reuse", "long-reuse"),
    (trust("lab"), "issuer", "plain http", "allow_http_issuer", "http-issuer"),
]


@pytest.mark.parametrize(
    ("entry", "where", "needle", "switch"),
    [pytest.param(t, w, n, s, id=i) for t, w, n, s, i in LINTS],
)
def test_lint_refuses_to_load_until_its_switch_is_set(
    tmp_path: Path, entry: dict[str, Any], where: str, needle: str, switch: str
) -> None:
    [(path, message)] = problems(tmp_path, config(entry))
    assert path == f"{TRUST}.{where}"
    assert needle in message
    assert f"{switch}: true" in message
    assert message.count(";") == 1  # the risk; the fix
    settings = load(tmp_path, config({**entry, switch: True}))
    assert getattr(settings.clients["deploy-api"].federated[0], switch) is True


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(trust("github", subject="repo:acme/api:environment:production",
                           claims=WITH_OWNER_ID), id="github-owner-id-claim"),
        pytest.param(trust("github", subject="repo:acme/api:environment:production",
                           claims={"/repository_owner_id": "1234",
                                   "runner_environment": "github-hosted"}),
                     id="github-owner-id-pointer"),
        pytest.param(trust("github", subject_pattern="repo:acme@1234/*:ref:refs/heads/main"),
                     id="github-owner-id-any-repo"),
        pytest.param(trust("github", subject_pattern="repo:acme@1234/api@5678:ref:refs/tags/*"),
                     id="github-immutable-pattern"),
        pytest.param(trust("gitlab", claims={"namespace_id": 7, "ref_protected": True}),
                     id="gitlab-namespace-id"),
        pytest.param(trust("gitlab", subject_pattern="project_path:acme/**:ref_type:branch:*"),
                     id="gitlab-literal-group"),
        pytest.param(trust("cluster", subject_pattern="system:serviceaccount:prod:api-*"),
                     id="kubernetes-name-cannot-be-default"),
        pytest.param(trust("cluster", subject_pattern="system:serviceaccount:prod:default-*"),
                     id="kubernetes-name-longer-than-default"),
        pytest.param(trust("cluster", subject_pattern="system:serviceaccount:prod:*",
                           claims={"/kubernetes.io/serviceaccount/name": "deploy-api"}),
                     id="kubernetes-name-pinned-by-claim"),
        pytest.param(trust("cluster", subject="system:serviceaccount:default:deploy-api"),
                     id="kubernetes-default-namespace"),
        pytest.param(trust("mesh", subject_pattern="spiffe://example.org/ns/prod/sa/*"),
                     id="spiffe-pattern-with-a-path"),
        pytest.param(trust("build-farm", audience="https://idp.example.com/oauth2/token"),
                     id="audience-is-the-operators-choice"),
        pytest.param(trust("github", audience="https://github.com/acme/api"),
                     id="github-url-that-is-no-owner-default"),
        pytest.param(trust("github", replay="reuse", max_lifetime="1h"),
                     id="reuse-for-one-hour"),
    ],
)
def test_no_lint_problem(tmp_path: Path, entry: dict[str, Any]) -> None:
    assert load(tmp_path, config(entry)).clients["deploy-api"].federated[0].name == "t"


@pytest.mark.parametrize(
    "sections",
    [
        pytest.param({"clients__deploy-api__max_lifetime": "2h"}, id="client"),
        pytest.param({"policy__max_lifetime": "90m"}, id="policy"),
    ],
)
def test_long_reuse_counts_the_inherited_lifetime(tmp_path: Path, sections: Any) -> None:
    [(path, message)] = problems(tmp_path, config(trust("github", replay="reuse"), **sections))
    assert path == f"{TRUST}.replay" and "allow_long_reuse" in message


def test_http_issuer_is_reported_at_each_trust_without_the_switch(tmp_path: Path) -> None:
    data = config(trust("lab", "a"), trust("lab", "b", allow_http_issuer=True), trust("lab", "c"))
    assert [path for path, _ in problems(tmp_path, data)] == [
        "clients.deploy-api.federated[0].issuer", "clients.deploy-api.federated[2].issuer"]


TRUST_OK = trust("build-farm")
SHAPE_PROBLEMS = [
    (config(trust("build-farm", claims={"/a~2b": "x"})), f"{TRUST}.claims./a~2b",
     "not a JSON Pointer (RFC 6901)", "pointer-bad-escape"),
    (config(trust("build-farm", claims={"/a~": "x"})), f"{TRUST}.claims./a~",
     "not a JSON Pointer", "pointer-trailing-tilde"),
    (config(trust("build-farm", claims={"": "x"})), f"{TRUST}.claims",
     "claim name must not be empty", "claim-name-empty"),
    (config(trust("build-farm", subject_pattern="build:deploy-api")), f"{TRUST}.subject_pattern",
     "has no wildcard", "pattern-without-wildcard"),
    (config(trust("build-farm", subject_pattern="build:{api,web}-*")),
     f"{TRUST}.subject_pattern", "are not", "pattern-braces"),
    (config(trust("build-farm", subject_pattern="build:api-?*")), f"{TRUST}.subject_pattern",
     "are not", "pattern-question-mark"),
    (config(trust("build-farm", subject_pattern="build:***")), TRUST, "not ***",
     "pattern-triple-star"),
    (config(trust("mesh", subject="spiffe://other.org/ns/prod/sa/api")), f"{TRUST}.subject",
     "must start with spiffe://example.org/", "spiffe-other-trust-domain"),
    (config(trust("mesh", subject_pattern="spiffe://example.org*/**")),
     f"{TRUST}.subject_pattern", "must start with spiffe://example.org/",
     "spiffe-pattern-trust-domain"),
    (config(trust("mesh", subject="example.org/ns/prod")), f"{TRUST}.subject",
     "must start with spiffe://example.org/", "spiffe-not-an-id"),
    (config(trust("build-farm", "same"), trust("build-farm", "same")),
     "clients.deploy-api.federated[1].name", "already a trust of this client",
     "duplicate-trust-name"),
    (config({**trust("build-farm"), "issuer": "nowhere"}), f"{TRUST}.issuer",
     "'nowhere' is not a name under federation.issuers", "unknown-issuer"),
    (config(trust("build-farm", subject_pattern="*", subject="build:x")), TRUST,
     "exactly one of subject, subject_pattern", "subject-and-pattern"),
    (config(trust("build-farm", subject=None)), TRUST,
     "exactly one of subject, subject_pattern", "neither-subject-nor-pattern"),
    (config(trust("build-farm", claims={"x": 1.5})), f"{TRUST}.claims.x[0]",
     "must be a string", "claim-value-float"),
    (config(trust("build-farm", claims={"x": []})), f"{TRUST}.claims.x", "must not be empty",
     "claim-value-empty-list"),
    (config(trust("build-farm", mode="audit")), f"{TRUST}.mode", "'enforce' or 'shadow'",
     "mode-unknown"),
    (config(trust("build-farm", max_lifetime=600)), f"{TRUST}.max_lifetime", "needs a unit",
     "max-lifetime-bare-number"),
    (config(TRUST_OK, federation__issuers__github__jwks_uri="https://x.example/jwks"),
     "federation.issuers.github", "needs exactly one of discovery, jwks_uri", "two-key-sources"),
    (config(TRUST_OK, federation__issuers__github__discovery=False), "federation.issuers.github",
     "(has 0)", "no-key-source"),
    (config(TRUST_OK, federation__issuers__github__trust_domain="example.org"),
     "federation.issuers.github", "trust_domain and preset: spiffe go together",
     "trust-domain-without-spiffe"),
    (config(TRUST_OK, federation__issuers__mesh__preset="none"), "federation.issuers.mesh",
     "trust_domain and preset: spiffe go together", "spiffe-domain-with-other-preset"),
    (config(TRUST_OK, federation__issuers__other={"issuer": "https://o.example",
                                        "bundle_endpoint": "https://o.example/bundle"}),
     "federation.issuers.other", "bundle_endpoint is for SPIFFE trust domains",
     "bundle-endpoint-without-trust-domain"),
    (config(TRUST_OK, federation__issuers__build_farm={"issuer": "https://o.example",
                                             "jwks_uri": "https://o.example/jwks",
                                             "jwks_hosts": ["keys.example"]}),
     "federation.issuers.build_farm", "jwks_hosts only applies with discovery",
     "jwks-hosts-without-discovery"),
    (config(TRUST_OK, federation__issuers__bad={"discovery": True, "preset": "github"}),
     "federation.issuers.bad", "needs issuer", "no-issuer"),
    (config(TRUST_OK, federation__issuers__github__preset="azure"),
     "federation.issuers.github.preset",
     "'github', 'gitlab', 'kubernetes', 'spiffe' or 'none'", "preset-unknown"),
    (config(TRUST_OK, federation__issuers__mesh__trust_domain="Example.ORG"),
     "federation.issuers.mesh.trust_domain", "should match pattern", "trust-domain-case"),
    (config(TRUST_OK, federation__issuers__build_farm={"issuer": "https://o.example",
                                             "jwks_uri": "http://o.example/jwks"}),
     "federation.issuers.build_farm.jwks_uri", "must be https (jwks_fetch.allow_http is off)",
     "issuer-jwks-uri-http"),
]


@pytest.mark.parametrize(
    ("data", "path", "needle"), [pytest.param(d, p, n, id=i) for d, p, n, i in SHAPE_PROBLEMS]
)
def test_one_problem_at_its_path(tmp_path: Path, data: dict[str, Any], path: str,
                                 needle: str) -> None:
    found = problems(tmp_path, data)
    assert len(found) == 1, found
    assert found[0][0] == path
    assert needle in found[0][1]


def test_a_plain_http_key_url_is_reported_beside_other_problems(tmp_path: Path) -> None:
    data = config(TRUST_OK, backend__timeout=5, federation__issuers__build_farm={
        "issuer": "https://o.example", "jwks_uri": "http://o.example/jwks"})
    assert [path for path, _ in problems(tmp_path, data)] == [
        "backend.timeout", "federation.issuers.build_farm.jwks_uri"]


def test_every_trust_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = config(
        trust("github", "a", audience=None, subject="repo:acme/api:ref:refs/heads/main"),
        trust("cluster", "b", subject_pattern="system:serviceaccount:*:*"),
        trust("lab", "c", claims={"/~x": "1"}, replay="reuse", max_lifetime="3h"),
    )
    assert sorted(path for path, _ in problems(tmp_path, data)) == [
        "clients.deploy-api.federated[0].audience",
        "clients.deploy-api.federated[0].subject",
        "clients.deploy-api.federated[1].subject_pattern",
        "clients.deploy-api.federated[1].subject_pattern",
        "clients.deploy-api.federated[2].claims./~x",
        "clients.deploy-api.federated[2].issuer",
        "clients.deploy-api.federated[2].replay",
    ]


def test_valid_pointers_and_plain_names(tmp_path: Path) -> None:
    claims = {"/kubernetes.io/pod/name": "api-0", "/a~0b~1c": "x", "kubernetes.io": "y"}
    settings = load(tmp_path, config(trust("cluster", claims=claims)))
    assert set(settings.clients["deploy-api"].federated[0].claims) == set(claims)


def test_claim_values_from_yaml_compare_as_strings(tmp_path: Path) -> None:
    claims = {"project_id": 42, "ref_protected": True, "tags": [1, False, "ci"]}
    text = yaml.safe_dump(config(trust("gitlab", claims=claims)), sort_keys=False)
    assert "project_id: 42\n" in text and "ref_protected: true\n" in text  # YAML scalars
    [declared] = load(tmp_path, text).clients["deploy-api"].federated
    assert declared.claims == {"project_id": ("42",), "ref_protected": ("true",),
                               "tags": ("1", "false", "ci")}


def test_a_client_may_have_only_federated_trusts(tmp_path: Path) -> None:
    client = load(tmp_path, config(trust("github"))).clients["deploy-api"]
    assert not client.has_own_keys and client.federated[0].mode == "enforce"
    assert client.federated[0].replay == "single_use"
    assert "(has 0), and/or federated trusts" in problems(tmp_path, config())[0][1]


WARNINGS = [
    (trust("github", subject_pattern="repo:acme@1234/api@5678:ref:refs/heads/*"),
     "subject_pattern", "pin event_name", "github-pattern-any-event"),
    (trust("github", claims={}), "claims", "pin runner_environment: github-hosted",
     "github-any-runner"),
    (trust("github", claims={"runner_environment": ["github-hosted", "self-hosted"]}), "claims",
     "pin runner_environment: github-hosted", "github-self-hosted-runner"),
    (trust("gitlab", claims={"project_id": "42"}), "claims", 'ref_protected: "true"',
     "gitlab-unprotected-refs"),
    (trust("gitlab", claims={"project_id": "42", "ref_protected": False}), "claims",
     'ref_protected: "true"', "gitlab-ref-protected-false"),
    (trust("cluster", max_lifetime=None), "max_lifetime", "300s is shorter",
     "kubernetes-policy-lifetime"),
    (trust("cluster", max_lifetime="9m"), "max_lifetime", "540s is shorter",
     "kubernetes-short-lifetime"),
    (trust("build-farm", replay="reuse"), "replay", "replays until it expires", "reuse"),
]


@pytest.mark.parametrize(
    ("entry", "where", "needle"), [pytest.param(t, w, n, id=i) for t, w, n, i in WARNINGS]
)
def test_check_warning(tmp_path: Path, entry: dict[str, Any], where: str, needle: str) -> None:
    warnings = lint_settings(load(tmp_path, config(entry)))
    assert warnings == [(f"{TRUST}.{where}", warnings[0][1])]
    assert needle in warnings[0][1]
    assert warnings[0][1].count(";") == 1  # the risk; the fix


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(trust("github", subject_pattern="repo:acme@1234/api@5678:ref:refs/heads/*",
                           claims={"event_name": ["push"],
                                   "runner_environment": "github-hosted"}),
                     id="github-pattern-with-event-name"),
        pytest.param(trust("github", subject_pattern="repo:acme@1234/*:environment:production",
                           claims={"runner_environment": "github-hosted"}),
                     id="github-pattern-with-environment-in-subject"),
        pytest.param(trust("gitlab", claims={"project_id": "42", "environment": "production"}),
                     id="gitlab-environment"),
        pytest.param(trust("cluster", max_lifetime="10m"), id="kubernetes-ten-minutes"),
    ],
)
def test_no_check_warning(tmp_path: Path, entry: dict[str, Any]) -> None:
    assert lint_settings(load(tmp_path, config(entry))) == []


def test_kubernetes_lifetime_comes_from_the_client_when_the_trust_has_none(
    tmp_path: Path
) -> None:
    data = config(trust("cluster", max_lifetime=None),
                  **{"clients__deploy-api__max_lifetime": "15m"})
    warnings = lint_settings(load(tmp_path, data))
    assert [path for path, _ in warnings] == ["clients.deploy-api.max_lifetime"]  # not the trust


def test_schema_describes_federation() -> None:
    schema = settings_json_schema()
    assert "federation" in schema["properties"]
    assert "federated" in schema["$defs"]["ClientSettings"]["properties"]
    trust_keys = set(schema["$defs"]["FederatedTrustSettings"]["properties"])
    assert {"subject_pattern", "claims", "replay", "mode", "allow_any_audience",
            "allow_platform_audience", "allow_mutable_identity", "allow_broad_pattern",
            "allow_default_service_account", "allow_long_reuse",
            "allow_http_issuer"} <= trust_keys
    issuer_keys = set(schema["$defs"]["FederationIssuerSettings"]["properties"])
    assert {"trust_domain", "discovery", "bundle_endpoint", "jwks_hosts", "preset",
            "bearer_token_file"} <= issuer_keys
    claim = schema["$defs"]["FederatedTrustSettings"]["properties"]["claims"]
    assert {"type": ["string", "integer", "boolean"]} in claim["additionalProperties"]["anyOf"]


def test_example_federation_loads_once_uncommented(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().replace(
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "ca.crt").splitlines()
    on = False
    for number, line in enumerate(lines):
        on = line.startswith(("# federation:", "  # deploy-api:")) or (
            on and not line.startswith("clients:"))
        # Keys sit at most 12 columns in; comments continuing a line sit further right.
        if on and re.match(r" {0,12}# [\w\"-]", line) and "Each load-time" not in line:
            lines[number] = line.replace("# ", "", 1)
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ci-issuer.jwks.json").write_text('{"keys": []}')
    env = {"CI_PIPELINE_SECRET": "a", "PARTNER_ACME_SECRET": "b", "DEPLOY_API_SECRET": "c"}
    (tmp_path / "gateway.yaml").write_text("\n".join(lines) + "\n")
    settings = load_settings(tmp_path / "gateway.yaml", env=env)
    assert set(settings.federation.issuers) == {"github", "prod-cluster", "mesh", "build-farm"}
    assert [t.name for t in settings.clients["deploy-api"].federated] == [
        "gha-production", "gha-release", "api-pods"]
    assert [path for path, _ in lint_settings(settings)] == [
        "clients.deploy-api.federated[2].replay"]  # the pod's token is re-read until refreshed


def test_one_issuer_url_is_declared_once(tmp_path: Path) -> None:
    text = """
issuer: https://idp.example.com
backend: {url: "http://127.0.0.1:9"}
endpoints: [/oauth2/token]
federation:
  issuers:
    github: {issuer: "https://token.actions.githubusercontent.com", jwks: {keys: []}}
    github-again: {issuer: "https://token.actions.githubusercontent.com", jwks: {keys: []}}
    mesh: {trust_domain: example.org, jwks: {keys: []}, preset: spiffe}
    mesh-again: {trust_domain: example.org, jwks: {keys: []}, preset: spiffe}
clients:
  c: {jwks: {keys: []}, backend_auth: {method: none}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, base_dir=tmp_path, env={})
    problems = dict(caught.value.problems)
    assert "is already declared by issuer 'github'" in problems[
        "federation.issuers.github-again.issuer"]
    assert "is already declared by issuer 'mesh'" in problems[
        "federation.issuers.mesh-again.trust_domain"]
