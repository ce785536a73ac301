"""Speed profiles: segments from fixes, outliers excluded and counted, the fallback chain
and its levels, hour of week in the fleet's time zone, merge and serialisation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import h3.api.basic_int as h3
import pytest

from tracker.positions import Fix
from tracker.speed_profiles import (
    DEFAULT_SPEED_MPS,
    PROFILE_RES,
    Level,
    ProfileRow,
    SpeedProfile,
    bucket_start,
    hour_of_week,
    profile_rows,
    sample_rows,
)

LISBON = ZoneInfo("Europe/Lisbon")
# The centre of a res-9 cell (~150 m to its edges) in Porto, so short drives stay in it.
LAT, LON = h3.cell_to_latlng(h3.latlng_to_cell(41.15, -8.61, PROFILE_RES))
M_PER_DEG = 111_195.0  # haversine's sphere
# Monday 2013-07-01 03:00 UTC = 04:00 in Lisbon (summer time): hour of week 4.
T0 = datetime(2013, 7, 1, 3, 0, tzinfo=UTC)


def fix(device: str, seconds: float, north_m: float, east_m: float = 0.0) -> Fix:
    ts = T0 + timedelta(seconds=seconds)
    lat = LAT + north_m / M_PER_DEG
    lon = LON + east_m / (M_PER_DEG * math.cos(math.radians(LAT)))
    return Fix(device, ts, lat, lon, ts)


def drive(
    device: str, speed_mps: float, count: int, dt: float = 15.0, start_m: float = 0.0
) -> list[Fix]:
    """A device driving north at a constant speed, one fix every dt."""
    return [fix(device, i * dt, start_m + i * dt * speed_mps) for i in range(count)]


def test_hour_of_week_in_the_fleet_zone() -> None:
    # Sunday 23:30 UTC is Monday 00:30 in Lisbon in summer: the week's first hour.
    assert hour_of_week(datetime(2013, 6, 30, 23, 30, tzinfo=UTC), LISBON) == 0
    assert hour_of_week(datetime(2013, 6, 30, 23, 30, tzinfo=UTC), UTC) == 167
    # In winter Lisbon is on UTC.
    assert hour_of_week(datetime(2013, 1, 7, 10, 0, tzinfo=UTC), LISBON) == 10
    with pytest.raises(ValueError):
        hour_of_week(datetime(2013, 1, 7, 10, 0), LISBON)


def test_segments_count_at_the_local_hour_of_their_first_fix() -> None:
    rows, stats = profile_rows(drive("a", 5.0, 3), LISBON)
    assert stats.used == 2
    assert {r.hour_of_week for r in rows} == {4}
    rows, _ = profile_rows(drive("a", 5.0, 3), UTC)
    assert {r.hour_of_week for r in rows} == {3}


def test_mean_speed_of_one_cell() -> None:
    # 1 m/s for 4 segments: 60 m in all, inside one res-9 cell.
    fixes = drive("a", 1.0, 5)
    rows, stats = profile_rows(fixes, LISBON)
    cell = h3.latlng_to_cell(LAT, LON, PROFILE_RES)
    assert stats.used == 4
    assert [(r.cell, r.hour_of_week, r.samples) for r in rows] == [(cell, 4, 4)]
    assert rows[0].sum_speed == pytest.approx(4.0, rel=1e-3)


def test_a_segment_is_credited_to_every_cell_it_passes() -> None:
    # One 1.5 km segment in 60 s (25 m/s) crosses several res-9 cells (~350 m across).
    fixes = [fix("a", 0, 0), fix("a", 60, 1_500)]
    rows, _ = profile_rows(fixes, LISBON)
    start = h3.latlng_to_cell(fixes[0].lat, fixes[0].lon, PROFILE_RES)
    end = h3.latlng_to_cell(fixes[1].lat, fixes[1].lon, PROFILE_RES)
    cells = {r.cell for r in rows}
    assert {start, end} < cells
    assert len(cells) >= 4
    assert all(r.samples == 1 and r.sum_speed == pytest.approx(25.0, rel=1e-3) for r in rows)


def test_impossible_segments_are_excluded_and_counted() -> None:
    fixes = [
        fix("a", 0, -75),
        fix("a", 15, -45),
        fix("a", 30, 20_000),  # a GPS jump: 20 km in 15 s
        fix("a", 45, -15),  # and back: also impossible
        fix("a", 60, 15),
        fix("a", 60, 15),  # the same fix time again
        fix("a", 600, 45),  # after a 9-minute gap
        fix("a", 615, 75),
    ]
    rows, stats = profile_rows(fixes, LISBON)
    assert (stats.used, stats.too_fast, stats.too_short, stats.too_long) == (3, 2, 1, 1)
    assert stats.excluded == 4
    cell = h3.latlng_to_cell(LAT, LON, PROFILE_RES)
    assert [(r.cell, r.samples) for r in rows] == [(cell, 3)]
    assert rows[0].sum_speed == pytest.approx(6.0, rel=1e-3)  # three segments at 2 m/s


def test_segments_never_join_two_devices() -> None:
    # Interleaved fix times of two devices 5 km apart: each alone is a slow drive.
    fixes = sorted(
        drive("a", 2.0, 4) + [fix("b", 7.5 + 15 * i, 5_000) for i in range(4)], key=lambda f: f.ts
    )
    _, stats = profile_rows(fixes, LISBON)
    assert (stats.used, stats.too_fast) == (6, 0)


def _siblings() -> dict[Level, int]:
    """A res-9 cell for each fallback level of `base`'s chain."""
    base = h3.latlng_to_cell(LAT, LON, PROFILE_RES)
    found: dict[Level, int] = {Level.CELL: base}
    for level, res in ((Level.RES8, 8), (Level.RES7, 7), (Level.RES6, 6)):
        finer = res + 1
        own = h3.cell_to_parent(base, finer) if finer < PROFILE_RES else base
        sibling = next(
            c for c in h3.cell_to_children(h3.cell_to_parent(base, res), finer) if c != own
        )
        found[level] = h3.cell_to_center_child(sibling, PROFILE_RES)
    found[Level.GLOBAL] = h3.latlng_to_cell(-33.9, 18.4, PROFILE_RES)  # Cape Town
    return found


