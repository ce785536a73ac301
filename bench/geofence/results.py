"""How a geofence benchmark run is printed: a table, then one JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict

from bench.geofence.run import Row, Run

_COLUMNS = (
    ("part", 8),
    ("fences", 7),
    ("added", 7),
    ("cells", 10),
    ("build s", 7),
    ("index MiB", 9),
    ("fixes/s", 8),
    ("ratio", 5),
    ("lookups/s", 9),
    ("in/fix", 6),
    ("events", 7),
)


def row_line(row: Row) -> str:
    cells = (
        row.part,
        f"{row.fences:,}",
        f"{row.added:,}",
        f"{row.cells:,}",
        f"{row.build_s:.1f}",
        f"{row.index_mib:,.0f}",
        f"{row.fixes_per_s:,.0f}",
        "-" if row.ratio is None else f"{row.ratio:.2f}",
        f"{row.lookups_per_s:,.0f}",
        f"{row.mean_containing:.2f}",
        f"{row.events:,}",
    )
    return "  ".join(c.rjust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True))


def header() -> str:
    return "  ".join(name.rjust(width) for name, width in _COLUMNS)


def table(run: Run) -> str:
    m = run.machine
    lines = [
        f"machine: {m['cpu_model']}, {m['nproc']} cores, Python {m['python']}",
        f"Porto trips: {run.config['fixes']:,} fixes of {run.config['devices']} taxis;"
        f" engine rules {run.config['rules']}",
        header(),
        *(row_line(r) for r in run.rows),
    ]
    if run.scaling_ratio is not None:
        lines.append(
            f"scaling figure (largest extra / none): {run.scaling_ratio:.2f} (target >= 0.8)"
        )
    return "\n".join(lines)


def as_json(run: Run) -> str:
    return json.dumps(
        {
            "benchmark": "geofence",
            "machine": run.machine,
            "config": run.config,
            "rows": [asdict(r) for r in run.rows],
            "scaling_ratio": run.scaling_ratio,
        }
    )
