"""The Porto trips as trips (the geofence loader gives fixes per taxi, without trip
boundaries), the split by taxi, and which test trips are excluded and why."""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.geofence import porto
from tracker.live import haversine_m
from tracker.positions import DeviceKind, Fix
from tracker.speed_profiles import MAX_SEGMENT_SPEED_MPS

ROADS = Path("porto/porto_2022-11.osm.pbf")
# A test trip must last this long and end this far (straight line) from where it
# started: shorter ones leave seconds to predict at 75%, or are a taxi circling back.
MIN_TRIP_S = 180.0
MIN_TRIP_STRAIGHT_M = 500.0
SPLIT_SEED = 20130701  # the trips' date: a fixed, documented shuffle of the taxis


@dataclass(frozen=True)
class Trip:
    trip_id: str
    taxi: str
    fixes: tuple[Fix, ...]

    @property
    def duration_s(self) -> float:
        return (self.fixes[-1].ts - self.fixes[0].ts).total_seconds()


def missing() -> str | None:
    reason = porto.missing()
    if reason is None and not (porto.data_dir() / ROADS).is_file():
        reason = f"{porto.data_dir() / ROADS} not found (set {porto.DATA_DIR_ENV})"
    return reason


def roads_path() -> Path:
    return porto.data_dir() / ROADS


def load_trips(root: Path | None = None) -> list[Trip]:
    """Every trip, in file order; fixes as `porto.load_fixes` makes them."""
    trips: list[Trip] = []
    with open((root or porto.data_dir()) / porto.TRIPS, newline="") as f:
        for row in csv.DictReader(f):
            start = datetime.fromtimestamp(int(row["TIMESTAMP"]), UTC)
            fixes = []
            for i, (lon, lat) in enumerate(json.loads(row["POLYLINE"])):
                ts = start + porto.FIX_INTERVAL * i
                fixes.append(
                    Fix(row["TAXI_ID"], ts, float(lat), float(lon), ts, kind=DeviceKind.VEHICLE)
                )
            if fixes:
                trips.append(Trip(row["TRIP_ID"].strip(), row["TAXI_ID"], tuple(fixes)))
    return trips


def split_taxis(trips: Sequence[Trip], folds: int) -> list[set[str]]:
    """The taxis in `folds` disjoint groups of about equal size (seeded shuffle)."""
    taxis = sorted({t.taxi for t in trips})
    random.Random(SPLIT_SEED).shuffle(taxis)
    return [set(taxis[k::folds]) for k in range(folds)]


def exclusion(trip: Trip) -> str | None:
    """Why a trip is not a test trip, or None."""
    fixes = trip.fixes
    for a, b in itertools.pairwise(fixes):
        dt = (b.ts - a.ts).total_seconds()
        if haversine_m(a.lat, a.lon, b.lat, b.lon) > MAX_SEGMENT_SPEED_MPS * dt:
            return "gps_outlier"
    if trip.duration_s < MIN_TRIP_S:
        return "too_short_time"
    first, last = fixes[0], fixes[-1]
    if haversine_m(first.lat, first.lon, last.lat, last.lon) < MIN_TRIP_STRAIGHT_M:
        return "too_short_distance"
    return None
