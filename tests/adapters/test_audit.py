"""The audit log: one escaped JSON line per decision, flushed by the end of the loop iteration."""

from __future__ import annotations

import asyncio
import io
import json

from gateway.adapters.audit import AuditLog, AuditRecord
from gateway.core.attempt import untrusted


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
