"""What one end-to-end run measured, and how it is printed: tables, then one JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.e2e.ceilings import Ceiling
from bench.e2e.profile import Profile

# A step keeps up when each of these is at least this share of what it is compared with.
KEEP_UP = 0.95
TARGET_SUSTAINED = 10_000.0
TARGET_AIM = 15_000.0
TARGET_P99_RATE = 5_000.0
TARGET_P99_MS = 300.0


@dataclass(frozen=True)
class Stream:
    """One kind of websocket delivery over a step's window, all clients together."""

    kind: str  # positions, events, etas (dispatch), track (customers)
    deliveries: int
    per_s: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Step:
    target_per_s: float
    window_s: float
    published: int
    offered_per_s: float
    committed_per_s: float | None  # stored in PostgreSQL, all ingesters
    commit_p50_ms: float | None  # publish → commit, the ingesters' own figures
    commit_p99_ms: float | None
    handed_on_per_s: float | None  # hand-off entries added to the tracker's streams
    tracked_per_s: float | None  # ... and read by the tracker (same unit)
    tracker_lag_entries: int  # at the window's end
    tracker_p99_ms: float | None  # hand-off entry → published, the worst tracker's
    events_per_s: float | None  # made by the tracker
    streams: list[Stream]
    event_classes: list[Stream]  # the events again: geofence ones, and the others
    dispatch_clients: int
    positions_per_client_s: float  # positions one dispatch client received, per second
    ws_closed: dict[str, int]  # sockets the server closed during the window, by code
    cpu_pct: dict[str, float]
    peak_rss_mib: dict[str, float]
    background: dict[str, Any]
    drain_s: float | None  # publishing end → everything stored and tracked; None: timed out
    limits: list[str] = field(default_factory=list)  # what did not keep up

    @property
    def kept_up(self) -> bool:
        return not self.limits

    def stream(self, kind: str) -> Stream | None:
        return next((s for s in (*self.streams, *self.event_classes) if s.kind == kind), None)

    def ws_deliveries_per_s(self) -> float:
        return sum(s.per_s for s in self.streams)

    def judge(self) -> None:
        """Name each stage that did not keep up with what the stage before it passed on:
        ingest with the offer, the trackers with the hand-off, the websockets with what
        was stored (so a slow ingester is not blamed on the web app too)."""
        limits = []
        stored = self.committed_per_s or 0.0
        if stored < KEEP_UP * self.offered_per_s:
            limits.append("ingest")
        if self.handed_on_per_s and (self.tracked_per_s or 0.0) < KEEP_UP * self.handed_on_per_s:
            limits.append("tracker")
        if self.positions_per_client_s < KEEP_UP * stored:
            limits.append("websocket")
        if self.drain_s is None:
            limits.append("drain")
        self.limits = limits


@dataclass
class Run:
    config: dict[str, Any]
    machine: dict[str, Any]
    setup: dict[str, Any]
    background_before: dict[str, Any]
    ceilings: list[Ceiling] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    profile_rate: float | None = None
    profiles: list[Profile] = field(default_factory=list)

    def sustained(self) -> Step | None:
        """The highest step that kept up."""
        kept = [s for s in self.steps if s.kept_up]
        return max(kept, key=lambda s: s.offered_per_s) if kept else None

    def positions_p99_at(self, rate: float) -> float | None:
        step = next((s for s in self.steps if s.target_per_s == rate), None)
        stream = step.stream("positions") if step is not None else None
        return stream.p99_ms if stream is not None else None

    def summary(self) -> dict[str, Any]:
        best = self.sustained()
        p99 = self.positions_p99_at(TARGET_P99_RATE)
        return {
            "sustained_fixes_per_s": None if best is None else best.committed_per_s,
            "sustained_offered_per_s": None if best is None else best.offered_per_s,
            "target_sustained_met": best is not None
            and (best.committed_per_s or 0.0) >= KEEP_UP * TARGET_SUSTAINED,
            "aim_met": best is not None and (best.committed_per_s or 0.0) >= KEEP_UP * TARGET_AIM,
            "positions_p99_ms_at_5k": p99,
            "target_p99_met": p99 is not None and p99 <= TARGET_P99_MS,
        }

    def as_json(self) -> str:
        return json.dumps(
            {"benchmark": "e2e", **asdict(self), "summary": self.summary()}, sort_keys=True
        )


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _latency(step: Step, kind: str) -> tuple[str, str]:
    stream = step.stream(kind)
    if stream is None:
        return "-", "-"
    return _n(stream.p50_ms), _n(stream.p99_ms)


