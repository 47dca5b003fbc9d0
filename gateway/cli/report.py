"""``pkjwt-gateway report``: which clients still authenticate, or try to, with shared secrets,
and which offboarded clients (``enabled: false``) still try."""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import get_args

from prometheus_client.parser import text_string_to_metric_families

from gateway.config.settings import Settings
from gateway.core.attempt import PRIVATE_KEY_JWT
from gateway.core.certificate_credential import CERTIFICATE
from gateway.core.federation import FEDERATED
from gateway.core.legacy import SecretMethod
from gateway.core.reasons import Reason

AUTH_METRIC = "pkjwt_client_auth_total"
KEY_METHOD = PRIVATE_KEY_JWT
# Methods that are no shared secret: the client's own keys, a certificate, a platform's token.
KEY_METHODS = frozenset({KEY_METHOD, FEDERATED, CERTIFICATE})
SECRET_METHODS: tuple[str, ...] = get_args(SecretMethod)
FETCH_TIMEOUT = 10.0
DISABLED_REASON = Reason.CLIENT_DISABLED.value
# The counts' result word for attempts of an offboarded client (reason client_disabled).
OFFBOARDED = "offboarded"
# What the report counts: every accepted request, refused ones that tried a secret
# (secret_not_allowed, legacy_auth_expired: a configured client still sending its secret),
# and every attempt of an offboarded client.
COUNTED = (f'{AUTH_METRIC}{{result="accepted"}}',
           f'{AUTH_METRIC}{{result="rejected", method=~"{"|".join(SECRET_METHODS)}"}}',
           f'{AUTH_METRIC}{{result="rejected", reason="{DISABLED_REASON}"}}')
# A Prometheus duration: 30d, 12h, 1h30m.
WINDOW = re.compile(r"(?:[0-9]+(?:ms|[smhdwy]))+")

# (client, method, result) -> requests; result "offboarded": refused as client_disabled
Counts = dict[tuple[str, str, str], float]


@dataclass
class ClientUsage:
    client: str
    allowed: list[str]
    until: str | None
    days_left: int | None
    secret_requests: dict[str, float]  # accepted requests per shared-secret method
    key_requests: float
    refused_secret_requests: dict[str, float]  # refused secret attempts per method
    enabled: bool = True
    # enabled: false, and still trying: refused attempts (client_disabled) per method
    offboarded_requests: dict[str, float] = field(default_factory=dict)


def _fetch(url: str) -> str:
    """GET ``url``; raises OSError (urllib's errors are OSErrors) on failure."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
        return str(answer.read().decode("utf-8"))


def parse_window(text: str) -> str:
    """``text`` if it is a Prometheus duration (``30d``, ``12h``); argparse's error otherwise."""
    if not WINDOW.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 90m")
    return text


def counts_from_metrics(text: str) -> Counts:
    """Requests by (client, method, result) in a /metrics exposition (since its start): all
    accepted ones, refused ones that tried a shared secret, and those of offboarded clients
    (result ``offboarded``)."""
    counts: Counts = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != AUTH_METRIC:
                continue
            labels = sample.labels
            client = labels.get("client", "")
            result, method = labels.get("result", ""), labels.get("method", KEY_METHOD)
            if result == "accepted" or (result == "rejected" and method in SECRET_METHODS):
                counts[(client, method, result)] += sample.value
            if result == "rejected" and labels.get("reason") == DISABLED_REASON:
                counts[(client, method, OFFBOARDED)] += sample.value
    return counts


def window_count_query(selector: str, window: str) -> str:
    """PromQL: how many times the counters of ``selector`` went up during ``window``, summed
    by (client, method, result).

    ``increase()`` alone misses a series born inside the window (a process that counted its
    first requests before its first scrape shows up at 2: no increase) and extrapolates. A
    series that only rose counts exactly: its last value minus its value at the window's
    start, 0 when it had none. One that went down (a restart) falls back to ``increase()``,
    plus its first value when it was born in the window.
    """
    rng = f"{selector}[{window}]"
    start = f"{selector} offset {window}"
    last = f"last_over_time({rng})"
    restarted = f"(resets({rng}) > 0 or min_over_time({rng}) < {start})"
    steady = f"({last} - {start} or {last} unless {start}) unless {restarted}"
    restarted_counts = (f"increase({rng}) + (min_over_time({rng}) unless {start})"
                        f" or increase({rng})")
    return f"sum by (client, method, result) ({steady} or {restarted_counts})"


