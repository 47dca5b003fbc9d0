"""Benchmark figures: medians and spreads over interleaved pairs, per-pair ratios, the verdict."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from load import LoadResult

TARGETS = {"ES256": 0.75, "RS256": 0.85}  # gateway (memory ledger) over the bare proxy, req/s
STORE_TARGET = 0.90  # the gateway on the Redis ledger over the same gateway on memory, req/s
# A platform's token must cost no more than the client's own assertion: federated over
# own-key (both RS256, memory ledger) at 1.0 less a 5 % allowance for round-to-round noise.
FEDERATED_TARGET = 0.95
FEDERATED = "gateway/federated"  # the contender whose client sends a platform's token
# A CA-anchored client (its chain validated once, then cached) must stay within 10 % of the
# same client on its registered key: certificate over own-key at 0.90 or more.
CERTIFICATE_TARGET = 0.90
CERTIFICATE = "gateway/certificate"  # the contender whose client sends its x5c chain
OWN_KEY = "gateway/memory"  # the same client with its own assertions, on the same ledger
# Usage tracking (one dict update per accepted request) must not cost more than 3 % of
# throughput: the gateway as shipped (usage on) over the same gateway with usage.enabled
# false, memory ledger, at 0.97 or more.
USAGE_TARGET = 0.97
USAGE_OFF = "gateway/usage-off"  # the gateway with usage.enabled: false

Figure = Callable[[LoadResult], float]


def rps(run: LoadResult) -> float:
    return run.rps


def cpu_us(run: LoadResult) -> float:
    return run.cpu_us_per_request


def p50(run: LoadResult) -> float:
    return run.p50_ms


def p99(run: LoadResult) -> float:
    return run.p99_ms


@dataclass(frozen=True, slots=True)
class ReplayLatency:
    """The replay check's time over one measured run, from the gateway's own histogram."""

    label: str  # the store label as exported: memory, tiered (Redis behind a local tier), redis
    checks: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class Run:
    """One measured run of one contender."""

    load: LoadResult
    replay: ReplayLatency | None = None


Pair = dict[str, Run]  # contender name -> its run; a run that failed is absent


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of some values and their range."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread | None:
        """None when there is no value."""
        found = list(values)
        if not found:
            return None
        return cls(statistics.median(found), min(found), max(found), len(found))


@dataclass(frozen=True, slots=True)
class Comparison:
    """`top` over `bottom`, pair by pair; a target makes it part of the verdict."""

    label: str
    top: str
    bottom: str
    target: float | None = None


@dataclass(slots=True)
class AlgResult:
    alg: str
    contenders: list[str]
    stores: list[str]
    baseline: bool
    pairs: list[Pair] = field(default_factory=list)
    half_load_rate: float | None = None  # half the bare proxy's median peak, req/s
    half_load: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def primary_store(self) -> str:
        """The store the gateway/bare target is about: memory when it ran."""
        return "memory" if "memory" in self.stores else self.stores[0]

    def spread(self, name: str, figure: Figure, *, half_load: bool = False) -> Spread | None:
        pairs = self.half_load if half_load else self.pairs
        return Spread.of(figure(pair[name].load) for pair in pairs if name in pair)

    def ratios(self, top: str, bottom: str, figure: Figure = rps) -> list[float | None]:
        """`top` over `bottom` in each pair (None where either run is missing or zero)."""
        return [_ratio(pair, top, bottom, figure) for pair in self.pairs]

    def ratio(self, top: str, bottom: str, figure: Figure = rps) -> Spread | None:
        return Spread.of(value for value in self.ratios(top, bottom, figure) if value is not None)

    def added(self, name: str, figure: Figure) -> list[float | None]:
        """What `name` adds to the bare proxy's latency in each half-load pair, ms."""
        return [
            figure(pair[name].load) - figure(pair["bare"].load)
            if name in pair and "bare" in pair else None
            for pair in self.half_load
        ]

    def comparisons(self) -> list[Comparison]:
        target = TARGETS.get(self.alg)
        found = [
            Comparison(f"gateway/{store} / bare", f"gateway/{store}", "bare",
                       target if store == self.primary_store else None)
            for store in self.stores
        ]
        if {"memory", "redis"} <= set(self.stores):
            found.append(Comparison("redis / memory", "gateway/redis", "gateway/memory",
                                    STORE_TARGET))
        if FEDERATED in self.contenders:
            found.append(Comparison("federated / own-key", FEDERATED, OWN_KEY, FEDERATED_TARGET))
        if CERTIFICATE in self.contenders:
            found.append(Comparison("certificate / own-key", CERTIFICATE, OWN_KEY,
                                    CERTIFICATE_TARGET))
        if USAGE_OFF in self.contenders:
            found.append(Comparison("usage on / off", OWN_KEY, USAGE_OFF, USAGE_TARGET))
        if self.baseline:
            for store in self.stores:
                found.append(Comparison(f"baseline/{store} / bare", f"baseline/{store}", "bare"))
                found.append(Comparison(f"gateway/{store} / baseline/{store}",
                                        f"gateway/{store}", f"baseline/{store}"))
        return found

    def cpu_ratio(self) -> Spread | None:
        """Bare CPU per request over the gateway's: the throughput ratio if both saturated."""
        return self.ratio("bare", f"gateway/{self.primary_store}", cpu_us)

    @property
    def verdict(self) -> str:
        if self.problems:
            return "FAIL"
        judged = [(c, self.ratio(c.top, c.bottom)) for c in self.comparisons() if c.target]
        if not judged or any(ratio is None for _, ratio in judged):
            return "n/a"
        below = any(ratio.median < c.target for c, ratio in judged if ratio and c.target)
        return "BELOW" if below else "PASS"


def _ratio(pair: Pair, top: str, bottom: str, figure: Figure) -> float | None:
    if top not in pair or bottom not in pair:
        return None
    under = figure(pair[bottom].load)
    return figure(pair[top].load) / under if under else None
