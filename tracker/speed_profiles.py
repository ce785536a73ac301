"""Speed profiles: how fast the fleet actually moves, per H3 cell and hour of week. Pure.

Learned from the fleet's own fixes: consecutive fixes of one device (by fix time) make a
segment whose speed is the great-circle distance over the time between them. Segments
that cannot be real (GPS jumps implying impossible speeds, repeated or far-apart fix
times) are excluded and counted. A segment's speed is credited once to every cell at
`PROFILE_RES` its straight line passes.

A lookup answers from the finest level that has `min_samples`:
cell at that hour of week → cell at any hour → parent cells (resolutions 8, 7, 6) at any
hour → every sample → a configured default; the answer names its level, so callers can
say how often the hour-of-week cells fell back. Its speed is shrunk towards the coarser
levels (`SHRINK_SAMPLES`): a mean of five samples is mostly noise, and blending it with
its parent's cut the benchmark's error by a tenth. The any-hour levels mix every hour,
so before the cell-and-hour level is blended in they are scaled by the hour of week's
factor: how much faster or slower than usual the fleet drove the same cells at that hour
(rush hour in Porto: ~0.8). On a validation split of the benchmark's training taxis this
cut the calibrated road ETA's MAE by ~2.5 %.

The profile is additive: rows of (cell, hour_of_week, sum_speed, samples) are exactly
what a SQL job aggregating segment speeds would store, and merging two profiles adds
their rows. What is stored is finer (`sample_rows`): partial sums per cell and UTC
quarter hour (`SAMPLE_BUCKET`) of the segments' first fixes, so that the hour of week is
taken in the fleet's time zone only when loading: every zone's offset from UTC is a
multiple of 15 minutes, so a quarter hour lies in one local hour in every zone, and a
change of time zone applies to the whole history at once.
"""

from __future__ import annotations

import enum
import itertools
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TypeVar

import h3.api.basic_int as h3
import msgspec

from tracker.live import haversine_m
from tracker.positions import Fix

_When = TypeVar("_When", bound=Hashable)

PROFILE_RES = 9  # ~0.1 km2 cells: a few blocks of a city
PARENT_RES = (8, 7, 6)  # fallbacks, finest first (~0.7, 5, 36 km2)
HOURS_PER_WEEK = 168
# A fleet vehicle on city roads never exceeds this; a segment implying more is a GPS jump.
MAX_SEGMENT_SPEED_MPS = 50.0  # 180 km/h
MIN_SEGMENT_S = 1.0  # repeated or sub-second fix times say nothing about speed
# Over a longer gap the device may have parked or been switched off: not a traversal.
MAX_SEGMENT_S = 120.0
MIN_SAMPLES = 3  # a level answers only with at least this many segment speeds
# Weight, in samples, of the coarser level's estimate in a level's speed: a cell with 50
# samples of its own gets half its own mean and half its parent's. Tuned on the Porto
# benchmark (20..300 all beat no shrinkage; 50 was best).
SHRINK_SAMPLES = 50.0
DEFAULT_SPEED_MPS = 8.0  # ~29 km/h, urban delivery; only for an empty profile
# Weight, in samples at the fleet's mean speed, of "no different from usual" in an hour
# of week's factor (below): an hour with a few dozen samples moves it only a little.
HOUR_FACTOR_SAMPLES = 100.0
PROFILE_DATA_VERSION = 1
# Stored partial sums are per quarter hour: see the module docstring.
SAMPLE_BUCKET = timedelta(minutes=15)
_BUCKET_MINUTES = 15


class Level(enum.StrEnum):
    """Which level of the fallback chain answered a lookup, finest first."""

    CELL_HOUR = "cell_hour"
    CELL = "cell"
    RES8 = "res8"
    RES7 = "res7"
    RES6 = "res6"
    GLOBAL = "global"
    DEFAULT = "default"


LEVELS: tuple[Level, ...] = tuple(Level)
# The lookup's chain, coarsest first (after the global mean).
_CHAIN_LEVELS = (Level.RES6, Level.RES7, Level.RES8, Level.CELL, Level.CELL_HOUR)


def hour_of_week(ts: datetime, zone: tzinfo) -> int:
    """0..167: Monday 00:00-00:59 in the fleet's time zone is 0."""
    if ts.tzinfo is None:
        raise ValueError("fix times must be timezone-aware")
    local = ts.astimezone(zone)
    return local.weekday() * 24 + local.hour


