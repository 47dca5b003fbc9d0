"""Benchmark report: the per-algorithm tables of medians and ratios, and the JSON summary."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from figures import (
    CERTIFICATE_TARGET,
    FEDERATED_TARGET,
    STORE_TARGET,
    TARGETS,
    USAGE_TARGET,
    AlgResult,
    Figure,
    Pair,
    Run,
    Spread,
    cpu_us,
    p50,
    p99,
    rps,
)
from provenance import describe_build, machine, versions


def _spread(value: Spread | None, digits: int = 0, sign: str = "") -> str:
    if value is None:
        return "-"
    median = f"{value.median:{sign}.{digits}f}"
    if value.count == 1:
        return median
    return f"{median} [{value.low:{sign}.{digits}f}..{value.high:{sign}.{digits}f}]"


def _share(result: AlgResult, name: str, process: str) -> Spread | None:
    return result.spread(name, lambda run: run.process_cpu.get(process, 0.0) * 100)


def _busy(result: AlgResult, name: str, core: int) -> Spread | None:
    return result.spread(name, lambda run: run.core_busy.get(core, 0.0) * 100)


def _flat_out(result: AlgResult, load_core: int) -> list[str]:
    lines = [f"  {'':18} {'req/s':>18} {'µs CPU/req':>14} {'p50 ms':>7} {'p99 ms':>7}"
             f" {'proxy CPU %':>13} {f'core {load_core} busy %':>15}"]
    for name in result.contenders:
        lines.append(
            f"  {name:18} {_spread(result.spread(name, rps)):>18}"
            f" {_spread(result.spread(name, cpu_us)):>14}"
            f" {_median(result.spread(name, p50)):>7} {_median(result.spread(name, p99)):>7}"
            f" {_spread(_share(result, name, 'proxy')):>13}"
            f" {_spread(_busy(result, name, load_core)):>15}")
    lines.append(f"  {'per-pair ratio of req/s':34} {'median [min..max]':>18}  target")
    for comparison in result.comparisons():
        ratio = result.ratio(comparison.top, comparison.bottom)
        goal = "" if comparison.target is None else f">= {comparison.target:.2f}"
        lines.append(f"  {comparison.label:34} {_spread(ratio, 2):>18}  {goal}")
    cpu = _spread(result.cpu_ratio(), 2)
    lines.append(f"  {'CPU/req bare / ' + 'gateway/' + result.primary_store:34} {cpu:>18}")
    return lines


def _median(value: Spread | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value.median:.{digits}f}"


def _half_load(result: AlgResult) -> list[str]:
    if result.half_load_rate is None:
        return []
    lines = [f"  half load: paced at {result.half_load_rate:.0f} req/s (half the bare proxy's"
             f" median peak), {len(result.half_load)} round(s)",
             f"  {'':18} {'req/s':>6} {'p50 ms':>20} {'p99 ms':>22}"
             f" {'added p50 ms':>22} {'added p99 ms':>24}"]
    for name in result.contenders:
        added = [Spread.of(v for v in result.added(name, figure) if v is not None)
                 for figure in (p50, p99)]
        shown = ["", ""] if name == "bare" else [_spread(value, 2, "+") for value in added]
        row = (f"  {name:18} {_median(result.spread(name, rps, half_load=True), 0):>6}"
               f" {_spread(result.spread(name, p50, half_load=True), 2):>20}"
               f" {_spread(result.spread(name, p99, half_load=True), 2):>22}"
               f" {shown[0]:>22} {shown[1]:>24}")
        lines.append(row.rstrip())
    return lines


def _replay(result: AlgResult) -> list[str]:
    lines = []
    for name in result.contenders:
        for phase, pairs in (("flat out", result.pairs), ("half load", result.half_load)):
            found = [pair[name].replay for pair in pairs if name in pair]
            checks = [latency for latency in found if latency is not None]
            if not checks:
                continue
            p50s = Spread.of(c.p50_ms for c in checks if c.p50_ms is not None)
            p99s = Spread.of(c.p99_ms for c in checks if c.p99_ms is not None)
            lines.append(f"  replay check {name} {phase} (store={checks[0].label}):"
                         f" p50 {_spread(p50s, 3)} ms, p99 {_spread(p99s, 3)} ms"
                         f" (from buckets)")
    return lines


def render(results: list[AlgResult], *, proxy_core: int, load_core: int) -> str:
    """The human-readable tables, one block per algorithm."""
    lines = []
    for result in results:
        lines += ["", f"{result.alg}: {len(result.pairs)} interleaved round(s); median [min..max]"]
        lines += _flat_out(result, load_core)
        lines += _half_load(result)
        lines += _replay(result)
        lines.append(f"  verdict {result.verdict}")
        lines += [f"  !! {problem}" for problem in result.problems]
        lines += [f"  note: {note}" for note in result.notes]
    lines.append(f"\n(proxy pinned to core {proxy_core}; wrk, backend and redis-server on core"
                 f" {load_core})")
    return "\n".join(lines)


def _run_dict(run: Run) -> dict[str, Any]:
    load = run.load
    return {**asdict(load), "rps": load.rps, "cpu_us_per_request": load.cpu_us_per_request,
            "pace_error": load.pace_error,
            "replay_check": None if run.replay is None else asdict(run.replay)}


def _medians(result: AlgResult, *, half_load: bool) -> dict[str, Any]:
    figures: dict[str, Figure] = {"rps": rps, "cpu_us_per_request": cpu_us,
                                  "p50_ms": p50, "p99_ms": p99}
    return {name: {figure: _maybe(result.spread(name, read, half_load=half_load))
                   for figure, read in figures.items()}
            for name in result.contenders}


def _maybe(value: Spread | None) -> dict[str, Any] | None:
    return None if value is None else asdict(value)


def _pairs(pairs: list[Pair]) -> list[dict[str, Any]]:
    return [{name: _run_dict(run) for name, run in pair.items()} for pair in pairs]


def _alg_summary(result: AlgResult) -> dict[str, Any]:
    ratios = [
        {**asdict(c), "per_pair": result.ratios(c.top, c.bottom),
         "spread": _maybe(result.ratio(c.top, c.bottom))}
        for c in result.comparisons()
    ]
    added = {
        name: {label: {"per_pair": values,
                       "spread": _maybe(Spread.of(v for v in values if v is not None))}
               for label, values in (("p50_ms", result.added(name, p50)),
                                     ("p99_ms", result.added(name, p99)))}
        for name in result.contenders if name != "bare"
    }
    return {
        "alg": result.alg,
        "contenders": result.contenders,
        "pairs": _pairs(result.pairs),
        "medians": _medians(result, half_load=False),
        "ratios": ratios,
        "cpu_ratio": _maybe(result.cpu_ratio()),
        "half_load": {
            "rate": result.half_load_rate,
            "bare_peak_rps": _maybe(result.spread("bare", rps)),
            "pairs": _pairs(result.half_load),
            "medians": _medians(result, half_load=True),
            "added": added,
        },
        "verdict": result.verdict,
        "problems": result.problems,
        "notes": result.notes,
    }


def write_summary(
    out_dir: Path, results: list[AlgResult], options: dict[str, Any], repo: Path
) -> Path:
    """Write the JSON summary under `out_dir`; returns its path. Raises OSError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    summary = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build": {**describe_build(repo), "versions": versions()},
        "machine": machine(),
        "options": options,
        "targets": {"gateway_over_bare": TARGETS, "redis_over_memory": STORE_TARGET,
                    "federated_over_own_key": FEDERATED_TARGET,
                    "certificate_over_own_key": CERTIFICATE_TARGET,
                    "usage_on_over_off": USAGE_TARGET},
        "results": [_alg_summary(result) for result in results],
    }
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
