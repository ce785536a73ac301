"""`python -m bench.drone_energy`: fit the drone battery model on each DJI log (both
gauges), evaluate it in-sample, on the log's second half from its first, and on the
other log; print a table, then one JSON line."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime

import msgspec

from bench.drone_energy.run import Row, load_logs, missing, run
from tracker.drone_energy import MATRICE_200, PHANTOM_4_PRO, Gauge

_COLUMNS = (
    ("fitted on", 22),
    ("gauge", 7),
    ("evaluated on", 22),
    ("samples", 7),
    ("flight s", 8),
    ("win", 3),
    ("hover %/s", 9),
    ("v %/m", 8),
    ("v² %s/m²", 9),
    ("climb %/m", 9),
    ("desc %/m", 9),
    ("MAE %", 5),
    ("RMSE %", 6),
    ("pred %", 6),
    ("actual %", 8),
)
_SAME = 1e-4  # relative: the constants keep five significant digits
# What the constants in tracker/drone_energy.py were fitted on, to flag a drift.
_IN_CODE = {"Phantom 4 Pro": PHANTOM_4_PRO, "Matrice 200": MATRICE_200}


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(
        c.ljust(w) if i < 3 else c.rjust(w)
        for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))
    )


def _row(row: Row) -> str:
    r, m = row.result, row.model
    return _line(
        (
            row.fitted_on,
            row.gauge.value,
            row.evaluated_on,
            f"{r.samples:,}",
            f"{r.flight_s:.0f}",
            str(r.windows),
            *(f"{c:+.5f}" for c in m.coefficients),
            f"{r.window_mae_pct:.2f}",
            f"{r.window_rmse_pct:.2f}",
            f"{r.predicted_drop_pct:.1f}",
            f"{r.actual_drop_pct:.1f}",
        )
    )


def _drift(rows: list[Row]) -> list[str]:
    notes = []
    for row in rows:
        constant = _IN_CODE.get(row.fitted_on)
        if row.kind != "in-sample" or row.gauge is not Gauge.CURRENT or constant is None:
            continue
        pairs = zip(
            msgspec.structs.astuple(constant), msgspec.structs.astuple(row.model), strict=True
        )
        same = all(math.isclose(a, b, rel_tol=_SAME) for a, b in pairs)
        verdict = "match this fit" if same else "DIFFER from this fit: refit and update them"
        notes.append(f"constants in code for {row.fitted_on}: {verdict}")
    return notes


def main() -> int:
    reason = missing()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    rows = run(load_logs())
    print("battery drop per window (20 s) and over the whole flight, in % of the battery;")
    print("actual = the reported percentage (quantised to 1 %, so whole-flight +-1)")
    print(_line(tuple(name for name, _ in _COLUMNS)))
    for row in rows:
        print(_row(row))
    for note in _drift(rows):
        print(note)
    print(
        json.dumps(
            {
                "benchmark": "drone_energy",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": [
                    {
                        "fitted_on": r.fitted_on,
                        "gauge": r.gauge.value,
                        "evaluated_on": r.evaluated_on,
                        "kind": r.kind,
                        "model": msgspec.to_builtins(r.model),
                        "result": msgspec.to_builtins(r.result),
                    }
                    for r in rows
                ],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
