"""The inventory document's entries (``GET /inventory``), one dataclass per object of
``config/inventory.schema.json``; times are RFC 3339 UTC strings, dates ``YYYY-MM-DD``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC (``2026-06-30T12:00:00Z``), None as None."""
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass
class CredentialEntry:
    kind: str  # key, certificate or trust
    ref: str  # the usage reference: key:<thumbprint>, certificate:<sha256 hex>, trust:<name>
    present: bool  # held now (key set, configuration; a certificate: not past notAfter)
    # jwks, jwks_file, jwks_uri, x5c (presented), federation; None: a removed key of a
    # client that has no key source of its own now
    source: str | None
    algorithms: list[str]
    thumbprint: str | None = None  # key: RFC 7638; certificate: SHA-256 of the DER, hex
    kid: str | None = None
    name: str | None = None  # trust: its name
    issuer: str | None = None  # trust: the federation issuer; certificate: its issuer DN
    subject: str | None = None  # certificate's subject; trust's subject or pattern
    mode: str | None = None  # trust: enforce or shadow
    not_after: str | None = None  # the certificate's (a key's x5c leaf, a presented one)
    expiry: str | None = None  # key_expiry: the last day accepted
    retire: str | None = None  # retire: the last day of the overlap
    first_seen: str | None = None
    last_used: str | None = None
    uses: int = 0
    flags: list[str] = field(default_factory=list)


@dataclass
class SecretUse:
    method: str  # client_secret_basic or client_secret_post (migration mode)
    first_seen: str | None
    last_used: str | None
    uses: int


@dataclass
class LegacyEntry:
    methods: list[str]
    until: str | None  # the last day a secret is accepted
    sunset: str | None  # the first moment it is refused
    expired: bool


@dataclass
class KeySourceEntry:
    kind: str
    uri: str | None
    ready: bool
    stale: bool
    last_success: str | None
    last_error: str | None


@dataclass
class ClientEntry:
    client_id: str
    state: str  # active, or offboarded (enabled: false)
    owner: str | None
    contact: str | None
    description: str | None
    methods: list[str]  # the authentication methods it may use
    legacy: LegacyEntry | None
    key_source: KeySourceEntry | None
    last_success: str | None
    flags: list[str]
    credentials: list[CredentialEntry]
    secrets: list[SecretUse]
