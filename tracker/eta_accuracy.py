"""The deployment's own ETA accuracy: every published ETA against the arrival it had.

Grouped by the hour of day the ETA was given (in the fleet's time zone) and by area (a
coarse H3 cell of where the vehicle was). Pure.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import h3

AREA_RES = 6  # ~36 km² cells: a district, enough predictions per group to mean something


@dataclass(frozen=True)
class Settled:
    """One published ETA whose delivery has arrived."""

    predicted_at: datetime
    lat: float
    lon: float
    p50: datetime
    p90: datetime
    arrived_at: datetime
    method: str


@dataclass(frozen=True)
class Accuracy:
    group: str
    predictions: int
    mae_s: float
    bias_s: float  # mean of predicted - actual: positive means ETAs were late-side
    p90_coverage: float  # share of arrivals no later than the P90


def summarise(group: str, rows: list[Settled]) -> Accuracy:
    errors = [(r.p50 - r.arrived_at).total_seconds() for r in rows]
    return Accuracy(
        group=group,
        predictions=len(rows),
        mae_s=statistics.fmean(abs(e) for e in errors),
        bias_s=statistics.fmean(errors),
        p90_coverage=sum(r.arrived_at <= r.p90 for r in rows) / len(rows),
    )


def report(rows: Iterable[Settled], tz: ZoneInfo) -> list[Accuracy]:
    """Overall, then by hour of day, then by area; groups with no prediction are left out."""
    settled = list(rows)
    if not settled:
        return []
    by_hour: dict[str, list[Settled]] = defaultdict(list)
    by_area: dict[str, list[Settled]] = defaultdict(list)
    for row in settled:
        by_hour[f"hour {row.predicted_at.astimezone(tz).hour:02d}"].append(row)
        by_area[f"area {h3.latlng_to_cell(row.lat, row.lon, AREA_RES)}"].append(row)
    return [
        summarise("all", settled),
        *(summarise(g, by_hour[g]) for g in sorted(by_hour)),
        *(summarise(g, by_area[g]) for g in sorted(by_area)),
    ]
