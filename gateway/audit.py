"""The audit log: one JSON line per authentication decision, nothing secret in it."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import TextIO

# Strings that come from the request before anything is verified are cut to this length.
MAX_UNTRUSTED_CHARS = 128


def jti_digest(client_id: str, jti: str) -> str:
    """A short, non-reversible tag of a jti: enough to correlate lines, useless to replay."""
    return hashlib.sha256(f"{client_id}\x00{jti}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def untrusted(value: object) -> str | None:
    """A bounded text form of an attacker-supplied value (JSON escaping does the rest)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_UNTRUSTED_CHARS]


@dataclass(slots=True)
class AuditRecord:
    """One decision. Field names are part of the public contract (see README)."""

    request_id: str
    endpoint: str
    result: str
    reason: str
    client: str | None = None
    kid: str | None = None
    key_thumbprint: str | None = None
    jti_hash: str | None = None
    alg: str | None = None
    remote: str | None = None
    backend_status: int | None = None
    backend_error: str | None = None
    latency_ms: float | None = None


class AuditLog:
    """Writes records as JSON lines to a text stream (or nowhere, when ``stream`` is None).

    ``ensure_ascii`` escapes control characters and newlines, so a hostile value cannot
    start a forged line.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, record: AuditRecord) -> None:
        if self._stream is None:
            return
        now = time.time()
        fields = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                  + f".{int(now % 1 * 1000):03d}Z", **asdict(record)}
        line = json.dumps({k: v for k, v in fields.items() if v is not None},
                          ensure_ascii=True, separators=(",", ":"))
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or full log sink must not turn an answered request into a 500.
            pass
