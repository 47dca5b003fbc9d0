"""``pkjwt-gateway keys``: every client's key source and keys, fetching remote sets now."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.adapters.jwks_fetch import JwksFetchError, fetch_jwks, loggable_uri, new_jwks_session
from gateway.config.settings import Settings
from gateway.config.yaml_dialect import join_path
from gateway.core.keyset import KeySet, import_jwks


@dataclass
class KeyEntry:
    kid: str | None
    kty: str
    algorithms: list[str]
    thumbprint: str


@dataclass
class TrustEntry:
    name: str
    issuer: str  # the name under federation.issuers
    issuer_url: str | None
    subject: str | None
    subject_pattern: str | None
    claims: list[str]  # the claims the trust pins (names only)
    mode: str
    replay: str


@dataclass
class ClientEntry:
    client: str
    enabled: bool
    source: str
    uri: str | None = None
    fetched_at: str | None = None
    cache_expires_at: str | None = None
    error: str | None = None
    keys: list[KeyEntry] = field(default_factory=list)
    trusts: list[TrustEntry] = field(default_factory=list)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _entries(keyset: KeySet) -> list[KeyEntry]:
    return [KeyEntry(key.kid, str(key.key.key_type), sorted(key.algorithms), key.thumbprint)
            for key in keyset.keys]


async def collect_inventory(settings: Settings) -> list[ClientEntry]:
    """Describe every client's keys; remote sets are fetched concurrently, once each."""
    session = new_jwks_session(settings.jwks_fetch)
    try:
        return list(await asyncio.gather(
            *(_describe(settings, client_id, session) for client_id in settings.clients)))
    finally:
        await session.close()


def _trusts(settings: Settings, client_id: str) -> list[TrustEntry]:
    issuers = settings.federation.issuers
    return [TrustEntry(
        trust.name, trust.issuer,
        issuers[trust.issuer].issuer or issuers[trust.issuer].trust_domain
        if trust.issuer in issuers else None,
        trust.subject, trust.subject_pattern, sorted(trust.claims), trust.mode, trust.replay)
        for trust in settings.clients[client_id].federated]


async def _describe(settings: Settings, client_id: str, session: Any) -> ClientEntry:
    entry = await _describe_keys(settings, client_id, session)
    entry.trusts = _trusts(settings, client_id)
    return entry


async def _describe_keys(settings: Settings, client_id: str, session: Any) -> ClientEntry:
    client = settings.clients[client_id]
    if not client.has_own_keys:
        return ClientEntry(client_id, client.enabled, "federated")
    if client.jwks_uri is None:
        source, document = client.configured_jwks() or ("jwks", None)
        imported = import_jwks(document, join_path(join_path("clients", client_id), source))
        entry = ClientEntry(client_id, client.enabled, source, keys=_entries(imported.keyset))
        if imported.problems:  # messages name members, never their values
            entry.error = "; ".join(f"{path}: {message}" for path, message in imported.problems)
        return entry
    entry = ClientEntry(client_id, client.enabled, "jwks_uri", uri=loggable_uri(client.jwks_uri))
    started = time.time()
    try:
        result = await fetch_jwks(session, client.jwks_uri, settings.jwks_fetch, None)
    except JwksFetchError as exc:
        entry.error = exc.reason
        return entry
    entry.fetched_at = _iso(started)
    entry.cache_expires_at = _iso(started + result.lifetime)
    entry.keys = _entries(result.keyset) if result.keyset is not None else []
    return entry


def render_inventory(entries: list[ClientEntry], *, as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(entry) for entry in entries], indent=2)
    lines = []
    for entry in entries:
        where = f" {entry.uri}" if entry.uri else ""
        state = "" if entry.enabled else " (disabled)"
        lines.append(f"{entry.client}{state}: {entry.source}{where}, {len(entry.keys)} key(s)")
        if entry.fetched_at:
            lines.append(f"  fetched {entry.fetched_at}, cache expires {entry.cache_expires_at}")
        if entry.error:
            lines.append(f"  fetch failed: {entry.error}" if entry.uri else f"  {entry.error}")
        for key in entry.keys:
            lines.append(f"  kid={key.kid or '-'} kty={key.kty} alg={','.join(key.algorithms)}"
                         f" thumbprint={key.thumbprint}")
        for trust in entry.trusts:
            subject = (f"subject={trust.subject}" if trust.subject is not None
                       else f"subject_pattern={trust.subject_pattern}")
            pinned = f" claims={','.join(trust.claims)}" if trust.claims else ""
            lines.append(f"  trust {trust.name}: issuer={trust.issuer} {subject}{pinned}"
                         f" mode={trust.mode} replay={trust.replay}")
    return "\n".join(lines)
