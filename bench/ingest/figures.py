"""Turns raw observations (stats lines, publisher reports) into the reported figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.ingest.ingester import StatLine


def offered(reports: Sequence[dict[str, Any]]) -> tuple[int, float, float, float]:
    """(fixes the broker accepted, offered fixes/s, window start, window end).

    The window runs from the first publisher's first publish to the last one's last; the
    rate counts what the broker acknowledged in it with a success reason code.
    """
    acked = sum(int(r["acked"]) - int(r["refused"]) for r in reports)
    start = min(float(r["first_publish_s"]) for r in reports)
    end = max(float(r["last_publish_s"]) for r in reports)
    return acked, acked / max(end - start, 1e-9), start, end


def rate_between(samples: Sequence[tuple[float, int]], start: float, end: float) -> float | None:
    """Growth per second of a running total between the first and last samples taken in
    [start, end]; None with fewer than two."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, v0), (t1, v1) = inside[0], inside[-1]
    return (v1 - v0) / (t1 - t0)


def committed_rate(lines: Sequence[StatLine], start: float, end: float) -> float | None:
    return rate_between([(line.at, line.committed) for line in lines], start, end)


def latency(
    lines: Sequence[StatLine], start: float, end: float
) -> tuple[float | None, float | None]:
    """(p50, p99) commit latency in ms of the fixes committed in [start, end].

    The ingester reports percentiles per one-second interval only; p50 is the median of
    the intervals' p50s weighted by fixes committed, p99 the worst interval's p99 (an upper
    bound of the true p99).
    """
    weighted: list[tuple[float, int]] = []
    worst: float | None = None
    previous: StatLine | None = None
    for line in lines:
        committed = line.committed - previous.committed if previous is not None else 0
        previous = line
        if not start <= line.at <= end or committed <= 0:
            continue
        if line.p50_ms is not None:
            weighted.append((line.p50_ms, committed))
        if line.p99_ms is not None:
            worst = line.p99_ms if worst is None else max(worst, line.p99_ms)
    if not weighted:
        return None, worst
    weighted.sort()
    half = sum(w for _, w in weighted) / 2
    running = 0
    for value, weight in weighted:
        running += weight
        if running >= half:
            return value, worst
    return weighted[-1][0], worst