def counts_from_prometheus(base: str, window: str) -> Counts:
    """Requests by (client, method, result) over ``window``, summed over every instance.

    Raises OSError when Prometheus cannot be reached, ValueError for an answer it refused.
    """
    counts: Counts = {}
    for selector in COUNTED:
        offboarded = DISABLED_REASON in selector
        query = window_count_query(selector, window)
        url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        answer = json.loads(_fetch(url))
        if answer.get("status") != "success":
            raise ValueError(f"Prometheus refused the query: {answer.get('error', 'no reason')}")
        for row in answer["data"]["result"]:
            labels = row["metric"]
            counts[(labels.get("client", ""), labels.get("method", KEY_METHOD),
                    OFFBOARDED if offboarded else labels.get("result", ""))] = float(
                row["value"][1])
    return counts


def _by_method(counts: Counts, client_id: str, result: str) -> dict[str, float]:
    """The client's requests with ``result``, per method (none of those that counted 0)."""
    return {method: value for (cid, method, res), value in counts.items()
            if cid == client_id and res == result and value > 0}


def usage_report(settings: Settings, counts: Counts) -> list[ClientUsage]:
    """One row per enabled client allowed a secret, or seen authenticating or trying with
    one, and per offboarded client (``enabled: false``) seen still trying."""
    today = datetime.now(UTC).date()
    rows = []
    for client_id, client in settings.clients.items():
        legacy = client.legacy_auth
        accepted = _by_method(counts, client_id, "accepted")
        secret = {m: n for m, n in accepted.items() if m not in KEY_METHODS}
        # A refused assertion is no secret: only secret methods count as refused secrets.
        refused = {m: n for m, n in _by_method(counts, client_id, "rejected").items()
                   if m in SECRET_METHODS}
        offboarded = _by_method(counts, client_id, OFFBOARDED)
        if not client.enabled and not offboarded:
            continue
        if legacy is None and not secret and not refused and not offboarded:
            continue
        until = legacy.until if legacy else None
        days_left = (until - today).days if until is not None else None
        keys = sum(accepted.get(m, 0.0) for m in KEY_METHODS)
        rows.append(ClientUsage(client_id, list(legacy.allow) if legacy else [],
                                until.isoformat() if until else None, days_left, secret,
                                keys, refused, client.enabled, offboarded))
    return rows


def render_report(rows: list[ClientUsage], *, as_json: bool) -> str:
    """The rows as text lines, or as JSON."""
    if as_json:
        return json.dumps([row.__dict__ for row in rows], indent=2)
    if not rows:
        return ("no client is allowed, seen using or seen trying a shared secret, and no "
                "offboarded client is seen trying")
    lines = []
    for row in rows:
        if not row.enabled:
            tried = ", ".join(f"{method} {value:g}" for method, value in sorted(
                row.offboarded_requests.items()))
            lines.append(f"{row.client}: offboarded (enabled: false), still trying: {tried}")
            continue
        deadline = (f"until {row.until} ({row.days_left} day(s) left)" if row.until
                    else "no end date")
        used = ", ".join(f"{method} {value:g}" for method, value in sorted(
            row.secret_requests.items())) or "no secret requests"
        refused = ", ".join(f"{method} {value:g}" for method, value in sorted(
            row.refused_secret_requests.items()))
        tried = f"; refused {refused}" if refused else ""
        lines.append(f"{row.client}: allowed {', '.join(row.allowed) or 'none'}, {deadline}; "
                     f"{used}{tried}; private_key_jwt {row.key_requests:g}")
    return "\n".join(lines)


def collect(settings: Settings, *, metrics_url: str | None, prometheus_url: str | None,
            window: str) -> list[ClientUsage]:
    """The report from Prometheus, a /metrics page, or the configuration alone.

    Raises OSError or ValueError when the source cannot be read.
    """
    if prometheus_url is not None:
        counts = counts_from_prometheus(prometheus_url, window)
    elif metrics_url is not None:
        counts = counts_from_metrics(_fetch(metrics_url))
    else:
        counts = {}
    return usage_report(settings, counts)