@dataclass(frozen=True)
class SegmentRules:
    """Which consecutive-fix segments count as real traversals."""

    max_speed_mps: float = MAX_SEGMENT_SPEED_MPS
    min_dt_s: float = MIN_SEGMENT_S
    max_dt_s: float = MAX_SEGMENT_S


class SegmentStats(msgspec.Struct, gc=False):
    """Counts of segments seen and why some were excluded."""

    used: int = 0
    too_fast: int = 0  # GPS jumps
    too_short: int = 0  # dt below min_dt_s (repeated fix times)
    too_long: int = 0  # dt above max_dt_s (gaps)

    @property
    def excluded(self) -> int:
        return self.too_fast + self.too_short + self.too_long

    def add(self, other: SegmentStats) -> SegmentStats:
        return SegmentStats(
            self.used + other.used,
            self.too_fast + other.too_fast,
            self.too_short + other.too_short,
            self.too_long + other.too_long,
        )


class ProfileRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The unit of storage: what `GROUP BY cell, hour_of_week` of segment speeds gives."""

    cell: int  # H3 cell at PROFILE_RES (integer form)
    hour_of_week: int
    sum_speed: float  # m/s, summed over the samples
    samples: int


class SampleRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What is stored: segment speeds of one cell in one quarter hour, summed."""

    bucket: datetime  # start of the UTC quarter hour of the segments' first fixes
    cell: int  # H3 cell at PROFILE_RES (integer form)
    sum_speed: float  # m/s, summed over the samples
    samples: int


class ProfileData(msgspec.Struct, frozen=True):
    """Serialisable form of a profile (msgpack or JSON via msgspec)."""

    rows: list[ProfileRow]
    stats: SegmentStats
    version: int = PROFILE_DATA_VERSION


class SpeedLookup(msgspec.Struct, frozen=True, gc=False):
    speed_mps: float
    level: Level
    samples: int


def runs(fixes: Iterable[Fix], rules: SegmentRules, stats: SegmentStats) -> Iterator[list[Fix]]:
    """Runs of fixes of one device, in fix-time order, whose consecutive segments are all
    real traversals; every excluded segment ends a run and is counted in `stats`."""
    by_device: dict[str, list[Fix]] = defaultdict(list)
    for fix in fixes:
        by_device[fix.device_id].append(fix)
    for device_fixes in by_device.values():
        device_fixes.sort(key=lambda f: f.ts)
        run = device_fixes[:1]
        for prev, fix in itertools.pairwise(device_fixes):
            dt = (fix.ts - prev.ts).total_seconds()
            if dt < rules.min_dt_s:
                stats.too_short += 1
            elif dt > rules.max_dt_s:
                stats.too_long += 1
            elif haversine_m(prev.lat, prev.lon, fix.lat, fix.lon) > rules.max_speed_mps * dt:
                stats.too_fast += 1
            else:
                stats.used += 1
                run.append(fix)
                continue
            if len(run) > 1:
                yield run
            run = [fix]
        if len(run) > 1:
            yield run


def cells_between(start: int, end: int) -> list[int]:
    """The cells a straight segment passes, start and end included."""
    if start == end:
        return [start]
    try:
        return list(h3.grid_path_cells(start, end))
    except h3.H3BaseException:  # across a pentagon or too far apart: keep the ends
        return [start, end]


def _segment_speeds(
    fixes: Iterable[Fix], rules: SegmentRules, stats: SegmentStats
) -> Iterator[tuple[datetime, list[int], float]]:
    """(first fix's time, cells passed, speed) of every real segment."""
    for run in runs(fixes, rules, stats):
        cell = h3.latlng_to_cell(run[0].lat, run[0].lon, PROFILE_RES)
        for prev, fix in itertools.pairwise(run):
            next_cell = h3.latlng_to_cell(fix.lat, fix.lon, PROFILE_RES)
            dt = (fix.ts - prev.ts).total_seconds()
            speed = haversine_m(prev.lat, prev.lon, fix.lat, fix.lon) / dt
            yield prev.ts, cells_between(cell, next_cell), speed
            cell = next_cell


def profile_rows(
    fixes: Iterable[Fix], zone: tzinfo, rules: SegmentRules | None = None
) -> tuple[list[ProfileRow], SegmentStats]:
    """The profile rows of these fixes, and what was excluded. A segment counts at the
    hour of week (in `zone`) of its first fix."""
    summed, stats = _summed(fixes, rules, lambda ts: hour_of_week(ts, zone))
    rows = [ProfileRow(c, h, total, n) for (h, c), (total, n) in summed.items()]
    rows.sort(key=lambda r: (r.cell, r.hour_of_week))
    return rows, stats


