"""Building the runtime from settings: clients with their credentials, key sources, ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as datetime_time
from email.utils import format_datetime
from typing import Any

from gateway.adapters.certificate_runtime import build_certificate_credential
from gateway.adapters.federation_runtime import (
    RemoteKeys as RemoteKeys,  # part of this module's API
)
from gateway.adapters.federation_runtime import (
    build_federation,
    build_issuers,
    issuer_trusts,
    ledger_subjects,
)
from gateway.adapters.redis_topology import build_redis_ledger, connect_redis
from gateway.adapters.remote_keys import RemoteKeySource
from gateway.adapters.usage_store import DEFAULT_TIMEOUT as USAGE_STORE_TIMEOUT
from gateway.adapters.usage_store import RedisUsageStore
from gateway.config.errors import ConfigError
from gateway.config.settings import Settings
from gateway.config.yaml_dialect import join_path
from gateway.core.assertion import AssertionPolicy
from gateway.core.backend_auth import BackendCredential
from gateway.core.clients import ClientRuntime, LegacyPolicy
from gateway.core.credentials import AssertionCredential, RegisteredKeys
from gateway.core.discovery_document import (
    NO_DISCOVERY,
    DiscoveryRewrite,
    discovery_paths,
    origin_of,
)
from gateway.core.federation import NO_FEDERATION, Federation
from gateway.core.keyset import import_jwks
from gateway.core.keysource import KeySource, StaticKeySource
from gateway.core.lifecycle import KeyDeadlines, refuse_from
from gateway.core.replay import MemoryReplayLedger, ReplayLedger
from gateway.core.usage import UsageBook

# The in-process tier in front of Redis only saves round trips: it need not hold everything.
LOCAL_TIER_MAX_ENTRIES = 100_000


def _legacy_policy(settings: Settings, client_id: str) -> LegacyPolicy | None:
    legacy = settings.clients[client_id].legacy_auth
    if legacy is None:
        return None
    # RFC 9745 Deprecation: a date from the configuration, the same on every reload and
    # restart; without `since` there is no date to give, so no header.
    since = None
    if legacy.since is not None:
        start = datetime.combine(legacy.since, datetime_time(), UTC)
        since = f"@{int(start.timestamp())}"
    if legacy.until is None:
        return LegacyPolicy(frozenset(legacy.allow), None, None, since)
    end = refuse_from(legacy.until)  # as key_expiry and retire: the day after, 00:00 UTC
    return LegacyPolicy(frozenset(legacy.allow), end,
                        format_datetime(datetime.fromtimestamp(end, UTC), usegmt=True), since)


@dataclass(frozen=True, slots=True)
class Runtime:
    """One configuration in force: the settings and the clients prepared from them."""

    settings: Settings
    clients: Mapping[str, ClientRuntime]
    endpoints: frozenset[str]
    passthrough: frozenset[str]
    federation: Federation = NO_FEDERATION
    discovery: DiscoveryRewrite = NO_DISCOVERY  # how discovery documents name the gateway
    # Configured clients with enabled: false (offboarded): refused as client_disabled.
    disabled: frozenset[str] = frozenset()

    def sources(self) -> list[KeySource]:
        """Every key source in use, each once (an issuer's serves all clients trusting it)."""
        every = [source for client in self.clients.values() for source in client.key_sources()]
        every += self.federation.sources()
        return list({id(source): source for source in every}.values())

    def keys_settled(self) -> bool:
        """Every key source has keys or has failed its first fetch (what /readyz waits for)."""
        return all(source.settled() for source in self.sources())


class RuntimeSlot:
    """The runtime in force. A reload swaps it whole; a request reads it once and keeps it."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


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
            refuse_expired_certificates=policy.refuse_expired_certificates,
        )
    return policies


def _key_source(
    settings: Settings, client_id: str, remote: RemoteKeys | None,
    previous: Mapping[str, KeySource],
) -> KeySource | None:
    """The client's key source: imported now, reused from the last runtime, or remote.

    Raises ConfigError listing every problem of a configured key set, each at its path
    (``clients.<id>.jwks.keys[0]``, ``clients.<id>.jwks_file``).
    """
    client = settings.clients[client_id]
    if client.jwks_uri is None:
        kind, document = client.configured_jwks() or ("jwks", None)
        imported = import_jwks(document, join_path(join_path("clients", client_id), kind))
        if imported.problems:
            raise ConfigError(list(imported.problems))
        return StaticKeySource(imported.keyset, kind)
    if remote is None:
        return None
    old = previous.get(client_id)
    # A reload keeps a warm cache when neither the address nor the fetch rules changed.
    if (isinstance(old, RemoteKeySource) and old.uri == client.jwks_uri
            and old.settings == settings.jwks_fetch):
        return old
    return RemoteKeySource(client_id, client.jwks_uri, settings.jwks_fetch, remote.session,
                           on_fetch=remote.on_fetch, on_keys=remote.on_keys,
                           on_certificates=remote.on_certificates)


def registered_keys(client: ClientRuntime | None) -> RegisteredKeys | None:
    """The client's own registered keys (jwks, jwks_file, jwks_uri); None without."""
    credentials = client.credentials if client is not None else ()
    return next((c for c in credentials if isinstance(c, RegisteredKeys)), None)


def _registered_sources(previous: Runtime | None) -> dict[str, KeySource]:
    """Each client's registered-key source in the previous runtime (for reuse on reload)."""
    if previous is None:
        return {}
    return {client_id: registered.source for client_id, client in previous.clients.items()
            if (registered := registered_keys(client)) is not None}


def build_runtime(
    settings: Settings, *, remote: RemoteKeys | None = None, previous: Runtime | None = None
) -> Runtime:
    """Import every key and prepare every policy once; disabled clients are left out.

    Without ``remote`` (a configuration check), clients with a jwks_uri, or trusting an
    issuer whose keys are fetched, are validated but not served. Raises ConfigError for a
    key set that cannot be imported.
    """
    clients: dict[str, ClientRuntime] = {}
    problems: list[tuple[str, str]] = []
    old_sources = _registered_sources(previous)
    try:
        issuers = build_issuers(settings, remote, previous.federation if previous else None)
    except ConfigError as exc:
        problems += exc.problems
        issuers = {}
    for client_id, client in settings.clients.items():
        # A disabled client's configured keys are checked too; nothing is fetched for it.
        fetching = remote if client.enabled else None
        credentials: tuple[AssertionCredential, ...] = ()
        if client.has_own_keys:
            try:
                keys = _key_source(settings, client_id, fetching, old_sources)
            except ConfigError as exc:
                problems += exc.problems
                continue
            if keys is None:
                continue
            # key_expiry and retire, each date's refuse-from moment computed once here.
            deadlines = KeyDeadlines.of_settings(client.key_expiry, client.retire)
            credentials = (RegisteredKeys(client_id, keys, _policies(settings, client_id),
                                          allow_reuse=client.allow_assertion_reuse,
                                          deadlines=deadlines),)
        elif client.certificate is not None:
            held = previous.clients.get(client_id) if previous is not None else None
            try:
                credentials = (build_certificate_credential(
                    settings, client_id, _policies(settings, client_id),
                    held.credentials if held is not None else ()),)
            except ConfigError as exc:
                problems += exc.problems
                continue
        federated = issuer_trusts(settings, client_id, issuers)
        if federated is None or not client.enabled:
            continue
        auth = client.backend_auth
        clients[client_id] = ClientRuntime(
            client_id=client_id,
            credentials=credentials,
            backend=BackendCredential(client_id, auth.method, auth.secret_value()),
            legacy=_legacy_policy(settings, client_id),
            federated=federated,
        )
    if problems:
        raise ConfigError(problems)
    return Runtime(
        settings=settings,
        clients=clients,
        endpoints=frozenset(settings.endpoints),
        passthrough=frozenset(settings.passthrough),
        federation=build_federation(settings, issuers, clients),
        discovery=build_discovery_rewrite(settings, clients),
        disabled=frozenset(cid for cid, client in settings.clients.items() if not client.enabled),
    )


def build_discovery_rewrite(
    settings: Settings, clients: Mapping[str, ClientRuntime]
) -> DiscoveryRewrite:
    """How discovery documents on passthrough paths are rewritten under these settings.

    A URL is rewritten when its origin is backend.url's, the issuer's (an IdP behind the
    gateway often names the public issuer's host rather than its own) or public_url's (one
    that builds its URLs from X-Forwarded-Host), and its path is one the gateway serves.
    """
    public = settings.public_base()
    origins = (origin_of(settings.backend.url), origin_of(settings.issuer), origin_of(public))
    served = frozenset(settings.endpoints)
    passthrough = frozenset(settings.passthrough)
    return DiscoveryRewrite(
        paths=discovery_paths(settings.issuer) & passthrough,
        public_base=public,
        origins=frozenset(origin for origin in origins if origin is not None),
        endpoints=served,
        routes=served | passthrough,
        algorithms=tuple(dict.fromkeys(settings.policy.algorithms)),
        legacy=tuple(client.legacy for client in clients.values() if client.legacy is not None),
    )


async def start_sources(runtime: Runtime, previous: Runtime | None = None) -> None:
    """Start the sources this runtime added (concurrently, without waiting for fetches)."""
    running = {id(source) for source in previous.sources()} if previous else set()
    await asyncio.gather(*(s.start() for s in runtime.sources() if id(s) not in running))


async def close_sources(runtime: Runtime, keep: Runtime | None = None) -> None:
    """Close the sources of ``runtime`` that ``keep`` no longer uses."""
    kept = {id(source) for source in keep.sources()} if keep else set()
    await asyncio.gather(*(s.close() for s in runtime.sources() if id(s) not in kept))


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def build_ledger(settings: Settings, *,
                 on_reset: Callable[[], None] | None = None) -> ReplayLedger:
    """The replay ledger the settings ask for (Redis is connected lazily, on first use).

    A Redis ledger calls ``on_reset`` once per loss of its store's data it learns of, and
    reads the markers of every configured client at first contact.
    Raises ValueError for an inconsistent Redis topology.
    """
    replay = settings.replay
    if replay.store == "memory":
        return MemoryReplayLedger(replay.max_entries)
    return build_redis_ledger(
        **_redis_topology(settings), timeout=replay.timeout,
        max_connections=replay.redis_max_connections,
        local_max_entries=min(replay.max_entries, LOCAL_TIER_MAX_ENTRIES),
        subjects=ledger_subjects(settings), on_reset=on_reset)


def _redis_topology(settings: Settings) -> dict[str, Any]:
    """replay's Redis: exactly one of url, sentinels, cluster nodes, and the credentials."""
    replay = settings.replay
    common: dict[str, Any] = {"username": replay.redis_username,
                              "password": replay.password_value()}
    if replay.redis_sentinels:
        return {"sentinels": [_host_port(node) for node in replay.redis_sentinels],
                "sentinel_master": replay.redis_sentinel_master, **common}
    if replay.redis_cluster_nodes:
        return {"cluster_nodes": [_host_port(node) for node in replay.redis_cluster_nodes],
                **common}
    return {"url": replay.redis_url, **common}


def build_usage_store(settings: Settings, book: UsageBook,
                      client_ids: Callable[[], Iterable[str]]) -> RedisUsageStore | None:
    """With replay.store: redis and usage on, the store sharing ``book`` in the same Redis.

    It has a client of its own (two connections, connected lazily): its flushes never queue
    behind, or hold up, the replay checks of the request path.
    Raises ValueError for an inconsistent Redis topology.
    """
    if settings.replay.store != "redis" or not settings.usage.enabled:
        return None
    client, sentinels = connect_redis(**_redis_topology(settings),
                                      timeout=USAGE_STORE_TIMEOUT, max_connections=2,
                                      socket_timeout=USAGE_STORE_TIMEOUT)
    return RedisUsageStore(book, client, client_ids=client_ids, sentinels=sentinels,
                           flush_interval=settings.usage.flush_interval,
                           timeout=USAGE_STORE_TIMEOUT)
