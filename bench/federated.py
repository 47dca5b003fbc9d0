"""Benchmark federated case: a CI platform's workload token as the client's assertion.

The gateway under test trusts one platform issuer with a static JWK Set, and the client
one exact subject of it; each body carries a fresh RS256 token of that platform, shaped as
a GitHub Actions OIDC token, with the client_id beside it in the form.
"""

from __future__ import annotations

import json

from tokens import Claimant, SigningKey

FEDERATED_ALGS = frozenset({"RS256"})  # what CI platforms sign with
ISSUER_NAME = "ci"  # the operator's name for the platform, under federation.issuers
PLATFORM_ISSUER = "https://ci.bench.example"
TRUST_NAME = "bench"
# Owner and repository pinned by id, as a trust in a GitHub-shaped subject should be.
SUBJECT = "repo:acme@1/api@2:ref:refs/heads/main"
MAX_LIFETIME = "5m"
WORKLOAD_CLAIMS = {
    "repository": "acme/api",
    "repository_owner_id": "1",
    "event_name": "push",
    "ref": "refs/heads/main",
}


def platform_claimant(key: SigningKey, client_id: str, audience: str) -> Claimant:
    """The platform's tokens for the client's trust: sub is the workload, not the client."""
    return Claimant(key, PLATFORM_ISSUER, SUBJECT, audience, form_client_id=client_id,
                    header={"typ": "JWT"}, claims=WORKLOAD_CLAIMS, not_before=True)


def federation_yaml(key: SigningKey) -> str:
    """The top-level ``federation`` section: the platform issuer and its public key."""
    issuer = {"issuer": PLATFORM_ISSUER, "jwks": {"keys": [key.public_jwk]},
              "algorithms": [key.alg], "preset": "none"}
    return f"federation:\n  issuers:\n    {ISSUER_NAME}: {json.dumps(issuer)}\n"


def trust_yaml(audience: str) -> str:
    """The client's ``federated`` key (indented under the client): its one exact trust."""
    trust = {"name": TRUST_NAME, "issuer": ISSUER_NAME, "audience": audience,
             "subject": SUBJECT, "max_lifetime": MAX_LIFETIME, "replay": "single_use"}
    return f"    federated: [{json.dumps(trust)}]\n"
