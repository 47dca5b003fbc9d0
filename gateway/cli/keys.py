"""``pkjwt-gateway keys``: every client's key source, keys and certificates (remote sets
fetched now)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509

from gateway.adapters.jwks_fetch import JwksFetchError, fetch_jwks, loggable_uri, new_jwks_session
from gateway.adapters.key_lifecycle import client_key_warnings, key_deadlines
from gateway.config.settings import ClientSettings, Settings
from gateway.config.yaml_dialect import join_path
from gateway.core.key_certificates import (
    KeyCertificate,
    days_left,
    describe_certificate,
    expiry_warning,
)
from gateway.core.keyset import KeySet, import_jwks


@dataclass
class CertificateEntry:
    """A key's x5c leaf, or a CA anchor of a certificate client; never key material."""

    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    days_left: int
    warning: str | None = None  # expiring within certificate_expiry_warning, or expired


@dataclass
class KeyEntry:
    kid: str | None
    kty: str
    algorithms: list[str]
    thumbprint: str
    certificate: CertificateEntry | None = None
    expiry: str | None = None  # key_expiry: the last day (UTC) the key is accepted
    retire: str | None = None  # retire: the last day of its rotation overlap


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
    anchors: list[CertificateEntry] = field(default_factory=list)  # certificate: its ca_file
    # Key lifecycle: dates passed or near, names matching no key, too many keys.
    warnings: list[str] = field(default_factory=list)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class _Expiry:
    """When the inventory is taken, and how close an expiry must be to be warned about."""

    now: float
    within: float


def _certificate_entry(certificate: KeyCertificate, expiry: _Expiry) -> CertificateEntry:
    return CertificateEntry(
        certificate.subject, certificate.issuer, certificate.serial,
        _iso(certificate.not_before), _iso(certificate.not_after),
        days_left(certificate.not_after, expiry.now),
        expiry_warning(certificate.not_after, expiry.now, expiry.within))


def _entries(keyset: KeySet, expiry: _Expiry) -> list[KeyEntry]:
    return [KeyEntry(key.kid, str(key.key.key_type), sorted(key.algorithms), key.thumbprint,
                     _certificate_entry(key.certificate, expiry)
                     if key.certificate is not None else None)
            for key in keyset.keys]


def _describe_anchors(client_id: str, client: ClientSettings, expiry: _Expiry) -> ClientEntry:
    """A certificate client: the trust anchors of its ca_file (read when loading)."""
    entry = ClientEntry(client_id, client.enabled, "certificate")
    assert client.certificate is not None
    try:
        anchors = x509.load_pem_x509_certificates(client.certificate.ca_file.data)
        entry.anchors = [_certificate_entry(describe_certificate(anchor), expiry)
                         for anchor in anchors]
    except ValueError:
        entry.error = "certificate.ca_file: not a PEM bundle of certificates"
    return entry


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
    expiry = _Expiry(time.time(), settings.effective_policy(client_id).certificate_expiry_warning)
    if client.certificate is not None:
        return _describe_anchors(client_id, client, expiry)
    if not client.has_own_keys:
        return ClientEntry(client_id, client.enabled, "federated")
    if client.jwks_uri is None:
        source, document = client.configured_jwks() or ("jwks", None)
        imported = import_jwks(document, join_path(join_path("clients", client_id), source))
        entry = ClientEntry(client_id, client.enabled, source,
                            keys=_entries(imported.keyset, expiry))
        _lifecycle(entry, settings, imported.keyset, expiry.now, match_names=True)
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
    entry.keys = _entries(result.keyset, expiry) if result.keyset is not None else []
    _lifecycle(entry, settings, result.keyset, expiry.now, match_names=False)
    return entry


def _lifecycle(entry: ClientEntry, settings: Settings, keyset: KeySet | None, now: float, *,
               match_names: bool) -> None:
    """Each key's key_expiry or retire date, and the client's key lifecycle warnings."""
    deadlines = key_deadlines(settings.clients[entry.client])
    if deadlines is not None:
        for key in entry.keys:
            deadline = deadlines.of(key.kid, key.thumbprint)
            if deadline is not None:
                day = deadline.last_day.isoformat()
                key.expiry, key.retire = (None, day) if deadline.retired else (day, None)
    entry.warnings = [f"{warning[0]}: {warning[1]} [{warning.id}]" for warning in
                      client_key_warnings(settings, entry.client, keyset, now,
                                          match_names=match_names)]


def _certificate_lines(title: str, certificate: CertificateEntry) -> list[str]:
    indent = " " * (len(title) - len(title.lstrip()) + 2)
    lines = [f"{title}: subject={certificate.subject} issuer={certificate.issuer} "
             f"serial={certificate.serial}",
             f"{indent}notBefore={certificate.not_before} notAfter={certificate.not_after} "
             f"days_left={certificate.days_left}"]
    if certificate.warning is not None:
        lines.append(f"{indent}warning: certificate {certificate.warning}")
    return lines


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
            ends = (f" expiry={key.expiry}" if key.expiry else "") + (
                f" retire={key.retire}" if key.retire else "")
            lines.append(f"  kid={key.kid or '-'} kty={key.kty} alg={','.join(key.algorithms)}"
                         f" thumbprint={key.thumbprint}{ends}")
            if key.certificate is not None:
                lines += _certificate_lines("    certificate", key.certificate)
        for anchor in entry.anchors:
            lines += _certificate_lines("  ca anchor", anchor)
        for trust in entry.trusts:
            subject = (f"subject={trust.subject}" if trust.subject is not None
                       else f"subject_pattern={trust.subject_pattern}")
            pinned = f" claims={','.join(trust.claims)}" if trust.claims else ""
            lines.append(f"  trust {trust.name}: issuer={trust.issuer} {subject}{pinned}"
                         f" mode={trust.mode} replay={trust.replay}")
        lines += [f"  warning: {warning}" for warning in entry.warnings]
    return "\n".join(lines)
