"""How long a fetched JWKS may be used: HTTP cache headers clamped to the configured bounds."""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Mapping

from gateway.config.settings import JwksFetchSettings

_NO_REUSE = frozenset({"no-store", "no-cache"})


def cache_lifetime(headers: Mapping[str, str], now: float, settings: JwksFetchSettings) -> float:
    """Seconds the response's keys may be used, within [min_ttl, max_ttl]; never raises.

    ``Cache-Control: max-age`` (less ``Age``) wins over ``Expires`` (taken relative to
    ``Date`` when the server sent one, else to `now`); ``s-maxage`` is for shared caches
    and ignored; ``no-store``/``no-cache`` and responses without either header get min_ttl,
    so an unknown server is asked again soon rather than trusted for long. A malformed
    value counts as already expired (RFC 9111 §4.2.1), which also means min_ttl.
    """
    lifetime = _max_age(headers)
    if lifetime is None:
        lifetime = _expires(headers, now)
    return clamp_lifetime(lifetime if lifetime is not None else 0.0, settings)


def clamp_lifetime(seconds: float, settings: JwksFetchSettings) -> float:
    """``seconds`` brought within [min_ttl, max_ttl]."""
    return min(max(seconds, settings.min_ttl), settings.max_ttl)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # A multidict (aiohttp's headers) may hold a repeated field: its values form one list.
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values = getall(name, [])
        return ",".join(values) if values else None
    return headers.get(name)


def _directives(value: str) -> dict[str, str]:
    directives: dict[str, str] = {}
    for part in value.split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            directives.setdefault(name.strip().lower(), argument.strip().strip('"'))
    return directives


def _seconds(value: str | None) -> int | None:
    if value is None or not value.isdigit() or not value.isascii():
        return None
    return int(value)


def _max_age(headers: Mapping[str, str]) -> float | None:
    value = _header(headers, "Cache-Control")
    if value is None:
        return None
    directives = _directives(value)
    if _NO_REUSE & directives.keys():
        return 0.0
    if "max-age" not in directives:
        return None
    max_age = _seconds(directives["max-age"])
    if max_age is None:
        return 0.0
    age = _seconds(_header(headers, "Age")) or 0
    return float(max_age - age)


def _expires(headers: Mapping[str, str], now: float) -> float | None:
    value = _header(headers, "Expires")
    if value is None:
        return None
    expires = _http_date(value)
    if expires is None:
        return 0.0
    date_value = _header(headers, "Date")
    date = _http_date(date_value) if date_value is not None else None
    return expires - (date if date is not None else now)


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000" zone: HTTP dates are always GMT
        return parsed.replace(tzinfo=datetime.UTC).timestamp()
    return parsed.timestamp()
