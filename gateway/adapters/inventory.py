"""The credential inventory (``GET /inventory``): every client, its credentials and their usage.

Pure assembly from the runtime in force (keys held now), the settings (owner metadata,
offboarded clients, dates), the usage book and the lifecycle flags; nothing is fetched and
nothing secret is read: no backend secret, no token, no key material beyond thumbprints.
The document is JSON-clean; ``config/inventory.schema.json`` describes it field by field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, Protocol

from gateway.adapters.assemble import Runtime, registered_keys
from gateway.adapters.inventory_entries import (
    ClientEntry,
    CredentialEntry,
    KeySourceEntry,
    LegacyEntry,
    SecretUse,
    iso,
)
from gateway.adapters.key_lifecycle import key_deadlines, lifecycle_policy
from gateway.config.settings import ClientSettings
from gateway.config.yaml_dialect import join_path
from gateway.core.certificate_credential import CertificateCredential, CertifiedLeaf
from gateway.core.clients import ClientRuntime
from gateway.core.key_certificates import describe_certificate
from gateway.core.keyset import KeySet, VerificationKey, import_jwks
from gateway.core.keysource import KeySourceStatus
from gateway.core.lifecycle import (
    FLAGS,
    KeyDeadline,
    KeyDeadlines,
    LifecyclePolicy,
    client_dormant,
    credential_flags,
    earliest_first_seen,
    refuse_from,
    too_many_keys,
)
from gateway.core.usage import (
    Usage,
    certificate_ref,
    certificate_ref_of_x5t,
    key_ref,
    secret_ref,
    trust_ref,
)

INVENTORY_VERSION = 1
ACTIVE, OFFBOARDED = "active", "offboarded"
DORMANT, TOO_MANY_KEYS = "dormant", "too_many_keys"  # a client's flags
NO_USAGE = Usage(None, None, 0)


@dataclass(frozen=True, slots=True)
class _Rules:
    """What flags one client's credentials: its lifecycle policy and key dates."""

    policy: LifecyclePolicy
    deadlines: KeyDeadlines | None

    def deadline(self, kid: str | None, thumbprint: str) -> KeyDeadline | None:
        return self.deadlines.of(kid, thumbprint) if self.deadlines is not None else None


def _flags(rules: _Rules, used: Usage, now: float, *, deadline: KeyDeadline | None = None,
           not_after: float | None = None) -> list[str]:
    flags = credential_flags(used, now, rules.policy, deadline=deadline, not_after=not_after)
    return [flag for flag in FLAGS if flag in flags]


class UsageView(Protocol):
    """What the inventory reads of the usage book (``gateway.core.usage.UsageBook``)."""

    def of_client(self, client_id: str) -> dict[str, Usage]: ...

    def last_success(self, client_id: str) -> float | None: ...


def build_inventory(runtime: Runtime, usage: UsageView, now: float, *,
                    usage_scope: str) -> dict[str, Any]:
    """The inventory document at ``now``: JSON-clean, clients in id order.

    ``usage_scope``: ``process`` (this process's counts since it started), ``shared``
    (merged across processes in Redis) or ``off`` (usage.enabled is false).
    """
    settings = runtime.settings
    entries = [_client(runtime, client_id, usage, now) for client_id in sorted(settings.clients)]
    return {"version": INVENTORY_VERSION, "generated_at": iso(now), "usage": usage_scope,
            "clients": [asdict(entry) for entry in entries]}


def allowed_methods(client: ClientSettings) -> list[str]:
    """The method words (as in the audit log and metrics) the client may authenticate with."""
    methods = ["private_key_jwt"] if client.has_own_keys else []
    methods += ["certificate"] if client.certificate is not None else []
    methods += ["federated"] if client.federated else []
    return methods + list(client.legacy_auth.allow if client.legacy_auth else ())


def _client(runtime: Runtime, client_id: str, usage: UsageView, now: float) -> ClientEntry:
    settings = runtime.settings
    client = settings.clients[client_id]
    served = runtime.clients.get(client_id)
    rules = _Rules(lifecycle_policy(settings, client_id), key_deadlines(client))
    seen = usage.of_client(client_id)
    source, held = _keys_held(client, client_id, served)
    keys = _distinct(held)
    credentials = [_key(key, source, rules, seen, now) for key in keys]
    credentials += _removed_keys(credentials, seen, source, rules)
    credentials += _certificates(served, seen, rules, now)
    credentials += _trusts(served, client, seen, rules, now)
    last_success = usage.last_success(client_id)
    flags = [DORMANT] if client_dormant(last_success, earliest_first_seen(seen.values()), now,
                                        rules.policy) else []
    flags += [TOO_MANY_KEYS] if too_many_keys(len(keys), rules.policy) else []
    return ClientEntry(
        client_id=client_id, state=ACTIVE if client.enabled else OFFBOARDED,
        owner=client.owner, contact=client.contact, description=client.description,
        methods=allowed_methods(client), legacy=_legacy(client, now),
        key_source=_key_source(served), last_success=iso(last_success), flags=flags,
        credentials=credentials,
        secrets=[SecretUse(ref.partition(":")[2], iso(used.first_seen), iso(used.last_used),
                           used.uses)
                 for ref, used in sorted(seen.items()) if ref.startswith(secret_ref(""))])


def _distinct(keys: Iterable[VerificationKey]) -> list[VerificationKey]:
    """One entry per thumbprint: a key listed twice (an old and a renewed x5c) is one key;
    the latest certificate is shown."""
    by_thumbprint: dict[str, VerificationKey] = {}
    for key in keys:
        held = by_thumbprint.get(key.thumbprint)
        if held is None or (key.not_after or 0.0) > (held.not_after or 0.0):
            by_thumbprint[key.thumbprint] = key
    return list(by_thumbprint.values())