def bucket_start(ts: datetime) -> datetime:
    """The start, in UTC, of the quarter hour (`SAMPLE_BUCKET`) that holds `ts`."""
    if ts.tzinfo is None:
        raise ValueError("fix times must be timezone-aware")
    utc = ts.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % _BUCKET_MINUTES, second=0, microsecond=0)


def sample_rows(
    fixes: Iterable[Fix], rules: SegmentRules | None = None
) -> tuple[list[SampleRow], SegmentStats]:
    """The stored form of these fixes' segment speeds: partial sums per quarter hour of
    the segment's first fix and cell passed; and what was excluded. Grouped by cell and
    the buckets' hours of week they give exactly `profile_rows`."""
    summed, stats = _summed(fixes, rules, bucket_start)
    rows = [SampleRow(b, c, total, n) for (b, c), (total, n) in summed.items()]
    rows.sort(key=lambda r: (r.bucket, r.cell))
    return rows, stats


def _summed(
    fixes: Iterable[Fix], rules: SegmentRules | None, when: Callable[[datetime], _When]
) -> tuple[dict[tuple[_When, int], tuple[float, int]], SegmentStats]:
    """Segment speeds summed and counted per (`when` of the segment's first fix, cell
    passed)."""
    stats = SegmentStats()
    sums: dict[tuple[_When, int], float] = defaultdict(float)
    counts: dict[tuple[_When, int], int] = defaultdict(int)
    for ts, cells, speed in _segment_speeds(fixes, rules or SegmentRules(), stats):
        at = when(ts)
        for passed in cells:
            sums[at, passed] += speed
            counts[at, passed] += 1
    return {key: (sums[key], n) for key, n in counts.items()}, stats


