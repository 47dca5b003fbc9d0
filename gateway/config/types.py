"""Value types of the config: durations, URLs, paths, algorithms, client ids, env-only secrets."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
)

from gateway.config.yaml_dialect import EnvReference, EnvStr

# Algorithms that may ever be configured. "none" and HS* (shared secrets) never can.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
     "EdDSA", "Ed25519"}
)
MAX_CLOCK_SKEW = 300.0  # beyond this the time checks stop meaning anything
MAX_LIFETIME_LIMIT = 86_400.0  # the replay ledger holds every jti this long

# Validation context flag: values come from a config file, so durations need units
# and secrets must arrive through !env. Python callers building settings skip both.
FROM_FILE = "from_file"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SECRET_IN_YAML = "secrets never appear in the YAML itself: use !env NAME or secret_file"
# What an unresolved `!env` redis_url stands for (.invalid never resolves, RFC 6761).
UNRESOLVED_REDIS_URL = "redis://unresolved.invalid:6379/0"


def parse_duration(value: object) -> float:
    """Seconds in "250ms", "15s", "5m", "1h", "14d" or "1.5s"; raises ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"a duration needs a unit, e.g. '{value}s' (ms, s, m, h or d)")
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("must be a duration such as '250ms', '15s', '5m', '1h' or '14d'")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def _from_file(info: ValidationInfo) -> bool:
    return isinstance(info.context, Mapping) and bool(info.context.get(FROM_FILE))


def _duration(value: object, info: ValidationInfo) -> object:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return value if numeric and not _from_file(info) else parse_duration(value)


def duration_field(default: str, **constraints: Any) -> Any:
    """A pydantic Field whose default is written, and shown in the schema, as a duration."""
    return Field(parse_duration(default), json_schema_extra={"default": default}, **constraints)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if "?" in value or "#" in value:
        raise ValueError("must not have a query or a fragment")
    if "@" in parts.netloc:
        raise ValueError(f"must not hold credentials: {SECRET_IN_YAML}")
    if not value.isprintable() or " " in value:
        raise ValueError("must not contain spaces or control characters")
    try:
        parts.port  # noqa: B018  (raises for a port out of range)
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def _check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path starting with '/'")
    if any(c in value for c in "?# ") or not value.isprintable():
        raise ValueError("must be a bare path (no query, fragment, spaces or control characters)")
    if any(segment in (".", "..") for segment in value.split("/")):
        raise ValueError("must not contain '.' or '..' segments")
    return value


def _check_algorithm(value: str) -> str:
    if value.lower() == "none" or value.upper().startswith("HS"):
        raise ValueError(f"{value!r} is never allowed: private_key_jwt needs a public-key one")
    if value not in SUPPORTED_ALGORITHMS:
        supported = ", ".join(sorted(SUPPORTED_ALGORITHMS))
        raise ValueError(f"unsupported algorithm {value!r} (one of {supported})")
    return value


def _check_client_id(value: str) -> str:
    if not value:
        raise ValueError("a client id must not be empty")
    if not value.isprintable():
        raise ValueError("a client id must not contain control characters")
    return value


def _env_only(value: object, info: ValidationInfo) -> object:
    if isinstance(value, str) and not isinstance(value, EnvStr) and _from_file(info):
        raise ValueError(SECRET_IN_YAML)
    if value == "":
        raise ValueError("must not be empty")
    return value


def _check_redis_url(value: object, info: ValidationInfo) -> object:
    if isinstance(value, EnvReference):
        return UNRESOLVED_REDIS_URL  # loaded without secrets: never connected to
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.password and not isinstance(value, EnvStr) and _from_file(info):
            raise ValueError(SECRET_IN_YAML)
    return value


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$"}),
]
HttpUrl = Annotated[StrictStr, AfterValidator(_check_http_url)]
UrlPath = Annotated[StrictStr, AfterValidator(_check_path)]
Algorithm = Annotated[StrictStr, AfterValidator(_check_algorithm)]
# YAML gives lists; strict mode would take only tuples, so the sequence alone is lax.
Algorithms = Annotated[tuple[Algorithm, ...], Field(strict=False, min_length=1)]
Paths = Annotated[tuple[UrlPath, ...], Field(strict=False)]
Host = Annotated[StrictStr, Field(min_length=1)]
Port = Annotated[int, Field(ge=0, le=65535)]
ClientId = Annotated[str, AfterValidator(_check_client_id)]
Audience = Literal["strict", "compat"]
Lifetime = Annotated[Duration, Field(gt=0, le=MAX_LIFETIME_LIMIT)]
ClockSkew = Annotated[Duration, Field(ge=0, le=MAX_CLOCK_SKEW)]
# Checked before conversion, while an !env value still carries its EnvStr mark.
EnvSecret = Annotated[SecretStr, BeforeValidator(_env_only)]
RedisUrl = Annotated[StrictStr, BeforeValidator(_check_redis_url)]


def _check_host_port(value: object) -> object:
    if not isinstance(value, str):
        return value  # the str type reports it
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    return value


HostPort = Annotated[StrictStr, BeforeValidator(_check_host_port)]
HostPorts = Annotated[tuple[HostPort, ...], Field(strict=False)]


_NOT_A_NETWORK = ("must be an IP address or a network in CIDR notation, e.g. 10.0.0.0/8 or "
                  "2001:db8::/32 (no zone id)")


def _check_network(value: str) -> str:
    if "%" in value:  # a zone id names an interface, which forwarded addresses never carry
        raise ValueError(_NOT_A_NETWORK)
    try:
        network = ipaddress.ip_network(value)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(_NOT_A_NETWORK) from None
        raise ValueError(f"has host bits set; the network is {loose}") from None
    return str(network)


Network = Annotated[StrictStr, AfterValidator(_check_network)]
Networks = Annotated[tuple[Network, ...], Field(strict=False)]
