"""Configuration: one YAML file to frozen, typed settings, every problem reported at once."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    StrictStr,
    field_validator,
    model_validator,
)

from gateway.config.base import Frozen
from gateway.config.certificate import CertificateSettings
from gateway.config.federation import FederatedTrusts, FederationSettings
from gateway.config.files import (
    JwksFileSetting,
    ReadableFile,
    SecretFile,
    SecretFileSetting,
)
from gateway.config.schema import describe_schema

# Part of this module's public API; defined beside the types that use them.
from gateway.config.types import (
    SUPPORTED_ALGORITHMS as SUPPORTED_ALGORITHMS,
)
from gateway.config.types import (
    Algorithms,
    Audience,
    ClientId,
    ClockSkew,
    Duration,
    EnvSecret,
    Host,
    HostPorts,
    HttpUrl,
    Lifetime,
    Networks,
    Paths,
    Port,
    RedisUrl,
    duration_field,
)
from gateway.config.types import parse_duration as parse_duration

DEFAULT_ALGORITHMS = ("PS256", "ES256", "EdDSA", "RS256")
DEFAULT_MAX_LIFETIME = 300.0
DEFAULT_CLOCK_SKEW = 15.0
DEFAULT_BACKEND_TIMEOUT = 10.0
DEFAULT_BACKEND_KEEPALIVE = 4.0
DEFAULT_MEMORY_MAX_ENTRIES = 1_000_000
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"



def _secret_text(inline: SecretStr | None, file: SecretFile | None) -> str | None:
    """A secret given as `!env NAME` or as a file read when loading; None when neither."""
    if inline is not None:
        return inline.get_secret_value()
    if file is not None:
        return file.secret.get_secret_value()
    return None


class TlsSettings(Frozen):
    cert_file: StrictStr  # PEM chain, leaf first; resolved against the config file's directory
    key_file: StrictStr


class ListenSettings(Frozen):
    host: Host = "0.0.0.0"
    port: Port = 8080
    # On SIGTERM: stop accepting, then give requests in flight this long to finish.
    shutdown_grace: Duration = duration_field("15s", gt=0)
    tls: TlsSettings | None = None  # serve https directly
    # Proxies in front (addresses or CIDR networks): from them, the client's address and
    # scheme are read from X-Forwarded-For and X-Forwarded-Proto.
    trusted_proxies: Networks = ()


class AdminSettings(Frozen):
    host: Host = "127.0.0.1"
    port: Port = 9100


class BackendSettings(Frozen):
    url: HttpUrl
    timeout: Duration = duration_field("10s", gt=0)
    # How long an idle connection to the backend is kept for reuse; 0: a new one per request.
    # Keep it below the backend's own idle timeout (Node 5 s, gunicorn 2 s): a POST is never
    # retried, so one sent just as the backend hangs up fails with 502.
    keepalive: Duration = duration_field("4s", ge=0)


# A lifecycle duration: days are the natural unit (90d).
LifecycleAge = Annotated[Duration, Field(gt=0)]
# A key named by its kid or its RFC 7638 thumbprint -> the last day (UTC) it is accepted.
KeyDates = dict[Annotated[StrictStr, Field(min_length=1, max_length=256)], date]


class PolicySettings(Frozen):
    algorithms: Algorithms = DEFAULT_ALGORITHMS
    max_lifetime: Lifetime = duration_field("300s")
    clock_skew: ClockSkew = duration_field("15s")
    audience: Audience = "strict"
    require_typ: bool = False
    # A certificate (x5c leaf) expiring within this is warned about by check and keys.
    certificate_expiry_warning: Duration = duration_field("14d", ge=0)
    # true: a registered key whose x5c leaf has expired (plus clock_skew) stops verifying.
    refuse_expired_certificates: bool = False
    # Key lifecycle, each off unless set: shown by check, keys, the inventory and the gauges.
    key_max_age: LifecycleAge | None = None  # a key first seen longer ago is old
    key_unused_after: LifecycleAge | None = None  # a key not used for longer is unused
    client_dormant_after: LifecycleAge | None = None  # no successful authentication for longer
    max_keys_per_client: Annotated[int, Field(ge=1)] | None = None


class JwksFetchSettings(Frozen):
    timeout: Duration = duration_field("3s", gt=0)
    min_ttl: Duration = duration_field("60s", gt=0)
    max_ttl: Duration = duration_field("24h", gt=0)
    max_stale: Duration = duration_field("6h", ge=0)
    unknown_kid_refresh: Duration = duration_field("30s", gt=0)
    max_bytes: int = Field(default=65_536, gt=0)
    allow_http: bool = False
    allow_private_networks: bool = False
    ca_file: ReadableFile | None = None  # resolved against the config file's directory
    # /readyz waits for every remote key set's first fetch unless this is true.
    ready_without_keys: bool = False

    @model_validator(mode="after")
    def _ttl_order(self) -> JwksFetchSettings:
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        return self


class ReplaySettings(Frozen):
    store: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl = DEFAULT_REDIS_URL
    # Sentinel (with the master's name) or Cluster instead of one server:
    redis_sentinels: HostPorts = ()
    redis_sentinel_master: StrictStr | None = None
    redis_cluster_nodes: HostPorts = ()
    redis_username: StrictStr | None = None
    redis_password: EnvSecret | None = None
    redis_password_file: SecretFileSetting | None = None
    redis_max_connections: int = Field(default=64, gt=0, le=10_000)
    timeout: Duration = duration_field("250ms", gt=0)  # budget of one replay check
    on_store_error: Literal["reject"] = "reject"
    max_entries: int = Field(default=DEFAULT_MEMORY_MAX_ENTRIES, gt=0)

    @model_validator(mode="after")
    def _one_topology(self) -> ReplaySettings:
        if bool(self.redis_sentinels) != (self.redis_sentinel_master is not None):
            raise ValueError("redis_sentinels and redis_sentinel_master go together")
        if self.redis_sentinels and self.redis_cluster_nodes:
            raise ValueError("choose one of redis_sentinels, redis_cluster_nodes")
        if self.redis_password is not None and self.redis_password_file is not None:
            raise ValueError("choose one of redis_password, redis_password_file")
        return self

    def password_value(self) -> str | None:
        """The Redis password, from !env or redis_password_file (read when loading)."""
        return _secret_text(self.redis_password, self.redis_password_file)


class BucketSettings(Frozen):
    rate: float = Field(default=5.0, gt=0, strict=False)  # tokens back per second
    burst: int = Field(default=50, ge=1)  # failures allowed in a row before slowing down


class LimitSettings(Frozen):
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=1024 * 1024)
    max_line_size: int = Field(default=8190, ge=256, le=65536)  # request line
    max_header_size: int = Field(default=8190, ge=256, le=65536)  # one header field
    max_headers: int = Field(default=64, ge=8, le=1024)
    body_timeout: Duration = duration_field("10s", gt=0)  # to read a whole body
    keepalive_timeout: Duration = duration_field("15s", gt=0)  # idle client connections
    max_in_flight: int = Field(default=1024, ge=1)  # requests handled at once; then 503
    max_connections: int = Field(default=10_000, ge=1)  # open client connections; then 503
    # Generous: anyone who knows a client id can spend its budget (a targeted slow-down).
    failures_per_client: BucketSettings = Field(
        default_factory=lambda: BucketSettings(rate=5.0, burst=50))
    # Generous: behind a load balancer many clients may share one address.
    failures_per_address: BucketSettings = Field(
        default_factory=lambda: BucketSettings(rate=20.0, burst=200))
    max_tracked: int = Field(default=100_000, ge=100)  # keys each failure limiter holds


# The operational log's own stream: audit lines there would interleave with it.
OPERATIONAL_LOG_STREAMS = frozenset({"/dev/stderr", "/dev/fd/2", "/proc/self/fd/2"})


class AuditSettings(Frozen):
    # "stdout", "off", or a file path (appended to; relative to the config file).
    output: StrictStr = "stdout"

    @field_validator("output")
    @classmethod
    def _not_the_log_stream(cls, output: str) -> str:
        if output in OPERATIONAL_LOG_STREAMS:
            raise ValueError(f"{output} is where the operational log goes; use stdout, off "
                             "or a file")
        return output


class UsageSettings(Frozen):
    # Usage per credential (first seen, last used, uses); with replay.store: redis, shared.
    enabled: bool = True
    flush_interval: Duration = duration_field("5s", ge=1, le=300)


class LogSettings(Frozen):
    # The operational log (stderr): plain text or one JSON object per line, times in UTC.
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class BackendAuthSettings(Frozen):
    method: Literal["client_secret_basic", "client_secret_post", "none"]
    secret: EnvSecret | None = None
    secret_file: SecretFileSetting | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> BackendAuthSettings:
        given = (self.secret is not None) + (self.secret_file is not None)
        if self.method == "none" and given:
            raise ValueError("method none sends no secret: remove secret and secret_file")
        if self.method != "none" and given != 1:
            raise ValueError(f"method {self.method} needs exactly one of secret, secret_file")
        return self

    def secret_value(self) -> str | None:
        """The backend secret, from !env or secret_file (read when loading); None for none."""
        return _secret_text(self.secret, self.secret_file)


class LegacyAuthSettings(Frozen):
    # Shared-secret methods this client may still use; its requests go to the backend as
    # they came, and the backend checks the secret.
    allow: Annotated[tuple[Literal["client_secret_basic", "client_secret_post"], ...],
                     Field(strict=False, min_length=1)]
    until: date | None = None  # last day allowed (UTC); from the next day it is refused
    # When the secret became deprecated (00:00 UTC): the Deprecation header's date.
    since: date | None = None

    @model_validator(mode="after")
    def _since_before_until(self) -> LegacyAuthSettings:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"since ({self.since}) is after until ({self.until})")
        return self


class ClientSettings(Frozen):
    jwks: dict[str, Any] | None = None
    jwks_file: JwksFileSetting | None = None
    jwks_uri: HttpUrl | None = None
    backend_auth: BackendAuthSettings
    algorithms: Algorithms | None = None
    max_lifetime: Lifetime | None = None
    clock_skew: ClockSkew | None = None
    audience: Audience | None = None
    require_typ: bool | None = None
    certificate_expiry_warning: Annotated[Duration, Field(ge=0)] | None = None
    refuse_expired_certificates: bool | None = None
    key_max_age: LifecycleAge | None = None
    key_unused_after: LifecycleAge | None = None
    client_dormant_after: LifecycleAge | None = None
    max_keys_per_client: Annotated[int, Field(ge=1)] | None = None
    # Registered keys' ends: from the day after its date (00:00 UTC) a key is refused.
    key_expiry: KeyDates = Field(default_factory=dict)
    retire: KeyDates = Field(default_factory=dict)  # the end of a rotation overlap
    enabled: bool = True
    # Accept the byte-identical assertion again until it expires (MSAL re-sends one).
    allow_assertion_reuse: bool = False
    legacy_auth: LegacyAuthSettings | None = None
    # Platform identities (federation.issuers) this client accepts as its assertion.
    federated: FederatedTrusts = ()
    # A certificate a configured CA issued, sent in each assertion's x5c (instead of jwks*).
    certificate: CertificateSettings | None = None
    # Who answers for the client: shown by the inventory only, never in metrics or logs.
    owner: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    contact: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[StrictStr, Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> ClientSettings:
        given = [n for n in ("jwks", "jwks_file", "jwks_uri") if getattr(self, n) is not None]
        if given and self.certificate is not None:
            raise ValueError("certificate and jwks, jwks_file, jwks_uri exclude each other: "
                             "a client has registered keys or a CA, not both")
        if len(given) > 1 or (not given and self.certificate is None and not self.federated):
            raise ValueError("needs a certificate, or exactly one of jwks, jwks_file, jwks_uri "
                             f"(has {len(given)}), and/or federated trusts")
        return self

    @model_validator(mode="after")
    def _key_dates(self) -> ClientSettings:
        if (self.key_expiry or self.retire) and not self.has_own_keys:
            raise ValueError("key_expiry and retire name registered keys: the client needs "
                             "jwks, jwks_file or jwks_uri")
        both = sorted(self.key_expiry.keys() & self.retire.keys())
        if both:
            raise ValueError(f"{both[0]!r} is in both key_expiry and retire: a key ends once, "
                             "keep one")
        return self

    @property
    def has_own_keys(self) -> bool:
        return (self.jwks, self.jwks_file, self.jwks_uri) != (None, None, None)

    def configured_jwks(self) -> tuple[str, object] | None:
        """The key naming the client's JWK Set ("jwks" or "jwks_file") and the set as given.

        None for a jwks_uri client. The set is not checked here: importing its keys
        (keyset.import_jwks) reports every problem at its path.
        """
        if self.jwks_file is not None:
            return "jwks_file", self.jwks_file.document
        if self.jwks is not None:
            return "jwks", self.jwks
        return None


class Settings(Frozen):
    issuer: HttpUrl
    public_url: HttpUrl | None = None
    listen: ListenSettings = Field(default_factory=ListenSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    backend: BackendSettings
    endpoints: Annotated[Paths, Field(min_length=1)]
    passthrough: Paths = ()
    policy: PolicySettings = Field(default_factory=PolicySettings)
    jwks_fetch: JwksFetchSettings = Field(default_factory=JwksFetchSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    federation: FederationSettings = Field(default_factory=FederationSettings)
    clients: Annotated[dict[ClientId, ClientSettings], Field(min_length=1)]

    def effective_policy(self, client_id: str) -> PolicySettings:
        """The policy with the client's overrides merged in; raises KeyError for an unknown id."""
        client = self.clients[client_id]
        overrides = {
            name: getattr(client, name)
            for name in PolicySettings.model_fields
            if getattr(client, name) is not None
        }
        return self.policy.model_copy(update=overrides)

    def public_base(self) -> str:
        """Where clients reach the gateway: public_url or the issuer's origin, no trailing slash."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        parts = urlsplit(self.issuer)
        return f"{parts.scheme}://{parts.netloc}"


def settings_json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (for editors and CI), every key described."""
    schema = Settings.model_json_schema(mode="validation")
    describe_schema(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
