"""Lint: settings that are valid but weak, each with its risk and its fix."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from urllib.parse import urlsplit

from gateway.config.settings import ClientSettings, PolicySettings, Settings
from gateway.config.yaml_dialect import join_path

LINT_MAX_LIFETIME = 300.0
LINT_MAX_CLOCK_SKEW = 60.0

Problems = list[tuple[str, str]]


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _plain_http_remote(url: str | None) -> bool:
    parts = urlsplit(url or "")
    return parts.scheme == "http" and not _is_loopback(parts.hostname)


def lint_settings(settings: Settings) -> list[tuple[str, str]]:
    """Weak but valid settings, as (dotted path, one sentence: the risk and the fix)."""
    warnings: Problems = []
    scopes: list[tuple[str, PolicySettings | ClientSettings]] = [("policy", settings.policy)]
    scopes += [(join_path("clients", cid), client) for cid, client in settings.clients.items()]
    for prefix, scope in scopes:
        warnings += _lint_policy(prefix, scope)
    today = datetime.now(UTC).date()
    for client_id, client in settings.clients.items():
        legacy = client.legacy_auth
        where = join_path(join_path("clients", client_id), "legacy_auth")
        if legacy is not None and legacy.until is None:
            warnings.append((where, "shared secrets stay accepted with no end date; set until "
                             "to the date this client must have moved to private_key_jwt"))
        elif legacy is not None and legacy.until is not None and legacy.until < today:
            warnings.append((where, f"until {legacy.until} has passed, so secrets are refused "
                             "already; remove legacy_auth (or extend it deliberately)"))
        if client.allow_assertion_reuse:
            warnings.append((join_path(join_path("clients", client_id), "allow_assertion_reuse"),
                             "a captured assertion of this client can be replayed until it "
                             "expires; keep its max_lifetime short and turn reuse off once "
                             "the client sends a fresh assertion per request"))
    for key in ("issuer", "public_url"):
        if _plain_http_remote(getattr(settings, key)):
            warnings.append((key, "clients would send assertions over plain http to a "
                                  "non-loopback host, where anyone on the path can read and "
                                  "reuse them; use https"))
    if _plain_http_remote(settings.backend.url):
        warnings.append(("backend.url", "backend credentials and tokens cross the network in "
                                        "clear over plain http; use https to a non-loopback "
                                        "backend"))
    if not _is_loopback(settings.admin.host):
        warnings.append(("admin.host", "the admin listener (metrics, health) is reachable from "
                                       "the network; bind it to 127.0.0.1 or firewall it"))
    if settings.jwks_fetch.allow_http:
        warnings.append(("jwks_fetch.allow_http", "keys fetched over plain http can be swapped "
                                                  "by anyone on the path; turn allow_http off "
                                                  "outside tests and labs"))
    if settings.jwks_fetch.allow_private_networks:
        warnings.append(("jwks_fetch.allow_private_networks", "jwks_uri may reach loopback and "
                         "private addresses, a server-side request forgery risk; turn it off "
                         "unless key hosts are internal"))
    return warnings


def _lint_policy(prefix: str, scope: PolicySettings | ClientSettings) -> Problems:
    warnings: Problems = []
    if scope.max_lifetime is not None and scope.max_lifetime > LINT_MAX_LIFETIME:
        warnings.append((f"{prefix}.max_lifetime", f"assertions may live {scope.max_lifetime:g}s, "
                         "so a captured one stays usable that long; keep it at or under "
                         f"{LINT_MAX_LIFETIME:g}s unless a client truly needs more"))
    if scope.clock_skew is not None and scope.clock_skew > LINT_MAX_CLOCK_SKEW:
        warnings.append((f"{prefix}.clock_skew", f"a clock skew of {scope.clock_skew:g}s widens "
                         "every time check by that much; fix the clients' clocks (NTP) and "
                         f"keep it at or under {LINT_MAX_CLOCK_SKEW:g}s"))
    if scope.audience == "compat":
        warnings.append((f"{prefix}.audience", "compat also accepts endpoint URLs as aud, the "
                         "form audience-injection attacks exploit (RFC 7523bis wants the issuer "
                         "alone); move clients to aud = issuer and set strict"))
    legacy = [alg for alg in scope.algorithms or () if alg.startswith("RS")]
    if legacy:
        warnings.append((f"{prefix}.algorithms", f"{', '.join(legacy)} (RSA PKCS#1 v1.5 padding) "
                         "is allowed; prefer PS256, ES256 or EdDSA and drop RS* once clients "
                         "support them"))
    return warnings