def table(run: Run) -> str:
    lines = []
    for ceiling in run.ceilings:
        offer = f"{ceiling.target_per_s:,.0f}/s" if ceiling.target_per_s else "unpaced"
        lines.append(
            f"ceiling, {ceiling.what}: {ceiling.received_per_s:,.0f} msg/s"
            f" (offered {ceiling.offered_per_s:,.0f}/s, {offer}; subscriber CPU"
            f" {ceiling.subscriber_cpu_pct:.0f}%, broker {ceiling.broker_cpu_pct:.0f}%,"
            f" publishers {ceiling.publishers_cpu_pct:.0f}%, machine"
            f" {ceiling.machine_cpu_pct:.0f}%)"
        )
    bg = run.background_before
    lines.append(
        f"background before the run: machine {bg['machine_cpu_pct']:.0f}% busy, load"
        f" {bg['loadavg_end'][0]:.1f}, top {bg['top_others']}"
    )
    lines.append("")
    lines.append(
        f"{'target/s':>9} {'offered/s':>9} {'stored/s':>9} {'tracked':>7} {'events/s':>8}"
        f" {'ws deliv/s':>10} {'pos p50':>7} {'pos p99':>7} {'fence p50':>9} {'fence p99':>9}"
        f" {'other p50':>9} {'other p99':>9} {'cust p50':>8} {'cust p99':>8} {'commit p99':>10}"
        f" {'tracker p99':>11}"
        f" {'drain s':>7}  kept up"
    )
    for s in run.steps:
        tracked = (
            f"{s.tracked_per_s / s.handed_on_per_s:.2f}"
            if s.handed_on_per_s and s.tracked_per_s is not None
            else "-"
        )
        pos, fence = _latency(s, "positions"), _latency(s, "fence_events")
        other, eta = _latency(s, "other_events"), _latency(s, "track")
        lines.append(
            f"{s.target_per_s:>9,.0f} {s.offered_per_s:>9,.0f} {_n(s.committed_per_s):>9}"
            f" {tracked:>7} {_n(s.events_per_s):>8} {s.ws_deliveries_per_s():>10,.0f}"
            f" {pos[0]:>7} {pos[1]:>7} {fence[0]:>9} {fence[1]:>9} {other[0]:>9} {other[1]:>9}"
            f" {eta[0]:>8} {eta[1]:>8}"
            f" {_n(s.commit_p99_ms):>10} {_n(s.tracker_p99_ms):>11} {_n(s.drain_s, 1):>7}"
            f"  {'yes' if s.kept_up else 'no: ' + ', '.join(s.limits)}"
        )
    lines.append(
        "stored: committed to PostgreSQL; tracked: hand-off entries the trackers read over"
        " those written; latencies in ms from publish to websocket receipt: positions,"
        " geofence events (held for the reorder window), other events, customers' ETAs;"
        " commit p99: the worst ingester's publish → commit; tracker p99: the worst"
        " tracker's hand-off → published; drain: last publish →"
        " everything stored and tracked"
    )
    lines.append("")
    names = list(run.steps[0].cpu_pct) if run.steps else []
    lines.append(f"{'target/s':>9} " + " ".join(f"{n:>9}" for n in names) + "   CPU %")
    for s in run.steps:
        lines.append(
            f"{s.target_per_s:>9,.0f} " + " ".join(f"{s.cpu_pct.get(n, 0.0):>9.0f}" for n in names)
        )
    rss = list(run.steps[-1].peak_rss_mib) if run.steps else []
    if rss:
        last = run.steps[-1].peak_rss_mib
        lines.append("peak RSS MiB: " + ", ".join(f"{n} {last[n]:,.0f}" for n in rss))
    for s in run.steps:
        b = s.background
        lines.append(
            f"background at {s.target_per_s:,.0f}/s: load {b['loadavg_start'][0]:.1f}→"
            f"{b['loadavg_end'][0]:.1f}, machine {b['machine_cpu_pct']:.0f}%, interrupts"
            f" {b['irq_cpu_pct']:.0f}%, steal {b['steal_cpu_pct']:.0f}%, other"
            f" {b['other_cpu_pct']:.0f}% {b['top_others']}"
        )
    summary = run.summary()
    lines.append("")
    lines.append(
        f"sustained: {_n(summary['sustained_fixes_per_s'])} fixes/s stored (target"
        f" {TARGET_SUSTAINED:,.0f}: {'met' if summary['target_sustained_met'] else 'NOT met'};"
        f" aim {TARGET_AIM:,.0f}: {'met' if summary['aim_met'] else 'NOT met'})"
    )
    lines.append(
        f"positions p99 at {TARGET_P99_RATE:,.0f}/s: {_n(summary['positions_p99_ms_at_5k'])} ms"
        f" (target {TARGET_P99_MS:.0f} ms: {'met' if summary['target_p99_met'] else 'NOT met'})"
    )
    for profile in run.profiles:
        lines.append("")
        if profile.error is not None:
            lines.append(f"profile of {profile.process}: {profile.error}")
            continue
        lines.append(
            f"profile of {profile.process} at {_n(run.profile_rate)}/s offered,"
            f" {profile.samples:,} samples; self time:"
        )
        lines += [f"  {pct:5.1f}%  {frame}" for frame, pct in profile.self_pct]
        lines.append("  our frames, inclusive:")
        lines += [f"  {pct:5.1f}%  {frame}" for frame, pct in profile.inclusive_pct]
    return "\n".join(lines)