def test_fallback_levels() -> None:
    cells = _siblings()
    base = cells[Level.CELL]
    profile = SpeedProfile([ProfileRow(base, 4, 50.0, 5)], shrink_samples=0.0)
    for hour, cell, level in (
        (4, base, Level.CELL_HOUR),
        (5, base, Level.CELL),
        (4, cells[Level.RES8], Level.RES8),
        (4, cells[Level.RES7], Level.RES7),
        (4, cells[Level.RES6], Level.RES6),
        (4, cells[Level.GLOBAL], Level.GLOBAL),
    ):
        found = profile.lookup(cell, hour)
        assert (found.level, found.samples) == (level, 5), (hour, level)
        assert found.speed_mps == pytest.approx(10.0)


def test_levels_below_min_samples_do_not_answer() -> None:
    base = _siblings()[Level.CELL]
    profile = SpeedProfile(
        [ProfileRow(base, 4, 20.0, 2), ProfileRow(base, 9, 30.0, 3)], shrink_samples=0.0
    )
    found = profile.lookup(base, 4)  # two samples at this hour are not enough
    assert (found.level, found.samples) == (Level.CELL, 5)
    assert found.speed_mps == pytest.approx(10.0)


def test_an_empty_profile_answers_with_the_default() -> None:
    found = SpeedProfile().lookup(_siblings()[Level.CELL], 0)
    assert (found.level, found.speed_mps, found.samples) == (Level.DEFAULT, DEFAULT_SPEED_MPS, 0)


def test_few_samples_are_shrunk_towards_the_parent_level() -> None:
    base = _siblings()[Level.CELL]
    rows = [ProfileRow(base, 4, 4 * 2.0, 4), ProfileRow(base, 5, 1000 * 12.0, 1000)]
    shrunk = SpeedProfile(rows).lookup(base, 4)
    exact = SpeedProfile(rows, shrink_samples=0.0).lookup(base, 4)
    assert shrunk.level == exact.level == Level.CELL_HOUR
    assert exact.speed_mps == pytest.approx(2.0)
    assert 2.0 < shrunk.speed_mps < 12.0
    assert shrunk.speed_mps > 10.0  # 4 samples against a prior worth 50
    many = [ProfileRow(base, 4, 5000 * 2.0, 5000), rows[1]]
    assert SpeedProfile(many).lookup(base, 4).speed_mps == pytest.approx(2.0, abs=0.1)


def test_an_hour_slower_on_the_same_cells_scales_every_cell_at_that_hour() -> None:
    cells = _siblings()
    busy, other = cells[Level.CELL], cells[Level.RES8]
    rows = [
        ProfileRow(busy, 4, 500 * 5.0, 500),  # rush hour: half the usual speed
        ProfileRow(busy, 5, 500 * 10.0, 500),
        ProfileRow(other, 5, 500 * 20.0, 500),  # never driven at hour 4
    ]
    profile = SpeedProfile(rows, shrink_samples=0.0, hour_factor_samples=0.0)
    # Hour 4 ran at 5 where the same cell's any-hour mean is 7.5; hour 5 at 15,000 for
    # 500 x 7.5 + 500 x 20 expected.
    assert profile.hour_factor(4) == pytest.approx(5.0 / 7.5)
    assert profile.hour_factor(5) == pytest.approx(15_000 / 13_750)
    assert profile.hour_factor(6) == 1.0  # no samples at all: no change
    found = profile.lookup(other, 4)
    assert found.level is Level.CELL
    assert found.speed_mps == pytest.approx(20.0 * 5.0 / 7.5)
    assert profile.lookup(other, 6).speed_mps == pytest.approx(20.0)
    # The cell's own hour still answers for itself.
    assert profile.lookup(busy, 4).speed_mps == pytest.approx(5.0)
    # With a prior, a factor moves towards 1.
    shrunk = SpeedProfile(rows, shrink_samples=0.0).hour_factor(4)
    assert 5.0 / 7.5 < shrunk < 1.0