def _keys_held(client: ClientSettings, client_id: str,
               served: ClientRuntime | None) -> tuple[str | None, tuple[VerificationKey, ...]]:
    """The client's own keys now: those its source holds, or (offboarded) its configured set."""
    registered = registered_keys(served)
    if registered is not None:
        held: KeySet | None = registered.source.current()
        return registered.source.kind, held.keys if held is not None else ()
    configured = client.configured_jwks()
    if configured is None:  # a jwks_uri (nothing is fetched for an offboarded client) or none
        return ("jwks_uri" if client.jwks_uri is not None else None), ()
    kind, document = configured
    return kind, import_jwks(document, join_path(join_path("clients", client_id), kind)).keyset.keys


def _usage_fields(entry: CredentialEntry, used: Usage) -> CredentialEntry:
    entry.first_seen, entry.last_used = iso(used.first_seen), iso(used.last_used)
    entry.uses = used.uses
    return entry


def _dated(entry: CredentialEntry, deadline: KeyDeadline | None) -> CredentialEntry:
    if deadline is not None:
        day = deadline.last_day.isoformat()
        entry.retire, entry.expiry = (day, None) if deadline.retired else (None, day)
    return entry


def _key(key: VerificationKey, source: str | None, rules: _Rules,
         seen: Mapping[str, Usage], now: float) -> CredentialEntry:
    ref = key_ref(key.thumbprint)
    used = seen.get(ref, NO_USAGE)
    deadline = rules.deadline(key.kid, key.thumbprint)
    entry = _dated(CredentialEntry(
        kind="key", ref=ref, present=True, source=source, algorithms=sorted(key.algorithms),
        thumbprint=key.thumbprint, kid=key.kid,
        subject=key.certificate.subject if key.certificate is not None else None,
        issuer=key.certificate.issuer if key.certificate is not None else None,
        not_after=iso(key.not_after)), deadline)
    entry.flags = _flags(rules, used, now, deadline=deadline, not_after=key.not_after)
    return _usage_fields(entry, used)


def _removed_keys(listed: Iterable[CredentialEntry], seen: Mapping[str, Usage],
                  source: str | None, rules: _Rules) -> list[CredentialEntry]:
    """Keys the book remembers that the client no longer holds: when each was last used
    (no flags: they are not usable)."""
    held = {entry.ref for entry in listed}
    removed = []
    for ref, used in sorted(seen.items()):
        if ref.startswith(key_ref("")) and ref not in held:
            thumbprint = ref.partition(":")[2]
            entry = _dated(CredentialEntry(kind="key", ref=ref, present=False, source=source,
                                           algorithms=[], thumbprint=thumbprint),
                           rules.deadline(None, thumbprint))
            removed.append(_usage_fields(entry, used))
    return removed


def _certificates(served: ClientRuntime | None, seen: Mapping[str, Usage],
                  rules: _Rules, now: float) -> list[CredentialEntry]:
    """A CA-anchored client's certificates, as it presented them (known by use only)."""
    held: dict[str, CertifiedLeaf] = {}
    for credential in served.credentials if served is not None else ():
        if isinstance(credential, CertificateCredential):
            for leaf in credential.chains.leaves(now):
                held[certificate_ref_of_x5t(leaf.chain.thumbprint)] = leaf
    entries = []
    for ref in sorted(seen.keys() | held.keys()):
        if not ref.startswith(certificate_ref("")):
            continue
        used, certified = seen.get(ref, NO_USAGE), held.get(ref)
        entry = CredentialEntry(kind="certificate", ref=ref, present=True, source="x5c",
                                algorithms=[], thumbprint=ref.partition(":")[2])
        not_after = None
        if certified is not None:  # validated lately: its details are at hand
            chain = certified.chain
            not_after = chain.not_after
            entry.algorithms = sorted(certified.key.algorithms)
            entry.subject = chain.subject
            entry.issuer = describe_certificate(chain.leaf).issuer
            entry.not_after, entry.present = iso(not_after), now < not_after
        entry.flags = _flags(rules, used, now, not_after=not_after)
        entries.append(_usage_fields(entry, used))
    return entries


def _trusts(served: ClientRuntime | None, client: ClientSettings, seen: Mapping[str, Usage],
            rules: _Rules, now: float) -> list[CredentialEntry]:
    algorithms = {name: sorted(trusts.issuer.algorithms)
                  for name, trusts in (served.federated.items() if served is not None else ())}
    entries = []
    for trust in client.federated:
        used = seen.get(trust_ref(trust.name), NO_USAGE)
        entry = CredentialEntry(
            kind="trust", ref=trust_ref(trust.name), present=client.enabled,
            source="federation", algorithms=algorithms.get(trust.issuer, []), name=trust.name,
            issuer=trust.issuer, subject=trust.subject or trust.subject_pattern, mode=trust.mode)
        entry.flags = _flags(rules, used, now)
        entries.append(_usage_fields(entry, used))
    return entries


def _legacy(client: ClientSettings, now: float) -> LegacyEntry | None:
    legacy = client.legacy_auth
    if legacy is None:
        return None
    sunset = refuse_from(legacy.until) if legacy.until is not None else None
    return LegacyEntry(sorted(legacy.allow), _day(legacy.until), iso(sunset),
                       sunset is not None and now >= sunset)


def _key_source(served: ClientRuntime | None) -> KeySourceEntry | None:
    registered = registered_keys(served)
    if registered is None:
        return None
    status: KeySourceStatus = registered.source.status()
    return KeySourceEntry(status.kind, status.uri, status.ready, status.stale,
                          iso(status.last_success), status.last_error)


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None
