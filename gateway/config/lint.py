"""Lint: settings that are valid but weak, each with its risk and its fix."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from gateway.config.federation import FederatedTrustSettings
from gateway.config.federation_rules import claim_rule, max_lifetime, trusts_of
from gateway.config.settings import ClientSettings, PolicySettings, Settings
from gateway.config.yaml_dialect import join_path

LINT_MAX_LIFETIME = 300.0
LINT_MAX_CLOCK_SKEW = 60.0
KUBERNETES_MIN_LIFETIME = 600.0  # expirationSeconds may not be set lower

Problems = list[tuple[str, str]]


class LintWarning(tuple[str, str]):
    """A weak setting: (dotted path, message: the risk; the fix), with a stable ``id`` that
    `check --accept` names it by."""

    id: str

    def __new__(cls, warning_id: str, path: str, message: str) -> LintWarning:
        warning = super().__new__(cls, (path, message))
        warning.id = warning_id
        return warning


def _warn(warning_id: str, path: str, message: str) -> LintWarning:
    return LintWarning(warning_id, path, message)


def warning_id(warning: tuple[str, str]) -> str:
    """The warning's id: its own, else one made of the last key of its path."""
    if isinstance(warning, LintWarning):
        return warning.id
    last = re.sub(r"\[\d+\]$", "", warning[0]).rpartition(".")[2]
    return last.replace("_", "-") or "warning"


def is_accepted(warning: tuple[str, str], accepted: Iterable[str]) -> bool:
    """Whether ``accepted`` (`check --accept` values) names the warning: ``ID`` accepts it
    everywhere, ``ID=PATH`` at that dotted path only."""
    wid = warning_id(warning)
    return any(entry in (wid, f"{wid}={warning[0]}") for entry in accepted)


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
    """Weak but valid settings, as (dotted path, one sentence: the risk and the fix); each
    a LintWarning or a pair whose id ``warning_id`` gives."""
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
            warnings.append(_warn("legacy-auth-no-end", where, "shared secrets stay accepted "
                                  "with no end date; set until to the date this client must "
                                  "have moved to private_key_jwt"))
        elif legacy is not None and legacy.until is not None and legacy.until < today:
            warnings.append(_warn("legacy-auth-past", where, f"until {legacy.until} has "
                                  "passed, so secrets are refused already; remove "
                                  "legacy_auth (or extend it deliberately)"))
        if client.allow_assertion_reuse:
            warnings.append(_warn("assertion-reuse",
                                  join_path(join_path("clients", client_id),
                                            "allow_assertion_reuse"),
                                  "a captured assertion of this client can be replayed until "
                                  "it expires; keep its max_lifetime short and turn reuse off "
                                  "once the client sends a fresh assertion per request"))
        warnings += _lint_trusts(settings, client_id)
    for key in ("issuer", "public_url"):
        if _plain_http_remote(getattr(settings, key)):
            warnings.append(_warn("plain-http-issuer", key, "clients would send assertions "
                                  "over plain http to a non-loopback host, where anyone on the "
                                  "path can read and reuse them; use https"))
    if _plain_http_remote(settings.backend.url):
        warnings.append(_warn("plain-http-backend", "backend.url", "backend credentials and "
                              "tokens cross the network in clear over plain http; use https "
                              "to a non-loopback backend"))
    if not _is_loopback(settings.admin.host):
        warnings.append(_warn("admin-exposed", "admin.host", "the admin listener (metrics, "
                              "health) is reachable from the network; bind it to 127.0.0.1 "
                              "or firewall it"))
    for network in settings.listen.trusted_proxies:
        if network.endswith("/0"):
            warnings.append(_warn("trusted-proxies", "listen.trusted_proxies",
                                  f"{network} trusts every address, so "
                                  "any client can name its own address for the audit log "
                                  "and the failure brakes; list only the networks of your "
                                  "proxies"))
    if settings.jwks_fetch.allow_http:
        warnings.append(_warn("jwks-allow-http", "jwks_fetch.allow_http", "keys fetched over "
                              "plain http can be swapped by anyone on the path; turn "
                              "allow_http off outside tests and labs"))
    if settings.jwks_fetch.allow_private_networks:
        warnings.append(_warn("jwks-private-networks", "jwks_fetch.allow_private_networks",
                              "jwks_uri may reach loopback and private addresses, a "
                              "server-side request forgery risk; turn it off unless key "
                              "hosts are internal"))
    return warnings


