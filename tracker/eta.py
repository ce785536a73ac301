"""ETAs to a vehicle's remaining stops, with P50 and P90 from the residuals seen. Pure.

Each leg (position → first stop → next stop ...) is timed on the road graph when a
`Router` is configured and both ends snap to it; otherwise on the H3 grid: straight-line
distance x a detour factor learned from the fleet's own trips for the leg's area and
distance band, driven at the profile speeds of the cells on the straight line (their
harmonic mean: the time per cell adds up, not the speed). Planned service times of the
stops before a stop are added.

The model's time is "raw"; P50 and P90 come from the (raw, actual) driving times
recorded on arrival, per method (`tracker.eta_residuals`): lines fitted by quantile
regression, so a biased model is corrected by its own record, including the fixed time
a stop costs beyond the drive. Before there are enough residuals, a prior spread is used.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

import h3.api.basic_int as h3
import msgspec

from tracker.eta_residuals import Residuals
from tracker.live import haversine_m
from tracker.positions import Fix
from tracker.routing import Router
from tracker.speed_profiles import (
    PROFILE_RES,
    Level,
    SegmentRules,
    SegmentStats,
    SpeedProfile,
    cells_between,
    hour_of_week,
    runs,
)

# Upper bounds (m) of the straight-line distance bands; beyond the last is one more band.
DISTANCE_BANDS_M = (500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0)
DETOUR_AREA_RES = 7  # ~5 km2: a district, enough trips to learn from
DEFAULT_DETOUR = 1.35  # typical road/straight ratio in a city, until learned
MAX_DETOUR = 3.0  # a larger ratio is a loop (looking for a fare), not a route
MIN_DETOUR_STRAIGHT_M = 200.0  # below this GPS noise dominates the ratio
MIN_DETOUR_SAMPLES = 20
DETOUR_PAIRS_PER_RUN = 40  # stride origins/destinations so long runs do not dominate
MIN_GRID_SPEED_MPS = 1.0  # a cell's mean of ~0 (a taxi rank) must not stop the estimate


class EtaMethod(enum.StrEnum):
    ROAD = "road"  # every leg routed on the road graph
    GRID = "grid"  # at least one leg estimated on the H3 grid


class Stop(msgspec.Struct, frozen=True, gc=False):
    stop_id: str
    lat: float
    lon: float
    service_s: float = 0.0  # planned time spent at the stop


class StopEta(msgspec.Struct, frozen=True, gc=False):
    """Remaining time from the position at `computed_at` to one stop."""

    stop_id: str
    method: EtaMethod
    computed_at: datetime
    travel_s: float  # raw model driving time over every leg up to this stop
    service_s: float  # planned service times of the earlier stops
    metres: float  # predicted driving distance
    straight_m: float  # straight-line length of the legs (the distance band's basis)
    p50_s: float
    p90_s: float

    @property
    def arrival_p50(self) -> datetime:
        return self.computed_at + timedelta(seconds=self.p50_s)

    @property
    def arrival_p90(self) -> datetime:
        return self.computed_at + timedelta(seconds=self.p90_s)


def distance_band(metres: float) -> int:
    return bisect.bisect_left(DISTANCE_BANDS_M, metres)


class DetourRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Additive like the profile rows: geometric mean = exp(sum_log_ratio / samples)."""

    area: int  # H3 cell at DETOUR_AREA_RES of the leg's origin
    band: int
    sum_log_ratio: float
    samples: int


class DetourModel:
    """Road (driven) distance over straight-line distance per area and distance band,
    falling back to the band over all areas, then DEFAULT_DETOUR."""

    def __init__(self, rows: Iterable[DetourRow] = (), min_samples: int = MIN_DETOUR_SAMPLES):
        self.min_samples = min_samples
        self._rows: dict[tuple[int, int], tuple[float, int]] = {}
        self._bands: dict[int, tuple[float, int]] = {}
        for row in rows:
            total, n = self._rows.get((row.area, row.band), (0.0, 0))
            self._rows[row.area, row.band] = (total + row.sum_log_ratio, n + row.samples)
            total, n = self._bands.get(row.band, (0.0, 0))
            self._bands[row.band] = (total + row.sum_log_ratio, n + row.samples)

    @classmethod
    def learn(cls, fixes: Iterable[Fix], rules: SegmentRules | None = None) -> DetourModel:
        return cls(detour_rows(fixes, rules))

    def rows(self) -> list[DetourRow]:
        return [DetourRow(a, b, s, n) for (a, b), (s, n) in sorted(self._rows.items())]

    def factor(self, lat: float, lon: float, straight_m: float) -> float:
        band = distance_band(straight_m)
        area = h3.latlng_to_cell(lat, lon, DETOUR_AREA_RES)
        for found in (self._rows.get((area, band)), self._bands.get(band)):
            if found is not None and found[1] >= self.min_samples:
                return math.exp(found[0] / found[1])
        return DEFAULT_DETOUR


