"""What one websocket benchmark run measured, and how it is printed: a table, then one
JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.ws.histogram import Histogram

# Stream label for each kind of delivery the clients count.
KINDS = {
    "positions": "dispatch positions",
    "events": "dispatch events",
    "etas": "dispatch ETAs",
    "track": "customer updates",
}


@dataclass
class Clients:
    role: str
    wanted: int
    connected: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    closed_early: dict[str, int] = field(default_factory=dict)  # by close code
    cpu_s: float = 0.0

    def add(self, report: dict[str, Any]) -> None:
        self.connected += int(report["connected"])
        for bucket, source in (
            (self.failed, report["failed"]),
            (self.closed_early, report["closed_early"]),
        ):
            for key, n in source.items():
                bucket[key] = bucket.get(key, 0) + int(n)
        self.cpu_s += float(report["cpu_s"])


@dataclass
class Stream:
    kind: str
    deliveries: int
    per_s: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Run:
    config: dict[str, Any]
    machine: dict[str, Any]
    dispatch: Clients
    customers: Clients
    window_s: float
    published: int
    acked: int
    offered_per_s: float
    streams: list[Stream]
    # The web workers' websocket figures from /metrics: counters over the window,
    # levels at its middle.
    server: dict[str, float]
    cpu_pct: dict[str, float]

    def as_json(self) -> str:
        return json.dumps({"benchmark": "ws", **asdict(self)}, sort_keys=True)


def streams(reports: list[dict[str, Any]], window_s: float) -> list[Stream]:
    """Deliveries per second and latency percentiles per kind, over every client."""
    counts: dict[str, int] = {}
    latency: dict[str, Histogram] = {}
    for report in reports:
        for kind, n in report["deliveries"].items():
            counts[kind] = counts.get(kind, 0) + int(n)
        for kind, data in report["latency"].items():
            latency.setdefault(kind, Histogram()).merge(Histogram.from_json(data))
    out = []
    for kind in KINDS:
        histogram = latency.get(kind, Histogram())
        n = counts.get(kind, 0)
        out.append(
            Stream(
                kind,
                n,
                round(n / window_s, 1),
                _round(histogram.percentile(0.50)),
                _round(histogram.percentile(0.99)),
            )
        )
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(run: Run) -> str:
    lines = [
        f"fixes offered {run.offered_per_s:,.0f}/s over {run.window_s:.0f} s"
        f" ({run.published:,} published, {run.acked:,} acknowledged)",
        "",
        f"{'clients':<12}{'wanted':>9}{'connected':>11}{'failed':>9}{'cut off':>9}  early closes",
    ]
    for clients in (run.dispatch, run.customers):
        lines.append(
            f"{clients.role:<12}{clients.wanted:>9,}{clients.connected:>11,}"
            f"{sum(clients.failed.values()):>9,}{sum(clients.closed_early.values()):>9,}"
            f"  {clients.closed_early or ''}"
        )
    lines += ["", f"{'stream':<22}{'deliveries':>12}{'per s':>12}{'p50 ms':>10}{'p99 ms':>10}"]
    for stream in run.streams:
        lines.append(
            f"{KINDS[stream.kind]:<22}{stream.deliveries:>12,}{_num(stream.per_s):>12}"
            f"{_num(stream.p50_ms, 1):>10}{_num(stream.p99_ms, 1):>10}"
        )
    lines += [
        "",
        "CPU % (100 = one core): " + ", ".join(f"{k} {v:.0f}" for k, v in run.cpu_pct.items()),
    ]
    if run.server:
        lines.append("server: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run.server.items())))
    return "\n".join(lines)
