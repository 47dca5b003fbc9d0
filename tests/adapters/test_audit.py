"""The audit log: one escaped JSON line per decision, flushed by the end of the loop iteration."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.audit import AuditLog, AuditRecord, encode_line
from gateway.core.attempt import untrusted
from gateway.core.key_events import CERTIFICATE_EXPIRING, CLIENT, FETCH, ISSUER, KeyEvent


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_hostile_values_cannot_forge_a_line() -> None:
    stream = CountingStream()
    log = AuditLog(stream)
    kid = untrusted('x"}\n{"result":"accepted","reason":"ok"}\r\u2028')
    log.write(AuditRecord(request_id="r1", endpoint="/t", result="rejected", reason="malformed",
                          kid=kid))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["result"] == "rejected" and entry["kid"] == kid
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_untrusted_values_are_bounded() -> None:
    assert len(untrusted("k" * 10_000) or "") == 128
    assert untrusted(None) is None
    assert untrusted({"a": 1}) == "{'a': 1}"


async def test_a_burst_is_flushed_once_at_the_end_of_the_iteration() -> None:
    stream = CountingStream()
    log = AuditLog(stream)
    for index in range(5):
        log.write(AuditRecord(request_id=str(index), endpoint="/t", result="accepted",
                              reason="ok"))
    assert stream.flushes == 0
    await asyncio.sleep(0)
    assert stream.flushes == 1
    assert len(stream.getvalue().splitlines()) == 5


def test_outside_a_loop_every_line_is_flushed_at_once() -> None:
    stream = CountingStream()
    AuditLog(stream).write(AuditRecord(request_id="r", endpoint="/t", result="accepted",
                                       reason="ok"))
    assert stream.flushes == 1


def test_a_closed_sink_does_not_raise() -> None:
    stream = io.StringIO()
    log = AuditLog(stream)
    stream.close()
    log.write(AuditRecord(request_id="r", endpoint="/t", result="accepted", reason="ok"))


def dict_encoder_line(time_text: str, record: AuditRecord) -> str:
    """The line as a dict and json's encoder write it: the oracle for encode_line."""
    entry: dict[str, object] = {"time": time_text}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if value is not None:
            entry[field.name] = value
    return json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode(entry) + "\n"


class Text(str):
    """A str subclass, as an enum value or a library's string type would be."""


# Every code point, lone surrogates included, and the characters that break lines or JSON.
HOSTILE_TEXT = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
    ['"', "\\", "\n", "\r", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "\ud800", "\ufeff",
     'x"}\n{"result":"accepted"}', "</script>", "\U0001f600"])
TEXT_VALUES = HOSTILE_TEXT | HOSTILE_TEXT.map(Text)
NUMBERS = st.integers() | st.floats() | st.integers(-(10**40), 10**40) | st.booleans()
RECORDS = st.builds(
    AuditRecord,
    request_id=TEXT_VALUES, endpoint=TEXT_VALUES, result=TEXT_VALUES, reason=TEXT_VALUES,
    **{name: st.none() | TEXT_VALUES for name in (
        "client", "method", "kid", "key_thumbprint", "jti_hash", "alg", "remote",
        "backend_error")},
    backend_status=st.none() | NUMBERS,
    latency_ms=st.none() | NUMBERS,
)


@settings(max_examples=500, deadline=None)
@given(RECORDS, HOSTILE_TEXT)
def test_the_line_is_what_json_writes_for_the_same_entry(record: AuditRecord,
                                                         time_text: str) -> None:
    line = encode_line(time_text, record)
    assert line == dict_encoder_line(time_text, record)
    assert line.count("\n") == 1 and line.endswith("\n") and line.isascii()
    assert all(" " <= char <= "~" for char in line[:-1])


@settings(max_examples=100, deadline=None)
@given(RECORDS)
def test_a_written_line_is_what_json_writes(record: AuditRecord) -> None:
    stream = io.StringIO()
    AuditLog(stream).write(record)
    line = stream.getvalue()
    entry: dict[str, Any] = json.loads(line)
    assert line == dict_encoder_line(entry["time"], record)


def test_a_key_change_event_is_one_escaped_line_told_from_decisions() -> None:
    stream = CountingStream()
    log = AuditLog(stream)
    name = 'x"}\n{"result":"accepted","reason":"ok"}\r\u2028é'
    log.write_event(KeyEvent(ISSUER, name, "jwks", CERTIFICATE_EXPIRING,
                             expiring=("t1", "t2"), not_after=1_782_863_999.0))
    log.write_event(KeyEvent(CLIENT, "acme", "jwks_uri", FETCH, added=("t3",), removed=("t1",)))
    text = stream.getvalue()
    assert text.isascii() and text.count("\n") == 2
    first, second = map(json.loads, text.splitlines())
    assert first == {"time": first["time"], "event": "keys_changed", "issuer": name,
                     "source": "jwks", "cause": "certificate_expiring", "added": [],
                     "removed": [], "expiring": ["t1", "t2"],
                     "not_after": "2026-06-30T23:59:59Z"}
    assert list(second) == ["time", "event", "client", "source", "cause", "added", "removed"]
    assert second["added"] == ["t3"] and second["removed"] == ["t1"]
    assert "request_id" not in first and "reason" not in second
