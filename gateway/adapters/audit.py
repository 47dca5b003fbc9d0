"""The audit log: one JSON line per authentication decision or key-change event, nothing
secret in it."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, fields
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Protocol, TextIO

from gateway.core.attempt import Attempt
from gateway.core.key_events import KeyEvent


@dataclass(slots=True)
class AuditRecord:
    """One decision. Field names are part of the public contract (see README)."""

    request_id: str
    endpoint: str
    result: str
    reason: str
    client: str | None = None
    method: str | None = None  # private_key_jwt, federated, certificate, or a secret method
    # Federated tokens: the trust that accepted, the configured issuer, the token's own sub.
    trust: str | None = None
    issuer: str | None = None
    subject: str | None = None
    kid: str | None = None
    key_thumbprint: str | None = None
    # CA-anchored clients, once the x5c chain validated: the leaf's subject, serial and
    # x5t#S256 certificate thumbprint.
    certificate_subject: str | None = None
    certificate_serial: str | None = None
    certificate_thumbprint: str | None = None
    jti_hash: str | None = None
    alg: str | None = None
    remote: str | None = None
    backend_status: int | None = None
    backend_error: str | None = None
    latency_ms: float | None = None

    def fill(self, attempt: Attempt) -> None:
        """Take what the authenticator learnt (kid and alg already cut to size by it)."""
        self.client = attempt.client
        self.method = attempt.method
        self.kid = attempt.kid
        self.alg = attempt.alg
        self.key_thumbprint = attempt.key_thumbprint
        self.jti_hash = attempt.jti_hash
        if attempt.certificate_thumbprint is not None:
            self.certificate_subject = attempt.certificate_subject
            self.certificate_serial = attempt.certificate_serial
            self.certificate_thumbprint = attempt.certificate_thumbprint
        if attempt.issuer is not None:
            self.trust = attempt.trust
            self.issuer = attempt.issuer
            self.subject = attempt.subject


_FIELDS = tuple(field.name for field in fields(AuditRecord))
_VALUES = attrgetter(*_FIELDS)
_MEMBERS = tuple(f',"{name}":' for name in _FIELDS)  # field names need no escaping
# For values of other types than str, int and float: json's own rules.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def encode_line(time_text: str, record: AuditRecord) -> str:
    """The record as one JSON line: ``time``, then each field that is not None, in order.

    The same text, to the character, that ``json.dumps(..., ensure_ascii=True,
    separators=(",", ":"))`` writes for that object, without building a dict and an
    encoder per line. Strings go through json's own C escaper: quotes, backslashes,
    control characters and everything outside ASCII (U+2028 included) become escapes.
    """
    return "".join([
        '{"time":', encode_basestring_ascii(time_text),
        *[member + (encode_basestring_ascii(value) if type(value) is str else _scalar(value))
          for member, value in zip(_MEMBERS, _VALUES(record), strict=True)
          if value is not None],
        "}\n",
    ])


KEYS_CHANGED = "keys_changed"  # the `event` member of a key-change line


def encode_event(time_text: str, event: KeyEvent) -> str:
    """A key-change event as one JSON line (fields documented in the README).

    ``time``, ``event`` (keys_changed: a decision line has no such member), ``client`` or
    ``issuer``, ``source``, ``cause``, ``added`` and ``removed`` (thumbprints, possibly
    empty), then ``expiring`` and ``not_after`` for ``certificate_expiring``. Written by
    the same encoder as decisions, so the same escaping holds.
    """
    line: dict[str, object] = {"time": time_text, "event": KEYS_CHANGED,
                               event.owner: event.name, "source": event.source,
                               "cause": event.cause, "added": list(event.added),
                               "removed": list(event.removed)}
    if event.not_after is not None:
        line["expiring"] = list(event.expiring)
        line["not_after"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.not_after))
    return _ENCODER.encode(line) + "\n"


def _scalar(value: object) -> str:
    # What json writes for a number; anything else (bool, NaN, infinities, a str
    # subclass) goes through json itself.
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)
    return _ENCODER.encode(value)


class AuditSink(Protocol):
    """Where audit lines go: a text stream (stdout, a test's buffer) or an AuditFile."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...


class AuditFile:
    """``audit.output`` as a file appended to, reopened by its path after log rotation.

    O_APPEND: several worker processes can share one file, and each flush of the AuditLog
    is one write of whole lines, so their lines never cut into each other.
    """

    def __init__(self, path: str) -> None:
        """Raises OSError when the file cannot be opened for appending."""
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8")  # lives as long as the process

    def write(self, text: str, /) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        """Open the path anew (rotation moved the old file away) and close the old one.

        Raises OSError when the path cannot be opened; the old file then stays in use.
        """
        new = open(self.path, "a", encoding="utf-8")
        old, self._file = self._file, new
        old.close()

    def close(self) -> None:
        self._file.close()


class AuditLog:
    """Writes records as JSON lines to a sink (or nowhere, when ``stream`` is None).

    ``ensure_ascii`` escapes control characters and newlines, so a hostile value cannot
    start a forged line. Lines written during one event-loop iteration are held and written
    together at its end: one write system call of whole lines for a burst of requests, and
    never a line held back longer than that iteration.
    """

    def __init__(self, stream: AuditSink | None) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._flush_pending = False
        self._second = -1
        self._second_text = ""

    def write(self, record: AuditRecord) -> None:
        if self._stream is None:
            return
        self._pending.append(encode_line(self._timestamp(), record))
        self._schedule_flush()

    def write_event(self, event: KeyEvent) -> None:
        """A key-change event, in order with the decisions around it."""
        if self._stream is None:
            return
        self._pending.append(encode_event(self._timestamp(), event))
        self._schedule_flush()

    def reopen(self) -> str | None:
        """After log rotation: what is held goes to the old file, later lines to a new one.

        Returns the path reopened; None for stdout or no output, where there is nothing to
        do. Raises OSError when the file cannot be opened again; lines then keep going to
        the old one.
        """
        self.flush()
        if not isinstance(self._stream, AuditFile):
            return None
        self._stream.reopen()
        return self._stream.path

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"

    def _schedule_flush(self) -> None:
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside a loop (a CLI verb, a test): flush now
            self.flush()
            return
        self._flush_pending = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        if self._stream is None or not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or full log sink must not turn an answered request into a 500.
            pass