def detour_rows(fixes: Iterable[Fix], rules: SegmentRules | None = None) -> list[DetourRow]:
    """Detour ratios of pairs of fixes along each run of real segments: the chord length
    of the path driven between them over the straight line."""
    sums: dict[tuple[int, int], float] = defaultdict(float)
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for run in runs(fixes, rules or SegmentRules(), SegmentStats()):
        driven = [0.0]
        for prev, fix in itertools.pairwise(run):
            driven.append(driven[-1] + haversine_m(prev.lat, prev.lon, fix.lat, fix.lon))
        stride = max(1, len(run) // DETOUR_PAIRS_PER_RUN)
        for i in range(0, len(run) - 1, stride):
            origin = run[i]
            area = h3.latlng_to_cell(origin.lat, origin.lon, DETOUR_AREA_RES)
            for j in range(i + 1, len(run), stride):
                straight = haversine_m(origin.lat, origin.lon, run[j].lat, run[j].lon)
                if straight < MIN_DETOUR_STRAIGHT_M:
                    continue
                ratio = min(max((driven[j] - driven[i]) / straight, 1.0), MAX_DETOUR)
                key = (area, distance_band(straight))
                sums[key] += math.log(ratio)
                counts[key] += 1
    return [DetourRow(a, b, sums[a, b], n) for (a, b), n in sorted(counts.items())]


@dataclass(frozen=True)
class Leg:
    """One leg's raw estimate."""

    seconds: float
    metres: float
    straight_m: float
    on_road: bool


class EtaEstimator:
    """ETAs on the road graph when a router is given, else on the H3 grid."""

    def __init__(
        self,
        profile: SpeedProfile,
        detours: DetourModel,
        zone: tzinfo,
        *,
        router: Router | None = None,
        residuals: Residuals | None = None,
    ) -> None:
        self.profile = profile
        self.detours = detours
        self.zone = zone
        self.router = router
        self.residuals = residuals or Residuals()
        # Profile levels that answered the grid estimates' cell lookups.
        self.grid_levels: dict[Level, int] = dict.fromkeys(Level, 0)

    def estimate(
        self,
        lat: float,
        lon: float,
        at: datetime,
        stops: Sequence[Stop],
        heading_deg: float | None = None,
    ) -> list[StopEta]:
        """ETAs from (lat, lon) at time `at` to each stop, visited in the given order.
        The heading of a moving vehicle (degrees from north) lets the road graph start
        the first leg ahead of it."""
        etas: list[StopEta] = []
        travel = service = metres = straight = 0.0
        on_road = True
        here = (lat, lon)
        heading = heading_deg
        for stop in stops:
            depart = at + timedelta(seconds=travel + service)
            leg = self.leg(here, (stop.lat, stop.lon), depart, heading)
            heading = None  # later legs start at a stop, standing
            travel += leg.seconds
            metres += leg.metres
            straight += leg.straight_m
            on_road = on_road and leg.on_road
            method = EtaMethod.ROAD if on_road else EtaMethod.GRID
            p50, p90 = self.residuals.quantiles(method, travel)
            etas.append(
                StopEta(
                    stop.stop_id,
                    method,
                    at,
                    travel,
                    service,
                    metres,
                    straight,
                    p50 + service,
                    p90 + service,
                )
            )
            service += stop.service_s
            here = (stop.lat, stop.lon)
        return etas

    def record_arrival(self, eta: StopEta, arrived_at: datetime) -> float | None:
        """Record how long the drive really took (the service times of earlier stops
        taken off); returns those seconds, or None when the arrival is not after the
        prediction (nothing to learn)."""
        actual = (arrived_at - eta.computed_at).total_seconds() - eta.service_s
        if actual <= 0:
            return None
        self.residuals.record(eta.method, eta.travel_s, actual)
        return actual

    def leg(
        self,
        origin: tuple[float, float],
        destination: tuple[float, float],
        depart: datetime,
        heading_deg: float | None = None,
    ) -> Leg:
        straight = haversine_m(*origin, *destination)
        if self.router is not None:
            route = self.router.route(origin, destination, depart, heading_deg)
            if route is not None:
                return Leg(route.seconds, route.metres, straight, True)
        return self._grid_leg(origin, destination, straight, depart)

    def _grid_leg(
        self,
        origin: tuple[float, float],
        destination: tuple[float, float],
        straight: float,
        depart: datetime,
    ) -> Leg:
        driven = straight * self.detours.factor(*origin, straight)
        cells = cells_between(
            h3.latlng_to_cell(*origin, PROFILE_RES), h3.latlng_to_cell(*destination, PROFILE_RES)
        )
        hour = hour_of_week(depart, self.zone)
        per_cell = driven / len(cells)
        seconds = 0.0
        for cell in cells:
            found = self.profile.lookup(cell, hour)
            self.grid_levels[found.level] += 1
            seconds += per_cell / max(found.speed_mps, MIN_GRID_SPEED_MPS)
        return Leg(seconds, driven, straight, False)
