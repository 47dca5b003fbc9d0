"""Benchmark load: one wrk run over a body pool (flat out or paced), its result and CPU cost."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from procs import Children, core_times, process_cpu_seconds

LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")
PACE_TOLERANCE = 0.03  # a paced run within 3 % of its rate measured what was asked
LATE_SHARE = 0.01  # more sends than this behind schedule: latency leaves queueing out


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    pool: int
    sent: int
    wrapped: int
    non2xx: int
    socket_errors: int
    first_error: str
    process_cpu: Mapping[str, float]  # share of one core, per watched process
    core_busy: Mapping[int, float]  # share of each core that was busy
    target_rps: float = 0.0  # the paced rate asked for; 0 when wrk ran flat out
    late: int = 0  # paced sends that found every connection busy at their slot
    late_max_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """Proxy CPU per answered request: steadier than req/s on a shared machine."""
        return self.process_cpu.get("proxy", 0.0) * 1e6 / self.rps if self.rps else 0.0

    @property
    def pace_error(self) -> float | None:
        """Achieved over asked-for rate, minus one (None when wrk ran flat out)."""
        return self.rps / self.target_rps - 1 if self.target_rps else None

    def problems(self, *, may_wrap: bool) -> list[str]:
        """What makes this run's numbers untrustworthy (empty when none)."""
        found = []
        if self.requests == 0:
            found.append("no request completed")
        if self.non2xx:
            found.append(f"{self.non2xx} non-2xx answers, first: {self.first_error}")
        if self.socket_errors:
            found.append(f"{self.socket_errors} socket errors/timeouts")
        if self.wrapped and not may_wrap:
            found.append(
                f"body pool ({self.pool}) exhausted: {self.sent} sent, jtis repeated"
                " (raise --expected-rate)"
            )
        return found

    def notes(self, *, proxy_core: int, load_core: int) -> list[str]:
        """Signs that something other than the proxy limited this run (warnings only)."""
        found = []
        if self.core_busy.get(load_core, 0.0) > 0.9:
            found.append(f"load core {load_core} was {self.core_busy[load_core]:.0%} busy")
        # Paced, the proxy is meant to idle part of the time.
        if not self.target_rps and self.process_cpu.get("proxy", 1.0) < 0.85:
            found.append(f"proxy used only {self.process_cpu['proxy']:.0%} of its core")
        other = self.core_busy.get(proxy_core, 0.0) - self.process_cpu.get("proxy", 0.0)
        if other > 0.1:
            found.append(f"{other:.0%} of core {proxy_core} went to other processes")
        return found + self.pace_notes()

    def pace_notes(self) -> list[str]:
        """Signs that a paced run did not hold its schedule (its latency is then optimistic)."""
        found = []
        error = self.pace_error
        if error is not None and abs(error) > PACE_TOLERANCE:
            found.append(f"achieved {self.rps:.0f} req/s of the {self.target_rps:.0f} asked"
                         f" ({error:+.1%})")
        if self.late > LATE_SHARE * max(self.sent, 1):
            found.append(f"{self.late} of {self.sent} sends behind schedule"
                         f" (up to {self.late_max_ms:.1f} ms)")
        return found


def find_wrk() -> str:
    """Path of the wrk binary. Raises RuntimeError when it is not installed."""
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk not found on PATH (apt-get install wrk)")
    return path


def run_wrk(
    children: Children,
    *,
    url: str,
    bodies: Path,
    duration: float,
    connections: int,
    threads: int,
    cpus: Collection[int],
    watch: Mapping[str, int],
    rate: float = 0.0,
) -> LoadResult:
    """Run wrk pinned to `cpus` against `url`, sampling CPU of the `watch`ed pids meanwhile.

    Flat out when `rate` is 0, else paced at `rate` requests/s over all connections.

    Raises RuntimeError if wrk fails or prints no result.
    """
    argv = [
        find_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies),
        str(threads),
        f"{rate:.3f}",
    ]
    cpu_before = {name: process_cpu_seconds(pid) for name, pid in watch.items()}
    cores_before = core_times()
    reaped_before = _reaped_cpu_seconds()
    started = time.monotonic()
    proc = children.start(argv, cpus=cpus, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=duration + 60)
    finally:
        children.stop(proc)
    wall = time.monotonic() - started
    cores_after = core_times()
    cpu = {
        name: (process_cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in watch.items()
    }
    cpu["wrk"] = (_reaped_cpu_seconds() - reaped_before) / wall
    busy = {
        core: (cores_after[core][0] - before[0]) / max(cores_after[core][1] - before[1], 1e-9)
        for core, before in cores_before.items()
    }
    text = out.decode(errors="replace")
    if proc.returncode != 0 or "BENCH_RESULT " not in text:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{text}")
    return _parse(text, cpu, busy, rate)


def _reaped_cpu_seconds() -> float:
    # wrk is the only child reaped while it runs, so the delta is its CPU time.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _parse(
    text: str, cpu: Mapping[str, float], busy: Mapping[int, float], rate: float
) -> LoadResult:
    raw: dict[str, int] = {}
    first_error = ""
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line.removeprefix("BENCH_RESULT "))
        elif line.startswith("BENCH_FIRST_ERROR"):
            first_error = line.removeprefix("BENCH_FIRST_ERROR").strip()
    errors = sum(raw[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return LoadResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        pool=raw["pool"],
        sent=raw["sent"],
        wrapped=raw["wrapped"],
        non2xx=raw["non2xx"],
        socket_errors=errors,
        first_error=first_error,
        process_cpu=cpu,
        core_busy=busy,
        target_rps=rate,
        late=raw["late"],
        late_max_ms=raw["late_max_us"] / 1e3,
    )
