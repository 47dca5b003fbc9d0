"""Benchmark report: the per-algorithm comparison table and the JSON summary file."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from load import LoadResult

TARGETS = {"ES256": 0.55, "RS256": 0.70}


@dataclass(slots=True)
class AlgResult:
    alg: str
    bare: LoadResult | None = None
    gateway: LoadResult | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.bare is None or self.gateway is None or not self.bare.rps:
            return None
        return self.gateway.rps / self.bare.rps

    @property
    def cpu_ratio(self) -> float | None:
        """Bare CPU per request over the gateway's: the throughput ratio if both were saturated."""
        if self.bare is None or self.gateway is None or not self.gateway.cpu_us_per_request:
            return None
        return self.bare.cpu_us_per_request / self.gateway.cpu_us_per_request

    @property
    def verdict(self) -> str:
        if self.problems:
            return "FAIL"
        target = TARGETS.get(self.alg)
        if self.ratio is None or target is None:
            return "n/a"
        return "PASS" if self.ratio >= target else "BELOW"


def render(results: list[AlgResult], *, proxy_core: int, load_core: int) -> str:
    """The human-readable table, one block per algorithm."""
    head = (
        f"  {'':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU':>10}"
        f" {'µs CPU/req':>10} {'backend CPU':>12} {'wrk CPU':>8} {f'core {load_core} busy':>12}"
    )
    lines = []
    for result in results:
        lines += ["", f"{result.alg}", head]
        for name, run in (("bare", result.bare), ("gateway", result.gateway)):
            if run is None:
                lines.append(f"  {name:8} {'-':>9}")
                continue
            lines.append(
                f"  {name:8} {run.rps:9.0f} {run.p50_ms:8.2f} {run.p99_ms:8.2f}"
                f" {run.process_cpu.get('proxy', 0):10.0%}"
                f" {run.cpu_us_per_request:10.0f} {run.process_cpu.get('backend', 0):12.0%}"
                f" {run.process_cpu.get('wrk', 0):8.0%}"
                f" {run.core_busy.get(load_core, 0):12.0%}"
            )
        target = TARGETS.get(result.alg)
        ratio = "-" if result.ratio is None else f"{result.ratio:.2f}"
        goal = "-" if target is None else f">= {target:.2f}"
        cpu_ratio = "-" if result.cpu_ratio is None else f"{result.cpu_ratio:.2f}"
        lines.append(
            f"  ratio gateway/bare {ratio}  (target {goal})  {result.verdict}"
            f"  [CPU-per-request ratio {cpu_ratio}]"
        )
        lines += [f"  !! {problem}" for problem in result.problems]
        lines += [f"  note: {note}" for note in result.notes]
    lines.append(f"\n(proxy pinned to core {proxy_core}; wrk and backend on core {load_core})")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    found = {}
    for name in ("aiohttp", "joserfc", "cryptography", "uvloop"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _run_dict(run: LoadResult | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {**asdict(run), "rps": run.rps, "cpu_us_per_request": run.cpu_us_per_request}


def write_summary(out_dir: Path, results: list[AlgResult], options: dict[str, Any]) -> Path:
    """Write the JSON summary under `out_dir`; returns its path. Raises OSError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    summary = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": _versions(),
        },
        "options": options,
        "results": [
            {
                "alg": result.alg,
                "bare": _run_dict(result.bare),
                "gateway": _run_dict(result.gateway),
                "ratio": result.ratio,
                "cpu_ratio": result.cpu_ratio,
                "target": TARGETS.get(result.alg),
                "verdict": result.verdict,
                "problems": result.problems,
                "notes": result.notes,
            }
            for result in results
        ],
    }
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
