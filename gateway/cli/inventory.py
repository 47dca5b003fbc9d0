"""``pkjwt-gateway inventory``: a running gateway's credential inventory, as JSON or CSV.

It reads ``GET /inventory`` on the admin listener (the document of
``gateway.adapters.inventory``, described by ``config/inventory.schema.json``). The ``keys``
verb, an inventory from the configuration alone, is ``gateway.cli.keys``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

INVENTORY_PATH = "/inventory"
FETCH_TIMEOUT = 10.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a gateway with very many clients stays far below
# One row per credential (a client without any: one row, credential columns empty).
CSV_COLUMNS = (
    "client_id", "state", "owner", "contact", "description", "methods", "client_flags",
    "last_success", "legacy_until", "kind", "ref", "present", "source", "kid", "name",
    "issuer", "subject", "mode", "algorithms", "thumbprint", "not_after", "expiry", "retire",
    "first_seen", "last_used", "uses", "flags",
)
# Columns holding text that configuration or clients choose: a spreadsheet would run a
# cell starting with one of FORMULA_STARTS as a formula, so such a cell gets a leading '.
TEXT_COLUMNS = frozenset({"owner", "contact", "description", "kid", "name", "issuer",
                          "subject"})
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class InventoryError(Exception):
    """The inventory could not be had: the message says why, for the operator."""


def inventory_url(admin: str) -> str:
    """The inventory's URL from the admin listener's base URL (or the inventory's own URL).

    Raises InventoryError for anything but an http(s) URL with a host.
    """
    parts = urllib.parse.urlsplit(admin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InventoryError(f"--admin must be the admin listener's http(s) URL, such as "
                             f"http://127.0.0.1:9100 (got {admin[:200]!r})")
    path = parts.path.rstrip("/")
    if not path.endswith(INVENTORY_PATH):
        path += INVENTORY_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def fetch_inventory(admin: str, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """The inventory document of the gateway whose admin listener is at ``admin``.

    Raises InventoryError when it cannot be reached within ``timeout``, answers with an
    error status, or answers something that is not an inventory.
    """
    url = inventory_url(admin)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            raw = answer.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        hint = " (a gateway older than the inventory?)" if exc.code == 404 else ""
        raise InventoryError(f"{url} answered {exc.code} {exc.reason}{hint}") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise InventoryError(f"cannot reach {url}: {reason}") from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise InventoryError(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")
    try:
        document = json.loads(raw)
    except ValueError:
        raise InventoryError(f"{url} did not answer JSON: is it a gateway's admin "
                             "listener?") from None
    if not isinstance(document, dict) or not isinstance(document.get("clients"), list):
        raise InventoryError(f"{url} answered JSON that is no inventory (no clients list)")
    return document


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _cell(column: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    text = str(value)
    if column in TEXT_COLUMNS and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def _rows(document: dict[str, Any]) -> Iterator[dict[str, object]]:
    for client in document["clients"]:
        legacy = client.get("legacy") or {}
        common = {
            "client_id": client.get("client_id"), "state": client.get("state"),
            "owner": client.get("owner"), "contact": client.get("contact"),
            "description": client.get("description"), "methods": client.get("methods"),
            "client_flags": client.get("flags"), "last_success": client.get("last_success"),
            "legacy_until": legacy.get("until"),
        }
        secrets = [{"kind": "secret", "ref": f"secret:{used.get('method')}",
                    "present": bool(legacy) and used.get("method") in legacy.get("methods", ()),
                    "source": "legacy_auth", **used} for used in client.get("secrets", [])]
        credentials = [*client.get("credentials", []), *secrets]
        for credential in credentials or [{}]:
            yield {**common, **{column: credential.get(column) for column in CSV_COLUMNS
                                if column in credential and column not in common}}


def render_csv(document: dict[str, Any]) -> str:
    """One row per credential (shared-secret use as kind ``secret``), columns CSV_COLUMNS;
    lists are space-separated, null is empty, booleans are true/false."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in _rows(document):
        writer.writerow([_cell(column, row.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


def run_inventory(admin: str, output: str, timeout: float = FETCH_TIMEOUT) -> int:
    """Print the inventory as ``output`` (json or csv): exit 0, or 2 (the reason on stderr)
    when it cannot be had."""
    try:
        document = fetch_inventory(admin, timeout)
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if output == "csv":
        sys.stdout.write(render_csv(document))
    else:
        print(render_json(document))
    return 0
