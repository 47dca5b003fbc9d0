"""Workload platforms' token claims: GitHub Actions, GitLab CI, Kubernetes and SPIFFE.

Pure functions with each platform's claim shapes (docs: federation notes, section 1);
tests/support/platform_issuer.py signs their output. Every builder takes claim overrides
by name (OMIT drops a claim).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

from tests.support.tokens import merge

__all__ = ["SHA", "github_claims", "github_subject", "gitlab_claims", "kubernetes_claims",
           "spiffe_claims"]

SHA: Final = "0123456789abcdef0123456789abcdef01234567"


def _issued_at(now: float | None) -> int:
    return int(time.time() if now is None else now)


def _escape(value: str) -> str:
    return value.replace(":", "%3A")


def github_subject(owner: str, owner_id: str, repo: str, repo_id: str, *, ref: str,
                   environment: str | None, event_name: str, immutable: bool) -> str:
    """``repo:OWNER@ID/REPO@ID:…`` (or ``repo:OWNER/REPO:…``), then the environment,
    ``pull_request``, or the ref, in that order of precedence; ``:`` in a value is ``%3A``."""
    if immutable:
        repository = f"{_escape(owner)}@{_escape(owner_id)}/{_escape(repo)}@{_escape(repo_id)}"
    else:
        repository = f"{_escape(owner)}/{_escape(repo)}"
    if environment is not None:
        tail = f"environment:{_escape(environment)}"
    elif event_name == "pull_request":
        tail = "pull_request"
    else:
        tail = f"ref:{_escape(ref)}"
    return f"repo:{repository}:{tail}"


def github_claims(
    iss: str, aud: str | list[str] | None = None, *, owner: str = "acme", owner_id: str = "1234",
    repo: str = "api", repo_id: str = "5678", ref: str = "refs/heads/main",
    environment: str | None = None, event_name: str = "push", immutable: bool = True,
    runner_environment: str = "github-hosted", enterprise: str | None = None,
    enterprise_id: str | None = None, workflow_file: str = "deploy.yml", lifetime: int = 300,
    now: float | None = None, **overrides: Any,
) -> dict[str, Any]:
    """An Actions OIDC token's claims; ``aud`` None is the owner-wide default audience."""
    iat = _issued_at(now)
    repository = f"{owner}/{repo}"
    workflow_ref = f"{repository}/.github/workflows/{workflow_file}@{ref}"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": github_subject(owner, owner_id, repo, repo_id, ref=ref, environment=environment,
                              event_name=event_name, immutable=immutable),
        "aud": f"https://github.com/{owner}" if aud is None else aud,
        "ref": ref, "sha": SHA, "repository": repository, "repository_id": repo_id,
        "repository_owner": owner, "repository_owner_id": owner_id,
        "repository_visibility": "private", "run_id": "9000000001", "run_number": "17",
        "run_attempt": "1", "actor": "dev-1", "actor_id": "4321", "workflow": "Deploy",
        "workflow_ref": workflow_ref, "workflow_sha": SHA, "head_ref": "", "base_ref": "",
        "event_name": event_name, "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
        "ref_protected": "true", "job_workflow_ref": workflow_ref, "job_workflow_sha": SHA,
        "runner_environment": runner_environment,
        "iss": iss, "nbf": iat - 5, "exp": iat + lifetime, "iat": iat}
    optional = {"environment": environment, "enterprise": enterprise,
                "enterprise_id": enterprise_id}
    claims.update({name: value for name, value in optional.items() if value is not None})
    return merge(claims, overrides)


