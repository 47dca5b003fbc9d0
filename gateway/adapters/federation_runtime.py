"""The federation part of a runtime: declared issuers with their key sources, clients' trusts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from gateway.adapters.issuer_keys import IssuerKeySource, build_issuer_source
from gateway.config.errors import ConfigError
from gateway.config.settings import Settings
from gateway.core.claim_rules import claim_requirement
from gateway.core.clients import ClientRuntime
from gateway.core.federation import (
    NO_FEDERATION,
    Federation,
    FederationIssuer,
    IssuerTrusts,
    Trust,
    federated_subject,
)
from gateway.core.subject_pattern import compile_subject_pattern

FetchHook = Callable[[str, str], None]
KeysHook = Callable[[str, int], None]
CertificatesHook = Callable[[str, float | None], None]


@dataclass(frozen=True, slots=True)
class RemoteKeys:
    """What building a runtime needs to create remote key sources."""

    session: aiohttp.ClientSession
    on_fetch: FetchHook | None = None
    on_keys: KeysHook | None = None
    # A client's remote keys: the soonest notAfter of their x5c leaves (None: none).
    on_certificates: CertificatesHook | None = None


def build_issuers(
    settings: Settings, remote: RemoteKeys | None, previous: Federation | None
) -> dict[str, FederationIssuer]:
    """Each declared issuer with its key source (None-less: an issuer whose keys must be
    fetched is left out without ``remote``). Raises ConfigError for unusable static keys."""
    held = (*previous.by_iss.values(), *previous.by_trust_domain.values()) if previous else ()
    old = {issuer.name: issuer.source for issuer in held}
    issuers: dict[str, FederationIssuer] = {}
    problems: list[tuple[str, str]] = []
    for name, declared in settings.federation.issuers.items():
        static = declared.key_source in ("jwks", "jwks_file")
        if not static and remote is None:
            continue
        try:
            # Built even when the old source is kept: a ca_file broken since is reported.
            source = build_issuer_source(
                name, declared, settings.jwks_fetch,
                on_fetch=remote.on_fetch if remote else None,
                on_keys=remote.on_keys if remote else None)
        except ConfigError as exc:
            problems += exc.problems
            continue
        # A reload keeps a warm cache when nothing that shapes the fetching changed.
        kept = old.get(name)
        if (isinstance(kept, IssuerKeySource) and isinstance(source, IssuerKeySource)
                and kept.settings_key == source.settings_key):
            source = kept
        issuers[name] = FederationIssuer(
            name=name, issuer=declared.issuer, trust_domain=declared.trust_domain,
            algorithms=frozenset(declared.algorithms), source=source)
    if problems:
        raise ConfigError(problems)
    return issuers


def issuer_trusts(
    settings: Settings, client_id: str, issuers: Mapping[str, FederationIssuer]
) -> dict[str, IssuerTrusts] | None:
    """The client's trusts grouped by issuer; None when one of its issuers is not served."""
    client = settings.clients[client_id]
    policy = settings.effective_policy(client_id)
    trusts: dict[str, list[Trust]] = {}
    for declared in client.federated:
        if declared.issuer not in issuers:
            return None
        trusts.setdefault(declared.issuer, []).append(Trust(
            name=declared.name,
            audience=declared.audience,
            subject=declared.subject,
            pattern=(compile_subject_pattern(declared.subject_pattern)
                     if declared.subject_pattern is not None else None),
            claims=tuple(claim_requirement(key, frozenset(values))
                         for key, values in declared.claims.items()),
            max_lifetime=(declared.max_lifetime if declared.max_lifetime is not None
                          else policy.max_lifetime),
            reuse=declared.replay == "reuse",
            shadow=declared.mode == "shadow",
        ))
    grouped: dict[str, IssuerTrusts] = {}
    for name, group in trusts.items():
        others = tuple(t.name for other, rest in trusts.items() if other != name
                       for t in rest if t.shadow)
        grouped[name] = IssuerTrusts(
            client_id=client_id, issuer=issuers[name],
            enforced=tuple(t for t in group if not t.shadow),
            shadows=tuple(t for t in group if t.shadow),
            other_shadows=others, clock_skew=policy.clock_skew)
    return grouped


def build_federation(
    settings: Settings, issuers: Mapping[str, FederationIssuer],
    clients: Mapping[str, ClientRuntime],
) -> Federation:
    if not issuers:
        return NO_FEDERATION
    exact: dict[tuple[str, str], list[str]] = {}
    for client_id in clients:
        for trust in settings.clients[client_id].federated:
            if trust.subject is not None and trust.mode == "enforce":
                holders = exact.setdefault((trust.issuer, trust.subject), [])
                if client_id not in holders:
                    holders.append(client_id)
    return Federation(
        by_iss={i.issuer: i for i in issuers.values() if i.issuer is not None},
        by_trust_domain={i.trust_domain: i for i in issuers.values()
                         if i.trust_domain is not None},
        exact={key: tuple(holders) for key, holders in exact.items()},
    )


def ledger_subjects(settings: Settings) -> tuple[str, ...]:
    """Every namespace the ledger keeps: each client's, and each issuer's per replay mode."""
    federated = tuple(federated_subject(name, reuse) for name in settings.federation.issuers
                      for reuse in (False, True))
    return (*settings.clients, *federated)


