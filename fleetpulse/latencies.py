"""Latency samples of one reporting interval, and their percentiles."""

from __future__ import annotations

from dataclasses import dataclass, field

# Enough samples for a stable p99 per reporting interval without unbounded growth.
MAX_LATENCY_SAMPLES = 200_000


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


@dataclass
class LatencySamples:
    """Milliseconds recorded since the last `take`; past `limit` a sample is not kept
    (the interval's percentiles come from its first `limit` samples)."""

    limit: int = MAX_LATENCY_SAMPLES
    _values: list[float] = field(default_factory=list)

    def record(self, latency_ms: float) -> None:
        if len(self._values) < self.limit:
            self._values.append(latency_ms)

    def take(self) -> tuple[float | None, float | None]:
        """p50 and p99 (rounded to 0.1 ms) of the samples since the last take; resets."""
        values = sorted(self._values)
        self._values = []
        p50, p99 = percentile(values, 0.50), percentile(values, 0.99)
        return (
            None if p50 is None else round(p50, 1),
            None if p99 is None else round(p99, 1),
        )
