"""Federation rules that span sections, and the lints that refuse to load a weak trust."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from gateway.config.federation import FederatedTrustSettings, FederationIssuerSettings
from gateway.config.settings import Settings
from gateway.config.yaml_dialect import join_path

Problems = list[tuple[str, str]]

LONG_REUSE = 3600.0  # a reusable token replaying for longer than this needs allow_long_reuse
# The fixed start of each platform's subject, and the owner segment right after it:
# the account (github), top-level group (gitlab), namespace (kubernetes) or trust domain.
SUBJECT_PREFIXES = {"github": "repo:", "gitlab": "project_path:",
                    "kubernetes": "system:serviceaccount:", "spiffe": "spiffe://"}
OWNER_ENDS = {"github": "/", "gitlab": "/", "kubernetes": ":"}
OWNER_NAMES = {"github": "OWNER in repo:OWNER/...", "gitlab": "GROUP in project_path:GROUP/...",
               "kubernetes": "NAMESPACE in system:serviceaccount:NAMESPACE:NAME"}
_ID_NAME = r"[^/:@*]+@[0-9]+"  # NAME@ID, the form GitHub gives immutable owners and repos
_GITHUB_IMMUTABLE = re.compile(rf"repo:{_ID_NAME}/{_ID_NAME}(?::|$)")
_GITHUB_OWNER_ID = re.compile(rf"repo:{_ID_NAME}/(?:{_ID_NAME}|[^:]*\*[^:]*)(?::|$)")
_NOT_PATTERN_SYNTAX = "?[]{}\\"
# The API server's usual audiences, which any process that reads the pod's token holds.
_K8S_API_AUDIENCE = re.compile(
    r"(?:https://)?kubernetes\.default(?:\.svc(?:\.[a-z0-9.-]+)?)?(?::443)?/?", re.I)
# AWS STS and Entra (api://AzureADTokenExchange, and its USGov and China variants).
_SHARED_AUDIENCES = ("sts.amazonaws.com", "https://sts.amazonaws.com")
_ENTRA_AUDIENCE = "api://azureadtokenexchange"
NAME_POINTER = "/kubernetes.io/serviceaccount/name"


def federation_problems(settings: Settings) -> Problems:
    """Every problem of the federated trusts, at its dotted path (empty when none)."""
    problems: Problems = _issuer_problems(settings)
    issuers = settings.federation.issuers
    for client_id, client in settings.clients.items():
        seen: set[str] = set()
        for where, trust in trusts_of(join_path("clients", client_id), client.federated):
            if trust.name in seen:
                problems.append((join_path(where, "name"),
                                 f"{trust.name!r} is already a trust of this client"))
            seen.add(trust.name)
            problems += _shape_problems(where, trust)
            problems += _common_lints(where, trust, max_lifetime(settings, client_id, trust))
            issuer = issuers.get(trust.issuer)
            if issuer is None:
                problems.append((join_path(where, "issuer"),
                                 f"{trust.issuer!r} is not a name under federation.issuers"))
            else:
                problems += _issuer_lints(where, trust, issuer)
    return problems


def trusts_of(client_path: str, trusts: tuple[FederatedTrustSettings, ...]
              ) -> Iterator[tuple[str, FederatedTrustSettings]]:
    """Each trust of a client with its dotted path."""
    for index, trust in enumerate(trusts):
        yield join_path(join_path(client_path, "federated"), index), trust


def max_lifetime(settings: Settings, client_id: str, trust: FederatedTrustSettings) -> float:
    """The longest exp - iat a trust accepts: its own, else its client's or the policy's."""
    return trust.max_lifetime or settings.effective_policy(client_id).max_lifetime


def subject_key(trust: FederatedTrustSettings) -> tuple[str, str]:
    """("subject" or "subject_pattern", its value): whichever the trust has."""
    if trust.subject is not None:
        return "subject", trust.subject
    return "subject_pattern", trust.subject_pattern or ""


def claim_rule(trust: FederatedTrustSettings, pointer: str) -> tuple[str, ...] | None:
    """The values a trust requires of one claim, given as a pointer or as a top-level name."""
    if pointer in trust.claims:
        return trust.claims[pointer]
    name = pointer[1:].replace("~1", "/").replace("~0", "~")
    return trust.claims.get(name) if "/" not in pointer[1:] else None


def _issuer_problems(settings: Settings) -> Problems:
    problems: Problems = []
    # A token picks its issuer by iss (or trust domain): two declarations of one would make
    # the choice of keys and trusts depend on the order of the file.
    claimed: dict[tuple[str, str], str] = {}
    for name, issuer in settings.federation.issuers.items():
        for key in ("issuer", "trust_domain"):
            value = getattr(issuer, key)
            if value is None:
                continue
            first = claimed.setdefault((key, value), name)
            if first != name:
                problems.append((join_path(join_path("federation.issuers", name), key),
                                 f"{value!r} is already declared by issuer {first!r}"))
    return problems


def _shape_problems(where: str, trust: FederatedTrustSettings) -> Problems:
    problems: Problems = []
    for key in trust.claims:
        if key == "":
            problems.append((join_path(where, "claims"), "a claim name must not be empty"))
        elif key.startswith("/") and re.search(r"~(?![01])", key):
            problems.append((join_path(join_path(where, "claims"), key),
                             "is not a JSON Pointer (RFC 6901): write ~ as ~0 and / as ~1"))
    if trust.subject_pattern is not None:
        pattern = trust.subject_pattern
        where_pattern = join_path(where, "subject_pattern")
        if "*" not in pattern:
            problems.append((where_pattern, "has no wildcard: use subject for an exact match"))
        elif any(c in pattern for c in _NOT_PATTERN_SYNTAX):
            problems.append((where_pattern, "only * (within a segment) and ** (across '/') are "
                             "pattern syntax: ?, [], {} and \\ are not"))
    return problems


def _common_lints(where: str, trust: FederatedTrustSettings, lifetime: float) -> Problems:
    problems: Problems = []
    if trust.audience is None and not trust.allow_any_audience:
        problems.append((join_path(where, "audience"), "is not set, so a token this issuer "
                         "minted for any other relying party is accepted too; set the audience "
                         "this gateway asks for (e.g. its issuer) or allow_any_audience: true"))
    if trust.replay == "reuse" and lifetime > LONG_REUSE and not trust.allow_long_reuse:
        problems.append((join_path(where, "replay"), f"reuse with a max_lifetime of "
                         f"{lifetime:g}s lets a leaked token replay for over an hour; set "
                         "max_lifetime to 1h or less, use single_use, or set "
                         "allow_long_reuse: true"))
    return problems


def _issuer_lints(where: str, trust: FederatedTrustSettings,
                  issuer: FederationIssuerSettings) -> Problems:
    problems: Problems = []
    key, subject = subject_key(trust)
    spiffe_prefix = f"spiffe://{issuer.trust_domain}/"
    if issuer.preset == "spiffe" and not subject.startswith(spiffe_prefix):
        problems.append((join_path(where, key), f"must start with {spiffe_prefix} (the trust "
                         f"domain of {trust.issuer}): keys of one trust domain never vouch for "
                         "another's SPIFFE IDs"))
    elif trust.subject_pattern is not None and not trust.allow_broad_pattern:
        problems += _broad_pattern(join_path(where, key), trust, issuer)
    if _is_http(issuer.issuer) and not trust.allow_http_issuer:
        problems.append((join_path(where, "issuer"), f"{trust.issuer} is plain http, so its "
                         "discovery and keys can be swapped by anyone on the path; serve it "
                         "over https or set allow_http_issuer: true"))
    if trust.audience is not None and _platform_audience(trust.audience, issuer) \
            and not trust.allow_platform_audience:
        problems.append((join_path(where, "audience"), f"{trust.audience} is a platform's "
                         "default audience, which tokens minted for other relying parties "
                         "carry too; choose an audience only this gateway asks for (e.g. its "
                         "issuer) or set allow_platform_audience: true"))
    if not trust.allow_mutable_identity:
        problems += _mutable_identity(where, trust, issuer)
    if issuer.preset == "kubernetes" and not trust.allow_default_service_account:
        problems += _default_service_account(where, trust)
    return problems


def _is_http(url: str | None) -> bool:
    return url is not None and urlsplit(url).scheme == "http"


def _platform_audience(audience: str, issuer: FederationIssuerSettings) -> bool:
    folded = audience.lower().rstrip("/")
    if folded in _SHARED_AUDIENCES or folded.startswith(_ENTRA_AUDIENCE) \
            or _K8S_API_AUDIENCE.fullmatch(audience):
        return True
    if re.fullmatch(r"https://github\.com/[^/]+", folded):
        return True
    own = (issuer.issuer or "").rstrip("/")
    if issuer.preset == "kubernetes" and audience.rstrip("/") == own:
        return True  # the API server's audience defaults to its service-account issuer
    parts = urlsplit(own)
    # GitHub Enterprise Server: https://HOST/_services/token; its default is https://HOST/OWNER.
    return (issuer.preset == "github" and parts.path == "/_services/token"
            and re.fullmatch(rf"https://{re.escape(parts.netloc)}/[^/]+", folded) is not None)


def _broad_pattern(where: str, trust: FederatedTrustSettings,
                   issuer: FederationIssuerSettings) -> Problems:
    pattern = trust.subject_pattern or ""
    prefix = SUBJECT_PREFIXES.get(issuer.preset, "")
    if issuer.preset == "spiffe":
        prefix = f"spiffe://{issuer.trust_domain}/"
    if not re.sub(r"[*/:]", "", pattern.removeprefix(prefix)):
        return [(where, "is only wildcards after the subject's fixed prefix, so every workload "
                        f"of {trust.issuer} passes; narrow it or set allow_broad_pattern: true")]
    if issuer.preset in OWNER_ENDS and "*" in owner_segment(pattern, issuer.preset):
        return [(where, f"has no literal owner ({OWNER_NAMES[issuer.preset]}), so tokens of "
                        "owners never meant, a stranger's included, may match; write the owner "
                        "out or set allow_broad_pattern: true")]
    return []


def owner_segment(subject: str, preset: str) -> str:
    """The owner segment of a subject or pattern; "*" when it has no literal prefix at all."""
    prefix = SUBJECT_PREFIXES[preset]
    if not subject.startswith(prefix):
        return "*"
    owner, end, _ = subject[len(prefix):].partition(OWNER_ENDS[preset])
    return owner if end and owner and ":" not in owner else "*"


def _mutable_identity(where: str, trust: FederatedTrustSettings,
                      issuer: FederationIssuerSettings) -> Problems:
    key, subject = subject_key(trust)
    if issuer.preset == "github":
        shape = _GITHUB_IMMUTABLE if trust.subject is not None else _GITHUB_OWNER_ID
        if shape.match(subject) or claim_rule(trust, "/repository_owner_id"):
            return []
        return [(join_path(where, key), "pins neither immutable ids (repo:OWNER@ID/REPO@ID:...) "
                 "nor repository_owner_id, so whoever registers this owner's or repo's name "
                 "after a rename or deletion gets its tokens; pin repository_owner_id under "
                 "claims or set allow_mutable_identity: true")]
    if issuer.preset == "gitlab":
        if claim_rule(trust, "/namespace_id") or claim_rule(trust, "/project_id"):
            return []
        return [(join_path(where, "claims"), "pin neither namespace_id nor project_id, so "
                 "whoever registers this group's or project's path after a rename or deletion "
                 "gets its tokens; pin one of them or set allow_mutable_identity: true")]
    return []


def _default_service_account(where: str, trust: FederatedTrustSettings) -> Problems:
    risk = ("every pod of the namespace runs as it unless told otherwise; use a dedicated "
            "service account or set allow_default_service_account: true")
    names = claim_rule(trust, NAME_POINTER)
    if names is not None and "default" in names:
        return [(join_path(join_path(where, "claims"), NAME_POINTER),
                 f"admits the default service account: {risk}")]
    key, subject = subject_key(trust)
    segments = subject.split(":")  # no wildcard crosses ':', so the segments are exact
    if len(segments) != 4:
        return []
    wanted = ("system", "serviceaccount", None, "default")
    if trust.subject is not None:
        fits = segments[3] == "default"
    else:
        fits = names is None and all(
            expected is None or _segment_matches(segment, expected)
            for segment, expected in zip(segments, wanted, strict=True))
    return [(join_path(where, key), f"may name the default service account: {risk}")] \
        if fits else []


def _segment_matches(segment: str, text: str) -> bool:
    """Whether one ':'-free pattern segment matches `text`.

    As gateway.core.subject_pattern matches: a wildcard stands for one character or more,
    `*` within a '/' segment, `**` across '/'.
    """
    regex = "".join("[^:]+" if part == "**" else "[^/:]+" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*\*|\*)", segment))
    return re.fullmatch(regex, text) is not None
