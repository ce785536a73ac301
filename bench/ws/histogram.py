"""Latency histograms with logarithmic buckets: constant memory however many samples,
mergeable across client processes by adding counts, percentiles within 2 %."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LOWEST_MS = 0.1
GROWTH = 1.02  # bucket width relative to its lower bound: the percentiles' resolution
BUCKETS = int(math.log(600_000 / LOWEST_MS) / math.log(GROWTH)) + 2  # up to 10 minutes


def _bucket(ms: float) -> int:
    if ms <= LOWEST_MS:
        return 0
    return min(BUCKETS - 1, int(math.log(ms / LOWEST_MS) / math.log(GROWTH)) + 1)


def _upper_ms(bucket: int) -> float:
    return LOWEST_MS * GROWTH**bucket


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    total: int = 0
    # Clocks are the same machine's, but a fix published in one millisecond and received
    # in the same can show as negative by rounding: counted in the lowest bucket.
    negative: int = 0

    def add(self, ms: float) -> None:
        if ms < 0:
            self.negative += 1
        self.counts[_bucket(ms)] += 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total
        self.negative += other.negative

    def percentile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile, in ms."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return _upper_ms(i)
        return _upper_ms(BUCKETS - 1)

    def as_json(self) -> dict[str, object]:
        """Sparse: {bucket: count} of the non-empty buckets."""
        return {
            "buckets": {str(i): n for i, n in enumerate(self.counts) if n},
            "total": self.total,
            "negative": self.negative,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Histogram:
        histogram = cls()
        buckets = data.get("buckets", {})
        assert isinstance(buckets, dict)
        for key, n in buckets.items():
            histogram.counts[int(key)] += int(n)
        histogram.total = int(str(data.get("total", 0)))
        histogram.negative = int(str(data.get("negative", 0)))
        return histogram
