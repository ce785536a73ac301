"""ingest.partitions: aligned buckets, coverage and clipping of plain-PostgreSQL partitions.

The database-facing methods are exercised against a small fake connection that keeps the
partition catalog in memory and answers with PostgreSQL's text form of partition bounds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg import sql

from ingest.partitions import (
    PARTITIONS_AHEAD,
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
    assert clip(wanted, []) == wanted
    # Neighbours that only touch it do not clip it.
    assert clip(wanted, [(D - DAY, D), (D + DAY, D + 2 * DAY)]) == wanted


def test_clip_existing_range_overlapping_the_start() -> None:
    # An old 6 h partition reaching into the new 1 d bucket from the day before.
    assert clip((D, D + DAY), [(at(-3), at(3))]) == (at(3), D + DAY)


def test_clip_existing_range_overlapping_the_end() -> None:
    assert clip((D, D + DAY), [(at(21), at(27))]) == (D, at(21))


def test_clip_existing_ranges_on_both_sides() -> None:
    ranges = [(at(-6), at(6)), (at(18), at(30))]
    assert clip((D, D + DAY), ranges) == (at(6), at(18))


def test_clip_existing_range_at_the_start_exactly() -> None:
    assert clip((D, D + DAY), [(D, at(6))]) == (at(6), D + DAY)


def test_clip_larger_interval_into_smaller_ones() -> None:
    # Interval shrank from 1 d to 6 h: a wide partition on either side.
    ranges = [(D - DAY, at(3)), (at(4), D + DAY)]
    assert clip(bucket(at(3.5), 6 * H), ranges) == (at(3), at(4))


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


_CREATE = re.compile(
    r"CREATE TABLE \"([^\"]+)\" PARTITION OF telemetry FOR VALUES"
    r" FROM \('([^']+)'::timestamptz\) TO \('([^']+)'::timestamptz\)"
)
_DROP = re.compile(r"DROP TABLE \"([^\"]+)\"")


def _pg(ts: datetime) -> str:
    """A bound as pg_get_expr prints it in a UTC session: '2026-11-27 00:00:00+00'."""
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


class FakeConn:
    """Keeps telemetry partitions in memory; answers the catalog query like PostgreSQL."""

    def __init__(self, ranges: list[Range] = ()) -> None:  # type: ignore[assignment]
        self.tables: dict[str, Range] = {partition_name(a): (a, b) for a, b in ranges}
        self.created: list[str] = []
        self.dropped: list[str] = []
        self.transactions = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        yield

    async def execute(self, query: Any, params: Any = None) -> _Cursor:
        text = query.as_string(None) if isinstance(query, sql.Composable) else query
        if "pg_inherits" in text:
            rows = [(n, f"FOR VALUES FROM ('{_pg(a)}') TO ('{_pg(b)}')") for n, (a, b) in self.tables.items()]
            rows.append(("telemetry_default", "DEFAULT"))
            return _Cursor(rows)
        if match := _CREATE.fullmatch(text):
            name = match.group(1)
            start, end = (datetime.fromisoformat(match.group(k)) for k in (2, 3))
            assert name not in self.tables, f"{name} exists"
            for low, high in self.tables.values():
                assert end <= low or start >= high, f"{name} overlaps {low}..{high}"
            self.tables[name] = (start, end)
            self.created.append(name)
        elif match := _DROP.fullmatch(text):
            del self.tables[match.group(1)]
            self.dropped.append(match.group(1))
        return _Cursor([])

    def covers(self, ts: datetime) -> bool:
        return any(a <= ts < b for a, b in self.tables.values())


async def test_refresh_reads_bounds_and_skips_the_default_partition() -> None:
    conn = FakeConn([(at(6), at(12)), (D - DAY, D)])
    parts = Partitions(DAY)
    ranges = await parts.refresh(conn)  # type: ignore[arg-type]
    assert ranges == [(D - DAY, D), (at(6), at(12))]
    assert all(a.utcoffset() == timedelta(0) for a, _ in ranges)


async def test_ensure_creates_one_partition_per_missing_bucket() -> None:
    conn = FakeConn([(D, D + DAY)])
    parts = Partitions(DAY)
    await parts.refresh(conn)  # type: ignore[arg-type]
    made = await parts.ensure(conn, [at(1), at(30), at(40), at(-5)])  # type: ignore[arg-type]
    assert made == 2
    assert sorted(conn.created) == ["telemetry_p20261126_000000", "telemetry_p20261128_000000"]
    assert conn.tables["telemetry_p20261128_000000"] == (D + DAY, D + 2 * DAY)
    assert parts.missing([at(1), at(30), at(40), at(-5)]) == []
    # Nothing missing: no transaction, nothing made.
    before = conn.transactions
    assert await parts.ensure(conn, [at(2), at(31)]) == 0  # type: ignore[arg-type]
    assert conn.transactions == before


async def test_ensure_clips_to_partitions_of_an_older_interval() -> None:
    # Partitions were 6 h; the interval is now 1 d.
    conn = FakeConn([(at(-6), at(6))])
    parts = Partitions(DAY)
    await parts.refresh(conn)  # type: ignore[arg-type]
    assert await parts.ensure(conn, [at(9)]) == 1  # type: ignore[arg-type]
    assert conn.tables["telemetry_p20261127_060000"] == (at(6), D + DAY)


async def test_ensure_covers_a_time_after_an_older_partition_inside_the_bucket() -> None:
    # The interval grew from 6 h to 1 d; a 6 h partition sits inside today's 1 d bucket and a
    # fix arrives for the evening. Whatever ensure() makes must hold that fix.
    conn = FakeConn([(at(6), at(12))])
    parts = Partitions(DAY)
    await parts.refresh(conn)  # type: ignore[arg-type]
    await parts.ensure(conn, [at(18)])  # type: ignore[arg-type]
    assert conn.covers(at(18)), conn.tables
    assert parts.missing([at(18)]) == []


async def test_maintain_creates_ahead_and_drops_expired() -> None:
    now = at(10)
    old = [(D - k * DAY, D - (k - 1) * DAY) for k in range(1, 6)]  # the five days before
    conn = FakeConn(old)
    parts = Partitions(DAY)
    made, dropped = await parts.maintain(conn, now, timedelta(days=3))  # type: ignore[arg-type]
    # Yesterday exists; today and PARTITIONS_AHEAD days ahead are made.
    assert made == 1 + PARTITIONS_AHEAD
    for k in range(PARTITIONS_AHEAD + 1):
        assert conn.covers(now + k * DAY)
    # A partition goes once wholly older than now - retention (= 3 days ago, 10:00).
    assert sorted(conn.dropped) == ["telemetry_p20261122_000000", "telemetry_p20261123_000000"]
    assert conn.covers(D - 3 * DAY)
    assert [r for r in parts._ranges if r[1] <= now - timedelta(days=3)] == []


async def test_maintain_without_retention_drops_nothing() -> None:
    conn = FakeConn([(D - 400 * DAY, D - 399 * DAY)])
    parts = Partitions(DAY)
    made, dropped = await parts.maintain(conn, at(10), None)  # type: ignore[arg-type]
    assert dropped == 0
    assert conn.dropped == []
    assert made == PARTITIONS_AHEAD + 2
