"""``pkjwt-gateway report``: which clients still authenticate with shared secrets."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from gateway.config.settings import Settings

AUTH_METRIC = "pkjwt_client_auth_total"
KEY_METHOD = "private_key_jwt"
# Methods that are no shared secret: the client's own keys, or a platform's token.
KEY_METHODS = frozenset({KEY_METHOD, "federated", "certificate"})
FETCH_TIMEOUT = 10.0


@dataclass
class ClientUsage:
    client: str
    allowed: list[str]
    until: str | None
    days_left: int | None
    secret_requests: dict[str, float]  # accepted requests per shared-secret method
    key_requests: float


def _fetch(url: str) -> str:
    """GET ``url``; raises OSError (urllib's errors are OSErrors) on failure."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
        return str(answer.read().decode("utf-8"))


def counts_from_metrics(text: str) -> dict[tuple[str, str], float]:
    """Accepted requests by (client, method) in a /metrics exposition (since its start)."""
    counts: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == AUTH_METRIC and labels.get("result") == "accepted":
                counts[(labels.get("client", ""), labels.get("method", KEY_METHOD))] += sample.value
    return counts


def counts_from_prometheus(base: str, window: str) -> dict[tuple[str, str], float]:
    """Accepted requests by (client, method) over ``window``, summed over every instance.

    Raises OSError when Prometheus cannot be reached, ValueError for an answer it refused.
    """
    query = (f'sum by (client, method) (increase({AUTH_METRIC}{{result="accepted"}}'
             f"[{window}]))")
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    answer = json.loads(_fetch(url))
    if answer.get("status") != "success":
        raise ValueError(f"Prometheus refused the query: {answer.get('error', 'no reason')}")
    return {(row["metric"].get("client", ""), row["metric"].get("method", KEY_METHOD)):
            float(row["value"][1]) for row in answer["data"]["result"]}


def usage_report(settings: Settings, counts: dict[tuple[str, str], float]) -> list[ClientUsage]:
    """One row per client allowed a secret, or seen authenticating with one."""
    today = datetime.now(UTC).date()
    rows = []
    for client_id, client in settings.clients.items():
        legacy = client.legacy_auth
        secret = {method: value for (cid, method), value in counts.items()
                  if cid == client_id and method not in KEY_METHODS and value > 0}
        if legacy is None and not secret:
            continue
        until = legacy.until if legacy else None
        days_left = (until - today).days if until is not None else None
        rows.append(ClientUsage(client_id, list(legacy.allow) if legacy else [],
                                until.isoformat() if until else None, days_left, secret,
                                sum(counts.get((client_id, m), 0.0) for m in KEY_METHODS)))
    return rows


def render_report(rows: list[ClientUsage], *, as_json: bool) -> str:
    """The rows as text lines, or as JSON."""
    if as_json:
        return json.dumps([row.__dict__ for row in rows], indent=2)
    if not rows:
        return "no client is allowed or seen using a shared secret"
    lines = []
    for row in rows:
        deadline = (f"until {row.until} ({row.days_left} day(s) left)" if row.until
                    else "no end date")
        used = ", ".join(f"{method} {value:g}" for method, value in sorted(
            row.secret_requests.items())) or "no secret requests"
        lines.append(f"{row.client}: allowed {', '.join(row.allowed) or 'none'}, {deadline}; "
                     f"{used}; private_key_jwt {row.key_requests:g}")
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