def test_merge_adds_samples_like_one_build() -> None:
    a = drive("a", 5.0, 6)
    b = drive("b", 9.0, 6)
    merged = SpeedProfile.build(a, LISBON).merge(SpeedProfile.build(b, LISBON))
    together = SpeedProfile.build(a + b, LISBON)
    key = [(r.cell, r.hour_of_week, r.samples) for r in together.rows()]
    assert [(r.cell, r.hour_of_week, r.samples) for r in merged.rows()] == key
    for mine, theirs in zip(merged.rows(), together.rows(), strict=True):
        assert mine.sum_speed == pytest.approx(theirs.sum_speed)
    assert merged.stats == together.stats
    assert merged.stats.used == 10
    cell = h3.latlng_to_cell(LAT, LON, PROFILE_RES)
    assert merged.lookup(cell, 4).speed_mps == pytest.approx(together.lookup(cell, 4).speed_mps)


def test_serialised_form_round_trips() -> None:
    profile = SpeedProfile.build(drive("a", 5.0, 20) + drive("b", 3.0, 20), LISBON)
    again = SpeedProfile.from_bytes(profile.to_bytes())
    assert again.rows() == profile.rows()
    assert again.stats == profile.stats
    cell = h3.latlng_to_cell(LAT, LON, PROFILE_RES)
    assert again.lookup(cell, 4) == profile.lookup(cell, 4)


def test_rows_with_the_same_key_add_up() -> None:
    """Rows from several refreshes of a table (or a GROUP BY over partial sums) add up."""
    cell = _siblings()[Level.CELL]
    split = SpeedProfile([ProfileRow(cell, 4, 6.0, 2), ProfileRow(cell, 4, 9.0, 3)])
    whole = SpeedProfile([ProfileRow(cell, 4, 15.0, 5)])
    assert split.rows() == whole.rows() == [ProfileRow(cell, 4, 15.0, 5)]
    assert split.lookup(cell, 4) == whole.lookup(cell, 4)


def test_rows_at_another_resolution_are_refused() -> None:
    coarse = h3.latlng_to_cell(LAT, LON, 8)
    with pytest.raises(ValueError, match="resolution 9"):
        SpeedProfile([ProfileRow(coarse, 4, 10.0, 1)])


# Offsets of +5:30, +5:45 and Lord Howe's half-hour summer time.
ODD_ZONES = [ZoneInfo(z) for z in ("Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe")]


def test_a_quarter_hour_bucket_lies_in_one_local_hour_in_every_zone() -> None:
    start = datetime(2024, 4, 6, 0, 7, 31, tzinfo=UTC)  # Lord Howe leaves summer time
    for zone in [UTC, LISBON, *ODD_ZONES]:
        for minutes in range(0, 3 * 24 * 60, 7):
            ts = start + timedelta(minutes=minutes)
            bucket = bucket_start(ts)
            assert bucket <= ts < bucket + timedelta(minutes=15)
            assert hour_of_week(bucket, zone) == hour_of_week(ts, zone), (zone, ts)


def test_bucket_start_is_in_utc_and_needs_an_aware_time() -> None:
    lisbon_time = datetime(2013, 7, 1, 4, 44, 59, 999, tzinfo=LISBON)
    assert bucket_start(lisbon_time) == datetime(2013, 7, 1, 3, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        bucket_start(datetime(2013, 7, 1, 3, 0))


def test_sample_rows_grouped_by_local_hour_are_the_profile_rows() -> None:
    """What is stored, grouped as the loader groups it, is what a profile is built from."""
    fixes = drive("a", 6.0, 300, dt=10.0) + drive("b", 4.0, 200, dt=12.0, start_m=500.0)
    for zone in [UTC, LISBON, *ODD_ZONES]:
        samples, sample_stats = sample_rows(fixes)
        grouped: dict[tuple[int, int], list[float]] = {}
        for row in samples:
            acc = grouped.setdefault((row.cell, hour_of_week(row.bucket, zone)), [0.0, 0])
            acc[0] += row.sum_speed
            acc[1] += row.samples
        expected, stats = profile_rows(fixes, zone)
        assert sample_stats == stats
        assert sorted((c, h, n) for (c, h), (_, n) in grouped.items()) == [
            (r.cell, r.hour_of_week, r.samples) for r in expected
        ]
        for r in expected:
            assert grouped[r.cell, r.hour_of_week][0] == pytest.approx(r.sum_speed)
    assert len({r.bucket for r in samples}) == 4, "the drives span four quarter hours"
