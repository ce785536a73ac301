"""Counters of one ingester, and the periodic line that reports them."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fleetpulse.latencies import LatencySamples


@dataclass
class IngestStats:
    """Totals since start, plus fix-time-to-commit latencies since the last report."""

    counts: Counter[str] = field(default_factory=Counter)
    _latencies_ms: LatencySamples = field(default_factory=LatencySamples)
    _last_report: float = field(default_factory=time.monotonic)
    _last_counts: Counter[str] = field(default_factory=Counter)

    def record_latency(self, latency_ms: float) -> None:
        self._latencies_ms.record(latency_ms)

    def report(self) -> dict[str, Any]:
        """Rates since the previous report, totals, and latency percentiles; resets the
        interval."""
        now = time.monotonic()
        elapsed = max(now - self._last_report, 1e-9)
        delta = self.counts - self._last_counts
        p50, p99 = self._latencies_ms.take()
        self._last_report, self._last_counts = now, Counter(self.counts)
        return {
            "messages_per_s": round(delta["messages"] / elapsed, 1),
            "committed_fixes_per_s": round(delta["fixes_committed"] / elapsed, 1),
            "commit_latency_p50_ms": p50,
            "commit_latency_p99_ms": p99,
            "totals": dict(sorted(self.counts.items())),
        }
