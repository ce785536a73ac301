"""ingest.stats: rates since the last report, totals, and latency percentiles."""

from __future__ import annotations

import random

import pytest

from ingest import stats as stats_module
from ingest.stats import IngestStats


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(1000.0)
    monkeypatch.setattr(stats_module.time, "monotonic", clock)
    return clock


def new_stats(clock: Clock) -> IngestStats:
    # The dataclass default took the real time.monotonic at class creation.
    s = IngestStats()
    s._last_report = clock.now
    return s


def test_report_rates_percentiles_and_totals(clock: Clock) -> None:
    s = new_stats(clock)
    s.counts["messages"] += 500
    s.counts["fixes_committed"] += 400
    s.counts["rejected_invalid_json"] += 3
    latencies = [float(v) for v in range(1, 102)]
    random.Random(7).shuffle(latencies)
    for value in latencies:
        s.record_latency(value + 0.04)
    clock.now += 2.0

    report = s.report()

    assert report == {
        "messages_per_s": 250.0,
        "committed_fixes_per_s": 200.0,
        "commit_latency_p50_ms": 51.0,
        "commit_latency_p99_ms": 100.0,
        "totals": {"fixes_committed": 400, "messages": 500, "rejected_invalid_json": 3},
    }
    assert list(report["totals"]) == sorted(report["totals"])


def test_report_rates_are_since_the_previous_report(clock: Clock) -> None:
    s = new_stats(clock)
    s.counts["messages"] += 1000
    s.counts["fixes_committed"] += 1000
    s.record_latency(5.0)
    clock.now += 10.0
    first = s.report()
    assert first["messages_per_s"] == 100.0

    s.counts["messages"] += 30
    clock.now += 4.0
    second = s.report()
    assert second["messages_per_s"] == 7.5
    assert second["committed_fixes_per_s"] == 0.0
    # Latencies were reset by the first report.
    assert second["commit_latency_p50_ms"] is None
    assert second["commit_latency_p99_ms"] is None
    assert second["totals"] == {"fixes_committed": 1000, "messages": 1030}


def test_report_with_nothing_and_no_time_elapsed(clock: Clock) -> None:
    s = new_stats(clock)
    assert s.report() == {
        "messages_per_s": 0.0,
        "committed_fixes_per_s": 0.0,
        "commit_latency_p50_ms": None,
        "commit_latency_p99_ms": None,
        "totals": {},
    }


def test_latencies_are_rounded_to_a_tenth(clock: Clock) -> None:
    s = new_stats(clock)
    s.record_latency(12.345)
    clock.now += 1
    report = s.report()
    assert report["commit_latency_p50_ms"] == 12.3
    assert report["commit_latency_p99_ms"] == 12.3
