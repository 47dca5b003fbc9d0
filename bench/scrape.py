"""Benchmark view of the gateway's /metrics: histogram buckets and quantiles estimated from them."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

REPLAY_CHECK = "pkjwt_replay_check_seconds"


@dataclass(frozen=True, slots=True)
class Buckets:
    """Cumulative counts per upper bound (seconds), as one histogram child exports them."""

    counts: Mapping[float, float]

    @property
    def total(self) -> float:
        return self.counts.get(math.inf, 0.0)

    def minus(self, earlier: Buckets) -> Buckets:
        """What was observed between the ``earlier`` scrape and this one."""
        return Buckets({bound: count - earlier.counts.get(bound, 0.0)
                        for bound, count in self.counts.items()})

    def quantile(self, q: float) -> float | None:
        """Seconds, interpolated linearly inside the bucket as Prometheus' histogram_quantile.

        None when nothing was observed; the highest finite bound when the quantile lies in
        the +Inf bucket.
        """
        if self.total <= 0:
            return None
        rank = q * self.total
        lower_bound, lower_count = 0.0, 0.0
        for bound in sorted(self.counts):
            count = self.counts[bound]
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, count
        return lower_bound


def fetch_histograms(url: str, name: str = REPLAY_CHECK) -> dict[str, Buckets]:
    """The ``name`` histogram's buckets per ``store`` label at ``url``.

    Raises OSError (urllib's URLError included) when the endpoint does not answer.
    """
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                store = sample.labels.get("store", "")
                found.setdefault(store, {})[float(sample.labels["le"])] = sample.value
    return {store: Buckets(counts) for store, counts in found.items()}
