"""What the request path counts, as plain numbers, handed to prometheus_client off that path.

A prometheus_client sample costs a lock, label validation and, with worker processes, an
mmap write per call: eight of them were ~17 µs of every request. The request path adds to
dicts here instead; ``flush`` moves the sums into the metrics (periodically, before every
scrape and at shutdown), so an exposition shows what a per-request update would have shown
then, and multiprocess mode keeps working (the values still go through prometheus_client).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any


class Buckets:
    """One histogram's observations since the last flush: a count per bucket and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value takes it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def drain_into(self, child: Any) -> None:
        """Add to a prometheus_client Histogram child what observe() calls would have added.

        The child's per-bucket values and sum (``_buckets``, ``_sum``) are what its own
        ``observe`` increments; a test pins that to the installed prometheus_client.
        """
        counts, self.counts = self.counts, [0] * len(self.counts)
        total, self.total = self.total, 0.0
        if not any(counts):
            return
        child._sum.inc(total)
        for index, count in enumerate(counts):
            if count:
                child._buckets[index].inc(count)


class RequestTally:
    """Counters and histograms of the request path, by label values (bounded sets only)."""

    __slots__ = ("counts", "histograms")

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, ...], int] = {}  # (metric, *labels) -> count
        self.histograms: dict[tuple[Any, ...], Buckets] = {}  # (metric, *labels) -> buckets

    def count(self, key: tuple[Any, ...]) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def observe(self, key: tuple[Any, ...], bounds: Sequence[float], value: float) -> None:
        buckets = self.histograms.get(key)
        if buckets is None:
            buckets = self.histograms[key] = Buckets(bounds)
        buckets.observe(value)

    def drain(self) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], Buckets]]:
        """The counts gathered since the last drain (and the histograms to drain)."""
        counts, self.counts = self.counts, {}
        return counts, self.histograms
