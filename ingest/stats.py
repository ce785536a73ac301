"""Counters of one ingester, and the periodic line that reports them."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Enough samples for a stable p99 per reporting interval without unbounded growth.
MAX_LATENCY_SAMPLES = 200_000


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


@dataclass
class IngestStats:
    """Totals since start, plus fix-time-to-commit latencies since the last report."""

    counts: Counter[str] = field(default_factory=Counter)
    _latencies_ms: list[float] = field(default_factory=list)
    _last_report: float = field(default_factory=time.monotonic)
    _last_counts: Counter[str] = field(default_factory=Counter)

    def record_latency(self, latency_ms: float) -> None:
        if len(self._latencies_ms) < MAX_LATENCY_SAMPLES:
            self._latencies_ms.append(latency_ms)

    def report(self) -> dict[str, Any]:
        """Rates since the previous report, totals, and latency percentiles; resets the
        interval."""
        now = time.monotonic()
        elapsed = max(now - self._last_report, 1e-9)
        delta = self.counts - self._last_counts
        latencies = sorted(self._latencies_ms)
        self._latencies_ms = []
        self._last_report, self._last_counts = now, Counter(self.counts)
        p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
        return {
            "messages_per_s": round(delta["messages"] / elapsed, 1),
            "committed_fixes_per_s": round(delta["fixes_committed"] / elapsed, 1),
            "commit_latency_p50_ms": None if p50 is None else round(p50, 1),
            "commit_latency_p99_ms": None if p99 is None else round(p99, 1),
            "totals": dict(sorted(self.counts.items())),
        }
