"""ingest.partitions: aligned buckets, coverage and clipping of plain-PostgreSQL partitions.

The database-facing methods are exercised against a small fake connection that keeps the
partition catalog in memory and answers with PostgreSQL's text form of partition bounds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingest.partitions import (
    Partitions,
    Range,
    bucket,
    clip,
    covering,
    partition_name,
)

DAY = timedelta(days=1)
H = timedelta(hours=1)
D = datetime(2026, 11, 27, tzinfo=UTC)  # midnight


def at(hours: float, day: datetime = D) -> datetime:
    return day + timedelta(hours=hours)


# --- bucket -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (at(13.75), (D, D + DAY)),
        (D, (D, D + DAY)),  # a boundary starts its own bucket
        (D + DAY - timedelta(microseconds=1), (D, D + DAY)),
        (D + DAY, (D + DAY, D + 2 * DAY)),
        (
            datetime(1969, 12, 31, 23, tzinfo=UTC),
            (datetime(1969, 12, 31, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)),
        ),
        # Not UTC: 01:00+02:00 is 23:00 UTC the day before.
        (datetime(2026, 11, 27, 1, tzinfo=timezone(timedelta(hours=2))), (D - DAY, D)),
    ],
)
def test_bucket_one_day(ts: datetime, expected: Range) -> None:
    assert bucket(ts, DAY) == expected


@pytest.mark.parametrize(
    ("hours", "start"),
    [(0, 0), (5.99, 0), (6, 6), (13.75, 12), (17.999, 12), (18, 18), (23.9999, 18)],
)
def test_bucket_six_hours(hours: float, start: int) -> None:
    assert bucket(at(hours), 6 * H) == (at(start), at(start + 6))


def test_bucket_is_aligned_to_the_epoch() -> None:
    # 1970-01-01 was a Thursday, so 7-day buckets start on Thursdays.
    start, end = bucket(at(13), timedelta(days=7))
    assert (start, end) == (datetime(2026, 11, 26, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC))
    assert start.weekday() == 3


def test_bucket_result_is_utc() -> None:
    start, end = bucket(datetime(2026, 11, 27, 1, tzinfo=timezone(timedelta(hours=2))), DAY)
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC


# --- covering -----------------------------------------------------------------------------

RANGES: list[Range] = [(at(0), at(6)), (at(6), at(12)), (at(18), at(24))]


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (0, (at(0), at(6))),
        (5.5, (at(0), at(6))),
        (6, (at(6), at(12))),  # the end is exclusive
        (11.99, (at(6), at(12))),
        (12, None),  # in the gap
        (17.99, None),
        (18, (at(18), at(24))),
        (24, None),  # after all of them
        (-0.01, None),  # before all of them
    ],
)
def test_covering(hours: float, expected: Range | None) -> None:
    assert covering(RANGES, at(hours)) == expected


def test_covering_with_no_ranges() -> None:
    assert covering([], D) is None


# --- clip ---------------------------------------------------------------------------------


def test_clip_with_nothing_in_the_way() -> None:
    wanted = (D, D + DAY)
    assert clip(wanted, [], at(12)) == wanted
    # Neighbours that only touch it do not clip it.
    assert clip(wanted, [(D - DAY, D), (D + DAY, D + 2 * DAY)], D) == wanted


def test_clip_existing_range_overlapping_the_start() -> None:
    # An old 6 h partition reaching into the new 1 d bucket from the day before.
    assert clip((D, D + DAY), [(at(-3), at(3))], at(3)) == (at(3), D + DAY)


def test_clip_existing_range_overlapping_the_end() -> None:
    assert clip((D, D + DAY), [(at(21), at(27))], at(20)) == (D, at(21))


def test_clip_existing_ranges_on_both_sides() -> None:
    ranges = [(at(-6), at(6)), (at(18), at(30))]
    assert clip((D, D + DAY), ranges, at(12)) == (at(6), at(18))


def test_clip_existing_range_at_the_start_exactly() -> None:
    assert clip((D, D + DAY), [(D, at(6))], at(7)) == (at(6), D + DAY)


def test_clip_keeps_the_time_it_was_made_for() -> None:
    # The interval grew from 6 h to 1 d; 06-12 exists; a fix at 18:00 needs 12-24, not 00-06.
    assert clip((D, D + DAY), [(at(6), at(12))], at(18)) == (at(12), D + DAY)
    assert clip((D, D + DAY), [(at(6), at(12))], at(2)) == (D, at(6))


def test_clip_larger_interval_into_smaller_ones() -> None:
    # Interval shrank from 1 d to 6 h: a wide partition on either side.
    ranges = [(D - DAY, at(3)), (at(4), D + DAY)]
    assert clip(bucket(at(3.5), 6 * H), ranges, at(3.5)) == (at(3), at(4))


# --- names --------------------------------------------------------------------------------


def test_partition_name() -> None:
    assert partition_name(D) == "telemetry_p20261127_000000"
    assert partition_name(at(18.5)) == "telemetry_p20261127_183000"


# --- missing ------------------------------------------------------------------------------


def test_missing_with_no_partitions_gives_one_per_bucket() -> None:
    parts = Partitions(DAY)
    times = [at(1), at(2), at(25), at(-1), at(23), at(49)]
    assert parts.missing(times) == [at(1), at(25), at(-1), at(49)]


def test_missing_skips_covered_times() -> None:
    parts = Partitions(DAY)
    parts._ranges = [(D, D + DAY)]
    times = [at(10), at(25), at(26), at(-1), at(23.99)]
    assert parts.missing(times) == [at(25), at(-1)]


def test_missing_six_hour_buckets() -> None:
    parts = Partitions(6 * H)
    parts._ranges = [(at(6), at(12))]
    times = [at(7), at(1), at(5), at(13), at(17.9), at(18)]
    assert parts.missing(times) == [at(1), at(13), at(18)]


def test_missing_when_all_covered_or_empty() -> None:
    parts = Partitions(DAY)
    parts._ranges = [(D, D + DAY), (D + DAY, D + 2 * DAY)]
    assert parts.missing([at(0), at(47.99)]) == []
    assert parts.missing([]) == []


# --- against a fake catalog ---------------------------------------------------------------


class _Cursor:
    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self._rows = rows

    async def fetchall(self) -> list[tuple[str, str]]:
        return self._rows