def gitlab_claims(
    iss: str, aud: str | list[str], *, namespace_path: str = "group", namespace_id: str = "72",
    project_path: str = "group/project", project_id: str = "42", ref: str = "main",
    ref_type: str = "branch", ref_protected: str = "true", pipeline_source: str = "push",
    environment: str | None = None, runner_environment: str = "gitlab-hosted",
    lifetime: int = 3600, now: float | None = None, **overrides: Any,
) -> dict[str, Any]:
    """A GitLab CI ``id_tokens`` entry's claims; ids and flags are strings, as GitLab sends."""
    iat = _issued_at(now)
    ref_path = f"refs/{'tags' if ref_type == 'tag' else 'heads'}/{ref}"
    instance = iss.split("://", 1)[-1]
    claims: dict[str, Any] = {
        "namespace_id": namespace_id, "namespace_path": namespace_path,
        "project_id": project_id, "project_path": project_path, "user_id": "1",
        "user_login": "dev-1", "user_email": "dev-1@example.com", "user_access_level": "developer",
        "pipeline_id": "574", "pipeline_source": pipeline_source, "job_id": "302", "ref": ref,
        "ref_type": ref_type, "ref_path": ref_path, "ref_protected": ref_protected,
        "runner_id": 1, "runner_environment": runner_environment, "sha": SHA,
        "project_visibility": "private",
        "ci_config_ref_uri": f"{instance}/{project_path}//.gitlab-ci.yml@{ref_path}",
        "ci_config_sha": SHA, "jti": str(uuid.uuid4()), "iss": iss, "iat": iat, "nbf": iat - 5,
        "exp": iat + lifetime,
        "sub": f"project_path:{project_path}:ref_type:{ref_type}:ref:{ref}", "aud": aud}
    if environment is not None:
        claims.update(environment=environment, environment_protected="false",
                      deployment_tier="production", environment_action="start")
    return merge(claims, overrides)


def kubernetes_claims(
    iss: str, aud: str | list[str], *, namespace: str = "ci", service_account: str = "deployer",
    sa_uid: str = "5f1c2c6e-0000-4000-8000-000000000001", pod: str | None = "runner-abc",
    pod_uid: str = "5f1c2c6e-0000-4000-8000-000000000002", node: str | None = "node-1",
    node_uid: str = "5f1c2c6e-0000-4000-8000-000000000003", lifetime: int = 3600,
    with_jti: bool = True, warn_after: int | None = None, now: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A projected service-account token's claims: ``aud`` always a list, identity nested
    under ``kubernetes.io``; ``pod``/``node`` None leave those objects out."""
    iat = _issued_at(now)
    nested: dict[str, Any] = {"namespace": namespace,
                              "serviceaccount": {"name": service_account, "uid": sa_uid}}
    if node is not None:
        nested["node"] = {"name": node, "uid": node_uid}
    if pod is not None:
        nested["pod"] = {"name": pod, "uid": pod_uid}
    if warn_after is not None:
        nested["warnafter"] = warn_after
    claims: dict[str, Any] = {"aud": [aud] if isinstance(aud, str) else list(aud),
                              "exp": iat + lifetime, "iat": iat, "iss": iss}
    if with_jti:
        claims["jti"] = str(uuid.uuid4())
    claims.update({"kubernetes.io": nested, "nbf": iat,
                   "sub": f"system:serviceaccount:{namespace}:{service_account}"})
    return merge(claims, overrides)


def spiffe_claims(
    iss: str, aud: str | list[str], *, trust_domain: str = "example.org",
    path: str = "/ns/prod/sa/api", lifetime: int = 300, with_iss: bool = False,
    with_jti: bool = False, now: float | None = None, **overrides: Any,
) -> dict[str, Any]:
    """A JWT-SVID's claims: ``sub``, ``aud`` (as given), ``exp``, ``iat``; ``iss`` and
    ``jti`` only when asked for."""
    iat = _issued_at(now)
    claims: dict[str, Any] = {"aud": aud, "exp": iat + lifetime, "iat": iat,
                              "sub": f"spiffe://{trust_domain}{path}"}
    if with_iss:
        claims["iss"] = iss
    if with_jti:
        claims["jti"] = str(uuid.uuid4())
    return merge(claims, overrides)
