"""The prepared view of the settings the hot path reads: clients, keys, policies, credentials."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .assertion import AssertionPolicy
from .config import Settings
from .errors import ConfigError
from .keys import KeySource, StaticKeySource
from .keyset import prepare_keyset
from .upstream import BackendCredential


@dataclass(frozen=True, slots=True)
class ClientRuntime:
    """One configured client, ready to verify: keys, policy per endpoint, backend credential."""

    client_id: str
    keys: KeySource
    policies: Mapping[str, AssertionPolicy]
    credential: BackendCredential


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    clients: Mapping[str, ClientRuntime]
    endpoints: frozenset[str]
    passthrough: frozenset[str]


def _policies(settings: Settings, client_id: str) -> dict[str, AssertionPolicy]:
    policy = settings.effective_policy(client_id)
    base = settings.public_base()
    policies = {}
    for path in settings.endpoints:
        audiences = {settings.issuer}
        if policy.audience == "compat":
            audiences.add(base + path)
        policies[path] = AssertionPolicy(
            client_id=client_id,
            algorithms=frozenset(policy.algorithms),
            audiences=frozenset(audiences),
            max_lifetime=policy.max_lifetime,
            clock_skew=policy.clock_skew,
            require_typ=policy.require_typ,
        )
    return policies


def build_runtime(settings: Settings) -> Runtime:
    """Import every key and prepare every policy once.

    Raises ConfigError for a client this version cannot serve.
    """
    clients: dict[str, ClientRuntime] = {}
    problems: list[tuple[str, str]] = []
    for client_id, client in settings.clients.items():
        if client.jwks_keys is None:
            problems.append((f"clients.{client_id}.jwks_uri",
                             "remote key sets are not supported by this version; "
                             "use jwks or jwks_file"))
            continue
        kind = "jwks_file" if client.jwks_file else "jwks"
        try:
            keyset = prepare_keyset(client.jwks_keys)
        except ValueError as exc:  # structurally fine, cryptographically not (an off-curve point)
            problems.append((f"clients.{client_id}.{kind}", str(exc)))
            continue
        auth = client.backend_auth
        clients[client_id] = ClientRuntime(
            client_id=client_id,
            keys=StaticKeySource(keyset, kind),
            policies=_policies(settings, client_id),
            credential=BackendCredential(client_id, auth.method, auth.secret_value()),
        )
    if problems:
        raise ConfigError(problems)
    return Runtime(
        settings=settings,
        clients=clients,
        endpoints=frozenset(settings.endpoints),
        passthrough=frozenset(settings.passthrough),
    )
