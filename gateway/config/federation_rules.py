"""Federation rules that span sections, and the lints that refuse to load a weak trust."""

from __future__ import annotations

from gateway.config.settings import Settings
from gateway.config.yaml_dialect import join_path

Problems = list[tuple[str, str]]


def federation_problems(settings: Settings) -> Problems:
    """Every problem of the federated trusts, at its dotted path (empty when none)."""
    problems: Problems = []
    issuers = settings.federation.issuers
    for client_id, client in settings.clients.items():
        seen: set[str] = set()
        for index, trust in enumerate(client.federated):
            where = join_path(join_path(join_path("clients", client_id), "federated"), index)
            if trust.name in seen:
                problems.append((join_path(where, "name"),
                                 f"{trust.name!r} is already a trust of this client"))
            seen.add(trust.name)
            if trust.issuer not in issuers:
                problems.append((join_path(where, "issuer"),
                                 f"{trust.issuer!r} is not a name under federation.issuers"))
    return problems