class SpeedProfile:
    """Mean speed per (cell, hour of week) with a fallback chain. Immutable."""

    def __init__(
        self,
        rows: Sequence[ProfileRow] = (),
        stats: SegmentStats | None = None,
        *,
        min_samples: int = MIN_SAMPLES,
        default_speed_mps: float = DEFAULT_SPEED_MPS,
        shrink_samples: float = SHRINK_SAMPLES,
        hour_factor_samples: float = HOUR_FACTOR_SAMPLES,
    ) -> None:
        self.hour_factor_samples = hour_factor_samples
        self.stats = stats or SegmentStats()
        self.min_samples = min_samples
        self.default_speed_mps = default_speed_mps
        self.shrink_samples = shrink_samples
        self._hour: dict[tuple[int, int], tuple[float, int]] = {}
        # Any-hour sums of res-9 cells and of their parents (distinct ints per resolution).
        sums: dict[int, float] = defaultdict(float)
        counts: dict[int, int] = defaultdict(int)
        total, samples = 0.0, 0
        for row in rows:
            key = (row.cell, row.hour_of_week)
            old_sum, old_n = self._hour.get(key, (0.0, 0))
            self._hour[key] = (old_sum + row.sum_speed, old_n + row.samples)
            sums[row.cell] += row.sum_speed
            counts[row.cell] += row.samples
            total += row.sum_speed
            samples += row.samples
        for cell in list(counts):
            if h3.get_resolution(cell) != PROFILE_RES:
                raise ValueError(f"profile row cell {cell:x} is not at resolution {PROFILE_RES}")
            for res in PARENT_RES:
                parent = h3.cell_to_parent(cell, res)
                sums[parent] += sums[cell]
                counts[parent] += counts[cell]
        self._any: dict[int, tuple[float, int]] = {c: (sums[c], n) for c, n in counts.items()}
        self._global = (total, samples)
        self._hour_factors = self._learn_hour_factors()

    def _learn_hour_factors(self) -> dict[int, float]:
        """Per hour of week, how much faster or slower than usual the fleet drove the
        same cells: the hour's speeds over what those cells' any-hour means predict
        (comparing like with like: a night hour's few trips on fast roads are not a
        faster city). Shrunk towards 1 by `hour_factor_samples`."""
        observed: dict[int, float] = defaultdict(float)
        expected: dict[int, float] = defaultdict(float)
        for (cell, hour), (total, n) in self._hour.items():
            cell_total, cell_n = self._any[cell]
            if not cell_n:
                continue  # rows without samples (an emptied table's leftovers) say nothing
            observed[hour] += total
            expected[hour] += n * cell_total / cell_n
        prior = self.hour_factor_samples * self.mean_speed_mps
        return {hour: (observed[hour] + prior) / (expected[hour] + prior) for hour in observed}

    def hour_factor(self, hour: int) -> float:
        """Speed at this hour of week relative to the any-hour means (1.0 when the hour
        has no samples)."""
        return self._hour_factors.get(hour, 1.0)

    @classmethod
    def build(
        cls, fixes: Iterable[Fix], zone: tzinfo, rules: SegmentRules | None = None
    ) -> SpeedProfile:
        rows, stats = profile_rows(fixes, zone, rules)
        return cls(rows, stats)

    @property
    def samples(self) -> int:
        return self._global[1]

    @property
    def mean_speed_mps(self) -> float:
        """Mean of every segment speed (the default when there are none)."""
        total, n = self._global
        return total / n if n else self.default_speed_mps

    def rows(self) -> list[ProfileRow]:
        return [ProfileRow(c, h, s, n) for (c, h), (s, n) in sorted(self._hour.items())]

    def lookup(self, cell: int, hour: int) -> SpeedLookup:
        """Mean speed for a cell at PROFILE_RES at an hour of week.

        The level is the finest with at least `min_samples`. The speed is shrunk towards
        the coarser levels: each level's mean is blended with the estimate of the level
        above it, weighted by `shrink_samples` for the latter, so a cell-hour with a
        handful of samples moves its cell's mean only a little."""
        chain = (
            self._any.get(h3.cell_to_parent(cell, PARENT_RES[2])),
            self._any.get(h3.cell_to_parent(cell, PARENT_RES[1])),
            self._any.get(h3.cell_to_parent(cell, PARENT_RES[0])),
            self._any.get(cell),
            self._hour.get((cell, hour)),
        )
        prior = self.shrink_samples
        total, n = self._global
        speed = (total + prior * self.default_speed_mps) / (n + prior)
        level, samples = (Level.GLOBAL, n) if n >= self.min_samples else (Level.DEFAULT, 0)
        for found, found_level in zip(chain, _CHAIN_LEVELS, strict=True):
            if found_level is Level.CELL_HOUR:
                # The any-hour levels mix every hour: scale them to this one.
                speed *= self.hour_factor(hour)
            if found is not None:
                total, n = found
                speed = (total + prior * speed) / (n + prior)
                if n >= self.min_samples:
                    level, samples = found_level, n
        return SpeedLookup(speed, level, samples)

    def lookup_at(self, lat: float, lon: float, ts: datetime, zone: tzinfo) -> SpeedLookup:
        return self.lookup(h3.latlng_to_cell(lat, lon, PROFILE_RES), hour_of_week(ts, zone))

    def merge(self, other: SpeedProfile) -> SpeedProfile:
        """A profile of both profiles' samples (this one's settings)."""
        return SpeedProfile(
            [*self.rows(), *other.rows()],
            self.stats.add(other.stats),
            min_samples=self.min_samples,
            default_speed_mps=self.default_speed_mps,
            shrink_samples=self.shrink_samples,
            hour_factor_samples=self.hour_factor_samples,
        )

    def to_data(self) -> ProfileData:
        return ProfileData(self.rows(), self.stats)

    @classmethod
    def from_data(
        cls,
        data: ProfileData,
        *,
        min_samples: int = MIN_SAMPLES,
        default_speed_mps: float = DEFAULT_SPEED_MPS,
        shrink_samples: float = SHRINK_SAMPLES,
        hour_factor_samples: float = HOUR_FACTOR_SAMPLES,
    ) -> SpeedProfile:
        if data.version != PROFILE_DATA_VERSION:
            raise ValueError(f"profile data version {data.version} is not supported")
        return cls(
            data.rows,
            data.stats,
            min_samples=min_samples,
            default_speed_mps=default_speed_mps,
            shrink_samples=shrink_samples,
            hour_factor_samples=hour_factor_samples,
        )

    def to_bytes(self) -> bytes:
        return msgspec.msgpack.encode(self.to_data())

    @classmethod
    def from_bytes(cls, raw: bytes) -> SpeedProfile:
        return cls.from_data(msgspec.msgpack.decode(raw, type=ProfileData))
