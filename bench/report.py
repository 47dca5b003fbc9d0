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
STORE_TARGET = 0.75  # gateway on the Redis ledger over the same gateway on the memory ledger


@dataclass(frozen=True, slots=True)
class ReplayLatency:
    """The replay check's time over one measured run, from the gateway's own histogram."""

    label: str  # the store label as exported: memory, tiered (Redis behind a local tier), redis
    checks: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(slots=True)
class AlgResult:
    alg: str
    bare: LoadResult | None = None
    gateways: dict[str, LoadResult] = field(default_factory=dict)  # per replay store
    replay: dict[str, ReplayLatency] = field(default_factory=dict)  # per replay store
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def baseline_store(self) -> str | None:
        """The store the gateway/bare verdict is about: memory when it ran."""
        if "memory" in self.gateways:
            return "memory"
        return next(iter(self.gateways), None)

    @property
    def gateway(self) -> LoadResult | None:
        store = self.baseline_store
        return None if store is None else self.gateways[store]

    def ratio_to_bare(self, store: str) -> float | None:
        run = self.gateways.get(store)
        if self.bare is None or run is None or not self.bare.rps:
            return None
        return run.rps / self.bare.rps

    @property
    def ratio(self) -> float | None:
        store = self.baseline_store
        return None if store is None else self.ratio_to_bare(store)

    @property
    def cpu_ratio(self) -> float | None:
        """Bare CPU per request over the gateway's: the throughput ratio if both were saturated."""
        if self.bare is None or self.gateway is None or not self.gateway.cpu_us_per_request:
            return None
        return self.bare.cpu_us_per_request / self.gateway.cpu_us_per_request

    @property
    def store_ratio(self) -> float | None:
        """Redis-ledger throughput over memory-ledger throughput (None unless both ran)."""
        memory, redis = self.gateways.get("memory"), self.gateways.get("redis")
        if memory is None or redis is None or not memory.rps:
            return None
        return redis.rps / memory.rps

    @property
    def store_cpu_ratio(self) -> float | None:
        memory, redis = self.gateways.get("memory"), self.gateways.get("redis")
        if memory is None or redis is None or not redis.cpu_us_per_request:
            return None
        return memory.cpu_us_per_request / redis.cpu_us_per_request

    @property
    def verdict(self) -> str:
        if self.problems:
            return "FAIL"
        target = TARGETS.get(self.alg)
        if self.ratio is None or target is None:
            return "n/a"
        if self.store_ratio is not None and self.store_ratio < STORE_TARGET:
            return "BELOW"
        return "PASS" if self.ratio >= target else "BELOW"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(results: list[AlgResult], *, proxy_core: int, load_core: int) -> str:
    """The human-readable table, one block per algorithm."""
    head = (
        f"  {'':14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU':>10}"
        f" {'µs CPU/req':>10} {'backend CPU':>12} {'wrk CPU':>8} {f'core {load_core} busy':>12}"
    )
    lines = []
    for result in results:
        lines += ["", f"{result.alg}", head]
        runs = [("bare", result.bare)]
        runs += [(f"gateway/{store}", run) for store, run in result.gateways.items()]
        for name, run in runs:
            if run is None:
                lines.append(f"  {name:14} {'-':>9}")
                continue
            lines.append(
                f"  {name:14} {run.rps:9.0f} {run.p50_ms:8.2f} {run.p99_ms:8.2f}"
                f" {run.process_cpu.get('proxy', 0):10.0%}"
                f" {run.cpu_us_per_request:10.0f} {run.process_cpu.get('backend', 0):12.0%}"
                f" {run.process_cpu.get('wrk', 0):8.0%}"
                f" {run.core_busy.get(load_core, 0):12.0%}"
            )
        target = TARGETS.get(result.alg)
        goal = "-" if target is None else f">= {target:.2f}"
        for store in result.gateways:
            lines.append(f"  ratio gateway({store})/bare {_ratio(result.ratio_to_bare(store))}"
                         f"  (target {goal})")
        if result.store_ratio is not None:
            lines.append(
                f"  ratio redis/memory {_ratio(result.store_ratio)}  (target >= {STORE_TARGET:.2f})"
                f"  [CPU-per-request ratio {_ratio(result.store_cpu_ratio)}]")
        lines.append(f"  verdict {result.verdict}  (gateway/bare on {result.baseline_store};"
                     f" CPU-per-request ratio {_ratio(result.cpu_ratio)})")
        for store, latency in result.replay.items():
            lines.append(
                f"  replay check {store} (store={latency.label}): p50 {_ms(latency.p50_ms)} ms,"
                f" p99 {_ms(latency.p99_ms)} ms over {latency.checks} checks (from buckets)")
        lines += [f"  !! {problem}" for problem in result.problems]
        lines += [f"  note: {note}" for note in result.notes]
    lines.append(f"\n(proxy pinned to core {proxy_core}; wrk, backend and redis-server on core"
                 f" {load_core})")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    found = {}
    for name in ("aiohttp", "joserfc", "cryptography", "uvloop", "redis"):
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
                "gateways": {store: _run_dict(run) for store, run in result.gateways.items()},
                "replay_check": {store: asdict(latency)
                                 for store, latency in result.replay.items()},
                "ratio": result.ratio,
                "cpu_ratio": result.cpu_ratio,
                "store_ratio": result.store_ratio,
                "store_cpu_ratio": result.store_cpu_ratio,
                "store_target": STORE_TARGET,
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
