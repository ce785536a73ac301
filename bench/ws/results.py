"""What one websocket benchmark run measured, and how it is printed: a table, then one
JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.ws.histogram import Histogram

# What says a part of the run was saturated (see `limits`): a process using this much of
# a core, a client event loop whose timers fired this late (p99), the machine this busy.
SATURATED_CORE_PCT = 90.0
LATE_LOOP_MS = 1000.0
BUSY_MACHINE_SHARE = 0.9
# Published on Redis, not yet read by the web workers: about 2 s of the full-size feed.
FEED_BEHIND_KIB = 1024.0
# A dispatch hub that handles less of the feed's messages/s than this has fallen behind.
FEED_KEPT_UP_SHARE = 0.95
SERVER_GROUPS = ("web", "ingest", "tracker", "broker", "redis", "postgres")
CLIENT_GROUPS = ("dispatch clients", "customer clients")

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
    processes: int = 0
    cpu_s: float = 0.0  # each process's own CPU over the window, summed
    cpu_wall_s: float = 0.0  # the window as each process measured it, summed
    undecodable: int = 0
    frames: dict[str, int] = field(default_factory=dict)  # received in the window, by type
    outside_window: int = 0  # frames received before or after it
    # Event-loop lag of the client processes (ms): how late they read what arrived.
    loop_lag: Histogram = field(default_factory=Histogram)

    def add(self, report: dict[str, Any]) -> None:
        self.processes += 1
        self.cpu_wall_s += float(report["cpu_wall_s"])
        self.undecodable += int(report["undecodable"])
        self.outside_window += int(report["outside_window"])
        for kind, n in report["messages"].items():
            self.frames[kind] = self.frames.get(kind, 0) + int(n)
        self.loop_lag.merge(Histogram.from_json(report["loop_lag"]))
        self.connected += int(report["connected"])
        for bucket, source in (
            (self.failed, report["failed"]),
            (self.closed_early, report["closed_early"]),
        ):
            for key, n in source.items():
                bucket[key] = bucket.get(key, 0) + int(n)
        self.cpu_s += float(report["cpu_s"])

    @property
    def cpu_pct_per_process(self) -> float | None:
        """Mean CPU of one of these client processes, % of a core, as they measured it."""
        if not self.cpu_wall_s:
            return None
        return round(100.0 * self.cpu_s / self.cpu_wall_s, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "cpu_pct_per_process": self.cpu_pct_per_process,
            "loop_lag_p50_ms": _round(self.loop_lag.percentile(0.50)),
            "loop_lag_p99_ms": _round(self.loop_lag.percentile(0.99)),
            "undecodable": self.undecodable,
        }


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
    # The web workers' websocket figures from /metrics, summed over the workers (each
    # scraped on its own port) and per worker: counters over the window, levels (clients,
    # queued) as of its end.
    server: dict[str, float]
    server_per_worker: list[dict[str, float]]
    cpu_pct: dict[str, float]  # by group, from /proc, plus the machine and the others
    sampled: dict[str, Any]  # bench.ws.sampler's report, CPU aside

    def as_json(self) -> str:
        data = asdict(self)
        for role in ("dispatch", "customers"):
            data[role].pop("loop_lag")
            data[role] |= getattr(self, role).summary()
        return json.dumps({"benchmark": "ws", **data}, sort_keys=True)

    def feed_rates(self) -> tuple[float, list[float]] | None:
        """(messages/s the tracker published on the feed in the window, messages/s each
        web worker's dispatch hub handled); None without both figures."""
        published = self.sampled.get("feed_published")
        span = self.sampled.get("server_counters_over_s")
        if not published or not span or not self.server_per_worker:
            return None
        offered = sum(channel["per_s"] for channel in published["window"].values())
        handled = [
            worker.get("ws_dispatch_bus_messages_total", 0.0) / span
            for worker in self.server_per_worker
        ]
        return offered, handled

    def limits(self) -> list[str]:
        """What was saturated, by the rules above; empty when nothing was."""
        found = []
        cores = int(self.machine.get("nproc") or 1)
        machine = self.cpu_pct.get("machine", 0.0)
        if machine >= BUSY_MACHINE_SHARE * 100.0 * cores:
            shares = {
                "server": sum(self.cpu_pct.get(g, 0.0) for g in SERVER_GROUPS),
                "clients": sum(self.cpu_pct.get(g, 0.0) for g in CLIENT_GROUPS),
                "publishers+harness": self.cpu_pct.get("publishers", 0.0)
                + self.cpu_pct.get("harness", 0.0),
                "others": self.cpu_pct.get("others", 0.0),
            }
            found.append(
                f"machine: {machine:.0f} % of {cores * 100} busy; "
                + ", ".join(f"{k} {v:.0f}" for k, v in shares.items())
            )
        for clients in (self.dispatch, self.customers):
            cpu = clients.cpu_pct_per_process
            lag = clients.loop_lag.percentile(0.99)
            if (cpu is not None and cpu >= SATURATED_CORE_PCT) or (
                lag is not None and lag >= LATE_LOOP_MS
            ):
                unread = self.sampled.get("kernel_unread_kib") or {}
                found.append(
                    f"{clients.role} clients: read late (each process {_num(cpu)} % of a core,"
                    f" event-loop lag p99 {_num(lag)} ms; median {_num(unread.get('median'))}"
                    " KiB waiting unread in all clients' sockets): latencies include the"
                    " clients' own backlog, not only the server's"
                )
        per_process = self.sampled.get("cpu_pct_per_process", {})
        webs = {k: v for k, v in per_process.items() if k.startswith("web-") and v is not None}
        queued = self.sampled.get("dispatch_queued") or {}
        unread = self.sampled.get("feed_unread_kib") or {}
        held = self.sampled.get("feed_in_redis_kib") or {}
        series = self.sampled.get("feed_unread_kib_series") or [0]
        rates = self.feed_rates()
        slow_hubs = rates is not None and min(rates[1]) < FEED_KEPT_UP_SHARE * rates[0]
        behind = slow_hubs or (
            max(unread.get("median") or 0.0, held.get("median") or 0.0) >= FEED_BEHIND_KIB
        )
        handled = (
            f"; each handled {' and '.join(f'{h:,.0f}' for h in rates[1])} of the"
            f" {rates[0]:,.0f} messages/s published"
            if rates is not None
            else ""
        )
        waiting = self.sampled.get("waiting_for_cpu_pct", {})
        workers_cpu = ", ".join(
            f"{k} used {v:.0f} % of a core and waited for one {_num(waiting.get(k))} % of the time"
            for k, v in webs.items()
        )
        if behind:
            found.append(
                f"server: the web workers ({workers_cpu}) read the Redis feed late: median"
                f" {_num(unread.get('median'))} KiB published and not yet read by them"
                f" (from {series[0]:,} to {series[-1]:,} KiB over the window){handled}, while their"
                f" dispatch outboxes hold a median {_num(queued.get('median'))} frames: every"
                " stream's latency includes that backlog, and what arrives in the window was"
                " published that much earlier"
            )
        elif any(v >= SATURATED_CORE_PCT for v in webs.values()):
            found.append(f"server: web workers busy ({workers_cpu})")
        return found


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
    lines += [
        "",
        f"{'client processes':<18}{'procs':>6}{'CPU %/proc':>12}{'loop lag p50':>14}{'p99 ms':>9}",
    ]
    for clients in (run.dispatch, run.customers):
        lines.append(
            f"{clients.role:<18}{clients.processes:>6}{_num(clients.cpu_pct_per_process):>12}"
            f"{_num(clients.loop_lag.percentile(0.5), 1):>14}"
            f"{_num(clients.loop_lag.percentile(0.99), 1):>9}"
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
        f"  busiest others: {run.sampled.get('busiest_others_pct') or '-'}",
        "  per process (% of a core used / % of the time waiting for one): "
        + ", ".join(
            f"{k} {_num(v)}/{_num(run.sampled.get('waiting_for_cpu_pct', {}).get(k))}"
            for k, v in run.sampled.get("cpu_pct_per_process", {}).items()
        ),
        "backlog over the window, sampled (min / median / max):",
    ]
    for key, label in (
        ("dispatch_queued", "frames queued in the dispatch outboxes, all workers"),
        ("kernel_unsent_kib", "KiB sent by the workers, not yet in the clients' sockets"),
        ("kernel_unread_kib", "KiB in the clients' sockets, not yet read by them"),
        ("feed_unread_kib", "KiB of the Redis feed in the workers' sockets, unread"),
        ("feed_in_redis_kib", "KiB of the Redis feed held by Redis for subscribers"),
        ("tracker_lag_s", "s the tracker is behind the hand-off streams"),
    ):
        spread = run.sampled.get(key)
        figures = " / ".join(_num(spread[k]) for k in ("min", "median", "max")) if spread else "-"
        lines.append(f"  {label:<58}{figures}")
    published = run.sampled.get("feed_published")
    rates = run.feed_rates()
    if rates is not None:
        lines.append(
            f"feed messages/s in the window: published {rates[0]:,.0f}, handled by each"
            f" worker's dispatch hub {' / '.join(f'{h:,.0f}' for h in rates[1])}"
        )
    if published:
        lines.append(
            "Redis feed published by the tracker, messages/s (KiB/s), warm-up | window: "
            + ", ".join(
                f"{name} {published['warmup'][name]['per_s']:,.0f}"
                f" ({published['warmup'][name]['kib_per_s']:,.0f})"
                f" | {published['window'][name]['per_s']:,.0f}"
                f" ({published['window'][name]['kib_per_s']:,.0f})"
                for name in published["window"]
            )
        )
    unanswered = {k: v for k, v in run.sampled.get("scrapes_unanswered", {}).items() if v}
    if unanswered:
        lines.append(f"  /metrics scrapes not answered within 5 s: {unanswered}")
    if run.server:
        workers = len(run.server_per_worker)
        lines.append(
            f"server (sum of {workers} web worker{'s' if workers != 1 else ''}, each scraped"
            f" on its own port; counters over {run.sampled.get('server_counters_over_s')} s): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run.server.items()))
        )
    limits = run.limits()
    lines.append("limit: " + ("; ".join(limits) if limits else "nothing saturated"))
    return "\n".join(lines)
