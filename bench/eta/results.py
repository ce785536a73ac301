"""How an ETA benchmark run is printed: a table, then one JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict

from bench.eta.run import TARGET_REDUCTION, Accuracy, Run, Timing


def accuracy_line(a: Accuracy) -> str:
    coverage = "-" if a.coverage is None else f"{a.coverage:.0%}"
    versus = "-" if a.vs_best_baseline is None else f"{a.vs_best_baseline:+.0%}"
    return (
        f"{a.method:<28}{a.n:>6}{a.mae_s:>8.0f}{a.median_s:>9.0f}{a.p90_s:>8.0f}"
        f"{a.bias_s:>8.0f}{coverage:>8}{versus:>11}"
    )


def _timing_line(t: Timing) -> str:
    return (
        f"{t.case:<28}{t.updates:>8,}{t.p50_us:>10,.0f}{t.p99_us:>10,.0f}{t.mean_us:>10,.0f}"
        f"{t.max_us:>11,.0f}{t.searches:>10,}{t.evicted:>9,}"
    )


def accuracy_header() -> str:
    return (
        f"{'method':<28}{'n':>6}{'MAE s':>8}{'median':>9}{'P90':>8}{'bias':>8}"
        f"{'P90 cov':>8}{'vs best bl':>11}"
    )


def table(run: Run) -> str:
    m, c = run.machine, run.config
    excluded = ", ".join(f"{r} {n}" for r, n in sorted(c["excluded"].items()))
    lines = [
        f"machine: {m['cpu_model']}, {m['nproc']} cores, Python {m['python']}",
        f"Porto: {c['trips']} trips of {c['taxis']} taxis; {c['folds_run']} fold(s) split by"
        f" taxi; {c['test_trips']} test trips (excluded: {excluded});"
        f" ETAs at {', '.join(f'{q:.0%}' for q in c['fractions'])} of each",
        f"road graph: {c['graph']['nodes']:,} nodes, {c['graph']['edges']:,} edges,"
        f" loaded in {c['graph']['load_s']:.2f} s; searched as {c['graph']['junctions']:,}"
        f" junctions, {c['graph']['chains']:,} chains; fleet mean speed"
        f" {c['fleet_mean_speed_mps']:.1f} m/s",
        "",
        "all test predictions (absolute errors in seconds; bias = mean predicted - actual)",
        accuracy_header(),
        *(accuracy_line(a) for a in run.accuracy if a.subset == "all"),
        "",
        "only where both ends are on the road graph's extract",
        accuracy_header(),
        *(accuracy_line(a) for a in run.accuracy if a.subset == "on_graph"),
        "",
    ]
    for method, met in run.target_met.items():
        verdict = "met" if met else "NOT met"
        lines.append(
            f"target (MAE >= {TARGET_REDUCTION:.0%} below better baseline), {method}: {verdict}"
        )
    f = run.fallback
    lines += [
        "",
        "profile level answering at the test positions' cell and hour: "
        + ", ".join(f"{k} {v:.1%}" for k, v in f["test_positions"].items()),
        "profile level answering for the grid estimate's cells: "
        + ", ".join(f"{k} {v:.1%}" for k, v in f["grid_cells"].items()),
        f"road edges timed from the cell profile (rest: speed limit x share):"
        f" {f['road_edges_from_profile']:.1%}; road estimates that fell back to the grid:"
        f" {f['road_estimates_on_grid']:.1%}",
        "",
        "residual lines after priming (slope, intercept s), first fold: "
        + "; ".join(
            f"{name} P50 {v['p50'][0]:.2f} x + {v['p50'][1]:.0f}, P90 {v['p90'][0]:.2f} x +"
            f" {v['p90'][1]:.0f}"
            for name, v in c["residual_lines_after_priming"][0].items()
        )
        + f"; one refit of both lines {c['residual_fit_ms']:.1f} ms",
        "",
        f"{'one ETA update':<28}{'updates':>8}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}"
        f"{'max us':>11}{'searches':>10}{'evicted':>9}",
        *(_timing_line(t) for t in run.timing),
    ]
    return "\n".join(lines)


def as_json(run: Run) -> str:
    return json.dumps(
        {
            "benchmark": "eta",
            "machine": run.machine,
            "config": run.config,
            "accuracy": [asdict(a) for a in run.accuracy],
            "target_met": run.target_met,
            "fallback": run.fallback,
            "timing": [asdict(t) for t in run.timing],
        }
    )
