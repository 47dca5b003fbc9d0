"""Federation settings: the platform issuers an operator trusts, and the trusts of clients."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictStr, WithJsonSchema, model_validator

from gateway.config.base import Frozen
from gateway.config.files import JwksFileSetting, ReadableFile
from gateway.config.types import Algorithms, HttpUrl, Lifetime

DEFAULT_FEDERATION_ALGORITHMS = ("RS256", "ES256", "PS256")
MAX_TRUSTS_PER_CLIENT = 100
# An issuer's or a trust's name: a metric label value and a word in logs.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# SPIFFE trust domain names: lower-case letters, digits, dots, dashes and underscores.
TRUST_DOMAIN_PATTERN = r"^[a-z0-9._-]{1,255}$"
# Where an issuer's keys come from: exactly one of these.
KEY_SOURCES = ("discovery", "jwks_uri", "jwks_file", "jwks", "bundle_endpoint")
Preset = Literal["github", "gitlab", "kubernetes", "spiffe", "none"]
Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]


def _claim_value(value: object) -> object:
    """Claim values are compared as strings: YAML's 1234 and true mean "1234" and "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


ClaimValue = Annotated[StrictStr, BeforeValidator(_claim_value)]
ClaimValues = Annotated[tuple[ClaimValue, ...], Field(strict=False, min_length=1)]


def _one_or_many(value: object) -> object:
    return value if isinstance(value, list | tuple) else [value]


_CLAIM_VALUE_SCHEMA = {"type": ["string", "integer", "boolean"]}
# A required claim: one value, or a list meaning "any of".
ClaimRule = Annotated[
    ClaimValues,
    BeforeValidator(_one_or_many),
    WithJsonSchema({"anyOf": [_CLAIM_VALUE_SCHEMA, {"type": "array", "minItems": 1,
                                                    "items": _CLAIM_VALUE_SCHEMA}]}),
]


class FederationIssuerSettings(Frozen):
    """A platform that issues workload tokens, declared once by the operator."""

    issuer: HttpUrl | None = None  # compared byte for byte with the token's `iss`
    trust_domain: Annotated[StrictStr, Field(pattern=TRUST_DOMAIN_PATTERN)] | None = None
    discovery: bool = False  # keys via {issuer}/.well-known/openid-configuration
    jwks_uri: HttpUrl | None = None
    jwks_file: JwksFileSetting | None = None
    jwks: dict[str, Any] | None = None
    bundle_endpoint: HttpUrl | None = None  # a SPIFFE trust bundle endpoint
    # Hosts the discovered jwks_uri may be on besides the issuer's own.
    jwks_hosts: Annotated[tuple[StrictStr, ...], Field(strict=False)] = ()
    algorithms: Algorithms = DEFAULT_FEDERATION_ALGORITHMS
    preset: Preset = "none"
    ca_file: ReadableFile | None = None  # extra trust anchors for this issuer's https
    bearer_token_file: StrictStr | None = None  # re-read on every fetch; never read at load
    allow_private_networks: bool = False  # in-cluster addresses, opted in per issuer

    @model_validator(mode="after")
    def _shape(self) -> FederationIssuerSettings:
        sources = [name for name in KEY_SOURCES
                   if getattr(self, name) not in (None, False)]
        if len(sources) != 1:
            raise ValueError(f"needs exactly one of {', '.join(KEY_SOURCES)} "
                             f"(has {len(sources)})")
        spiffe = self.trust_domain is not None
        if spiffe != (self.preset == "spiffe"):
            raise ValueError("trust_domain and preset: spiffe go together")
        if not spiffe and self.issuer is None:
            raise ValueError("needs issuer (or trust_domain with preset: spiffe)")
        if self.bundle_endpoint is not None and not spiffe:
            raise ValueError("bundle_endpoint is for SPIFFE trust domains (trust_domain)")
        if self.discovery and self.issuer is None:
            raise ValueError("discovery needs issuer")
        if self.jwks_hosts and not self.discovery:
            raise ValueError("jwks_hosts only applies with discovery")
        return self

    @property
    def key_source(self) -> str:
        """Which of KEY_SOURCES gives this issuer's keys."""
        return next(name for name in KEY_SOURCES if getattr(self, name) not in (None, False))


class FederationSettings(Frozen):
    issuers: dict[Name, FederationIssuerSettings] = Field(default_factory=dict)


class FederatedTrustSettings(Frozen):
    """One identity of a platform that a client accepts as its assertion."""

    name: Name  # unique within the client; a metric label
    issuer: StrictStr  # a name under federation.issuers
    audience: StrictStr | None = None  # the token's aud must be exactly this
    subject: StrictStr | None = None
    subject_pattern: StrictStr | None = None
    # Every entry must hold; a key starting with "/" is a JSON Pointer (RFC 6901).
    claims: dict[StrictStr, ClaimRule] = Field(default_factory=dict)
    max_lifetime: Lifetime | None = None  # exp - iat; replaces the policy's for this trust
    replay: Literal["single_use", "reuse"] = "single_use"
    mode: Literal["enforce", "shadow"] = "enforce"
    # Lints that refuse to load, each overridden only by its own switch (see the README).
    allow_any_audience: bool = False
    allow_platform_audience: bool = False
    allow_mutable_identity: bool = False
    allow_broad_pattern: bool = False
    allow_default_service_account: bool = False
    allow_long_reuse: bool = False
    allow_http_issuer: bool = False

    @model_validator(mode="after")
    def _one_subject(self) -> FederatedTrustSettings:
        if (self.subject is None) == (self.subject_pattern is None):
            raise ValueError("needs exactly one of subject, subject_pattern")
        if self.subject_pattern is not None and re.search(r"\*{3,}", self.subject_pattern):
            raise ValueError("subject_pattern: use * (one segment) or ** (across '/'), not ***")
        if self.subject == "":
            raise ValueError("subject must not be empty")
        return self


FederatedTrusts = Annotated[tuple[FederatedTrustSettings, ...],
                            Field(strict=False, max_length=MAX_TRUSTS_PER_CLIENT)]