def _lint_policy(prefix: str, scope: PolicySettings | ClientSettings) -> Problems:
    warnings: Problems = []
    if scope.max_lifetime is not None and scope.max_lifetime > LINT_MAX_LIFETIME:
        warnings.append(_warn("long-max-lifetime", f"{prefix}.max_lifetime",
                              f"assertions may live {scope.max_lifetime:g}s, so a captured "
                              "one stays usable that long; keep it at or under "
                              f"{LINT_MAX_LIFETIME:g}s unless a client truly needs more"))
    if scope.clock_skew is not None and scope.clock_skew > LINT_MAX_CLOCK_SKEW:
        warnings.append(_warn("wide-clock-skew", f"{prefix}.clock_skew",
                              f"a clock skew of {scope.clock_skew:g}s widens every time check "
                              "by that much; fix the clients' clocks (NTP) and keep it at or "
                              f"under {LINT_MAX_CLOCK_SKEW:g}s"))
    if scope.audience == "compat":
        warnings.append(_warn("audience-compat", f"{prefix}.audience",
                              "compat also accepts endpoint URLs as aud, the form "
                              "audience-injection attacks exploit (RFC 7523bis wants the "
                              "issuer alone); move clients to aud = issuer and set strict"))
    # Only a list the operator wrote: the default list keeps RS256 for the clients that
    # need it (MSAL's thumbprint mode), and the defaults pass `check --strict`.
    chosen = scope.algorithms if "algorithms" in scope.model_fields_set else None
    legacy = [alg for alg in chosen or () if alg.startswith("RS")]
    if legacy:
        warnings.append(_warn("rsa-pkcs1", f"{prefix}.algorithms",
                              f"{', '.join(legacy)} (RSA PKCS#1 v1.5 padding) is allowed; "
                              "prefer PS256, ES256 or EdDSA and drop RS* once clients "
                              "support them"))
    return warnings


def _lint_trusts(settings: Settings, client_id: str) -> Problems:
    warnings: Problems = []
    issuers = settings.federation.issuers
    client_path = join_path("clients", client_id)
    for where, trust in trusts_of(client_path, settings.clients[client_id].federated):
        issuer = issuers.get(trust.issuer)
        preset = issuer.preset if issuer is not None else "none"
        if preset == "github":
            warnings += _lint_github(where, trust)
        if preset == "gitlab" and claim_rule(trust, "/ref_protected") != ("true",) \
                and claim_rule(trust, "/environment") is None:
            warnings.append(_warn("gitlab-unprotected-refs", join_path(where, "claims"),
                                  "unprotected branches and merge requests, fork code "
                                  "included, get tokens that match too; pin "
                                  'ref_protected: "true" or environment'))
        lifetime = max_lifetime(settings, client_id, trust)
        if preset == "kubernetes" and lifetime < KUBERNETES_MIN_LIFETIME:
            warnings.append(_warn("kubernetes-short-lifetime", join_path(where, "max_lifetime"),
                                  f"{lifetime:g}s is shorter than any Kubernetes token lives "
                                  "(10 minutes at least), so every one would be refused; set "
                                  "it to the volume's expirationSeconds"))
        if trust.replay == "reuse":
            warnings.append(_warn("trust-reuse", join_path(where, "replay"),
                                  "a leaked token of this trust replays until it expires; "
                                  "keep max_lifetime short and use single_use once the "
                                  "platform sends a fresh jti per token"))
    return warnings


def _lint_github(where: str, trust: FederatedTrustSettings) -> Problems:
    warnings: Problems = []
    pattern = trust.subject_pattern
    if pattern is not None and claim_rule(trust, "/event_name") is None \
            and claim_rule(trust, "/environment") is None \
            and not re.search(r":environment:[^*:]+(?::|$)", pattern):
        warnings.append(_warn("github-unpinned-trigger", join_path(where, "subject_pattern"),
                              "a pattern admits every trigger it matches, pull_request_target "
                              "runs steered into fork code included; pin event_name (e.g. "
                              "[push, workflow_dispatch]) or environment under claims"))
    if claim_rule(trust, "/runner_environment") != ("github-hosted",):
        warnings.append(_warn("github-self-hosted-runners", join_path(where, "claims"),
                              "tokens of self-hosted runners are minted on hosts GitHub does "
                              "not control, and whoever holds the host takes the job's token; "
                              "pin runner_environment: github-hosted"))
    return warnings
