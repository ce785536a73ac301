"""What one benchmark run measured, and how it is printed: a table, then one JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Baseline:
    """The bare aiomqtt subscriber, offered more than it can take."""

    received_per_s: float  # consumed by its `async for` loop
    dropped_per_s: float  # shed by its bounded queue (acknowledged, never consumed)
    target_per_s: float  # 0: publishers unpaced
    offered_per_s: float
    subscriber_cpu_pct: float
    broker_cpu_pct: float
    publishers_cpu_pct: float
    machine_cpu_pct: float

    @property
    def other_cpu_pct(self) -> float:
        """Busy CPU not used by the measured processes: other load on the machine."""
        ours = self.subscriber_cpu_pct + self.broker_cpu_pct + self.publishers_cpu_pct
        return max(0.0, self.machine_cpu_pct - ours)


@dataclass
class Step:
    target_per_s: float
    offered_per_s: float
    published: int
    committed_per_s: float | None
    ratio_to_bare: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    drain_s: float | None  # from the last publish until all was committed; None: timed out
    ingester_cpu_pct: float
    ingester_peak_rss_mib: float | None
    broker_cpu_pct: float
    postgres_cpu_pct: float
    redis_cpu_pct: float
    publishers_cpu_pct: float
    machine_cpu_pct: float

    @property
    def other_cpu_pct(self) -> float:
        """Busy CPU not used by the measured processes (the benchmark's own driver and
        anything else running on the machine): high values mean a disturbed step."""
        ours = (
            self.ingester_cpu_pct
            + self.broker_cpu_pct
            + self.postgres_cpu_pct
            + self.redis_cpu_pct
            + self.publishers_cpu_pct
        )
        return max(0.0, self.machine_cpu_pct - ours)


@dataclass
class Verification:
    published: int
    rows: int
    distinct: int
    devices: int
    quarantined: int
    ingester_totals: dict[str, int] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.rows == self.published == self.distinct and self.quarantined == 0


@dataclass
class Run:
    machine: dict[str, Any]
    config: dict[str, Any]
    baseline: Baseline | None = None
    steps: list[Step] = field(default_factory=list)
    verification: Verification | None = None

    def as_json(self) -> str:
        body = asdict(self)
        if self.baseline is not None:
            body["baseline"]["other_cpu_pct"] = self.baseline.other_cpu_pct
        for step, fields in zip(self.steps, body["steps"], strict=True):
            fields["other_cpu_pct"] = step.other_cpu_pct
        if self.verification is not None:
            body["verification"]["exact"] = self.verification.exact
        return json.dumps({"benchmark": "ingest", **body})


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


_COLUMNS = (
    ("target/s", 9),
    ("offered/s", 9),
    ("committed/s", 11),
    ("/bare", 5),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("drain s", 7),
    ("ingest CPU%", 11),
    ("RSS MiB", 7),
    ("broker CPU%", 11),
    ("pg CPU%", 7),
    ("redis CPU%", 10),
    ("pub CPU%", 8),
    ("machine%", 8),
    ("other%", 6),
)


def table(run: Run) -> str:
    lines = [f"machine: {run.machine['cpu_model']}, {run.machine['nproc']} cores"]
    if run.baseline is not None:
        b = run.baseline
        lines.append(
            f"bare aiomqtt receive: {_num(b.received_per_s)} msg/s"
            f" (offered {_num(b.offered_per_s)}/s, queue shed {_num(b.dropped_per_s)}/s;"
            f" subscriber CPU"
            f" {_num(b.subscriber_cpu_pct)}%, broker {_num(b.broker_cpu_pct)}%,"
            f" publishers {_num(b.publishers_cpu_pct)}%, machine {_num(b.machine_cpu_pct)}%"
            f" of {100 * run.machine['nproc']}%, other {_num(b.other_cpu_pct)}%)"
        )
    lines.append("  ".join(name.rjust(width) for name, width in _COLUMNS))
    for s in run.steps:
        cells = (
            _num(s.target_per_s),
            _num(s.offered_per_s),
            _num(s.committed_per_s),
            _num(s.ratio_to_bare, 2),
            _num(s.latency_p50_ms),
            _num(s.latency_p99_ms),
            _num(s.drain_s, 1),
            _num(s.ingester_cpu_pct),
            _num(s.ingester_peak_rss_mib),
            _num(s.broker_cpu_pct),
            _num(s.postgres_cpu_pct),
            _num(s.redis_cpu_pct),
            _num(s.publishers_cpu_pct),
            _num(s.machine_cpu_pct),
            _num(s.other_cpu_pct),
        )
        lines.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)))
    lines.append(
        "CPU%: 100 = one core. Latency: publish -> commit; p50 = median of the per-second"
        " p50s, p99 = worst second. /bare = committed / bare aiomqtt receive."
        " drain = last publish -> all committed."
    )
    if run.verification is not None:
        v = run.verification
        verdict = "OK: every fix stored exactly once" if v.exact else "MISMATCH"
        lines.append(
            f"verification: published {v.published:,}, telemetry rows {v.rows:,}"
            f" (distinct {v.distinct:,}), devices {v.devices:,},"
            f" quarantined {v.quarantined:,} -> {verdict}"
        )
    return "\n".join(lines)
