"""The run as a picture: what was stored, tracked and delivered, and the latencies,
against the offered rate (matplotlib, from the `bench` extra)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from bench.e2e.results import (
    TARGET_AIM,
    TARGET_P99_MS,
    TARGET_P99_RATE,
    TARGET_SUSTAINED,
    Run,
)


def plot_run(run: Run, path: Path) -> None:
    steps = run.steps
    offered = [s.offered_per_s for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))

    top = max(offered) * 1.1
    left.plot([0, top], [0, top], color="0.8", linestyle="--", label="offered")
    left.plot(offered, [s.committed_per_s or 0 for s in steps], "o-", label="stored fixes/s")
    left.plot(
        offered,
        [s.positions_per_client_s for s in steps],
        "s-",
        label="positions/s to each dispatch client",
    )
    for s in steps:
        if not s.kept_up:
            left.annotate(
                "not kept up",
                (s.offered_per_s, s.committed_per_s or 0),
                textcoords="offset points",
                xytext=(-30, -18),
                fontsize=8,
                color="tab:red",
            )
    left.axhline(TARGET_SUSTAINED, color="tab:green", linewidth=0.8, linestyle=":")
    left.axhline(TARGET_AIM, color="tab:olive", linewidth=0.8, linestyle=":")
    left.set_xlabel("offered fixes/s")
    left.set_ylabel("per second")
    left.set_title("throughput (dotted: 10k target, 15k aim)")
    events = left.twinx()
    events.plot(
        offered, [s.events_per_s or 0 for s in steps], "^:", color="tab:purple", label="events/s"
    )
    events.set_ylabel("events/s", color="tab:purple")
    events.set_ylim(bottom=0)
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = events.get_legend_handles_labels()
    left.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="upper left")
    left.grid(alpha=0.3)

    for kind, label, marker, color in (
        ("positions", "positions", "o", "tab:blue"),
        ("fence_events", "geofence events", "^", "tab:purple"),
        ("other_events", "device and delivery events", "v", "tab:brown"),
        ("track", "customer ETAs", "s", "tab:orange"),
    ):
        for q, style in (("p50", "-"), ("p99", "--")):
            xs, ys = [], []
            for s in steps:
                stream = s.stream(kind)
                value = None if stream is None else getattr(stream, f"{q}_ms")
                if value is not None:
                    xs.append(s.offered_per_s)
                    ys.append(value)
            if xs:
                right.plot(
                    xs, ys, marker=marker, linestyle=style, color=color, label=f"{label} {q}"
                )
    right.axhline(TARGET_P99_MS, color="tab:green", linewidth=0.8, linestyle=":")
    right.axvline(TARGET_P99_RATE, color="tab:green", linewidth=0.8, linestyle=":")
    right.set_yscale("log")
    right.set_xlabel("offered fixes/s")
    right.set_ylabel("publish → websocket, ms")
    right.set_title("latency (dotted: p99 ≤ 300 ms at 5k/s)")
    right.legend(fontsize=7, loc="upper left", ncol=2)
    right.grid(alpha=0.3, which="both")

    machine = run.machine
    fig.suptitle(
        f"bench.e2e {machine.get('date', '')}: {run.config['devices']:,} devices,"
        f" {run.config['fences']:,} fences, {machine.get('nproc')} cores,"
        " everything on one machine",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
