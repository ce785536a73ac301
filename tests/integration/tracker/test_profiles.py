"""Speed profiles from stored telemetry: rebuilt from scratch and refreshed incrementally,
in whichever storage mode runs here (TimescaleDB-only checks skip elsewhere)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import h3.api.basic_int as h3
import psycopg
import pytest

from fleetpulse.database import Conn, connect
from fleetpulse.settings import Settings
from ingest.partitions import Partitions
from tests.conftest import eventually, running_tracker
from tests.e2e.processes import fleetpulse
from tracker import profile_store
from tracker.positions import Fix
from tracker.speed_profiles import PROFILE_RES, Level, ProfileRow, profile_rows

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
STEP_S = 10
SPEED_MPS = 10.0  # every hop 100 m north in 10 s
M_PER_DEG = 111_195.0
SINCE = START - timedelta(days=1)
NOW = timedelta(0)  # refresh everything that arrived, however recently
UTC_ZONE = ZoneInfo("UTC")
# +5:30: a quarter-hour bucket boundary at :30 UTC is a local hour boundary.
KOLKATA = ZoneInfo("Asia/Kolkata")

Row = tuple[str, datetime, float, float, datetime]


def trip(device: int, first: int, count: int, received_at: datetime | None = None) -> list[Row]:
    """Fixes `first`..`first + count - 1` of a van driving north, arriving now."""
    arrived = received_at or datetime.now(UTC)
    rows = []
    for k in range(first, first + count):
        lat = 41.10 + device * 0.01 + k * STEP_S * SPEED_MPS / M_PER_DEG
        rows.append((f"van-{device}", START + timedelta(seconds=k * STEP_S), lat, -8.61, arrived))
    return rows


def arriving_now(rows: Sequence[Row]) -> list[Row]:
    now = datetime.now(UTC)
    return [(d, ts, lat, lon, now) for d, ts, lat, lon, _ in rows]


def fixes(rows: Sequence[Row]) -> list[Fix]:
    return [Fix(d, ts, lat, lon, received) for d, ts, lat, lon, received in rows]


async def store(conn: Conn, rows: Sequence[Row]) -> None:
    cur = await conn.execute(
        "SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass"
    )
    if await cur.fetchone():  # plain mode: the partitions ingest would have made
        await Partitions(timedelta(days=1)).ensure(conn, [r[1] for r in rows])
    async with conn.cursor() as write:
        await write.executemany(
            "INSERT INTO telemetry (device_id, ts, lat, lon, received_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            rows,
        )


async def drive(database_url: str, devices: int, count: int) -> None:
    rows = [row for d in range(devices) for row in trip(d, 0, count, START)]
    rows.append(("van-0", START + timedelta(hours=1), 50.0, 5.0, START))  # a 1,000 km jump
    conn = await connect(database_url)
    try:
        await store(conn, rows)
    finally:
        await conn.close()


def same(loaded: Sequence[ProfileRow], expected: Sequence[ProfileRow]) -> bool:
    """Equal rows; the sums of speeds up to the order they were added in."""
    return len(loaded) == len(expected) and all(
        (a.cell, a.hour_of_week, a.samples) == (b.cell, b.hour_of_week, b.samples)
        and math.isclose(a.sum_speed, b.sum_speed, rel_tol=1e-9)
        for a, b in zip(loaded, expected, strict=True)
    )


async def stored_rows(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) FROM speed_samples")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_rebuild_learns_speeds_and_excludes_jumps(database_url: str) -> None:
    await drive(database_url, devices=3, count=40)
    conn = await connect(database_url)
    try:
        rebuilt = await profile_store.rebuild(conn, SINCE)
        assert rebuilt is not None
        assert (rebuilt.fixes, rebuilt.devices) == (121, 3)
        assert rebuilt.excluded_segments >= 1, "the jump is no speed"
        assert rebuilt.detour_rows and rebuilt.detour_rows > 0
        profile, _ = await profile_store.load(conn, UTC_ZONE, SINCE)
        assert await profile_store.built_at(conn) == rebuilt.built_at
    finally:
        await conn.close()
    cell = h3.latlng_to_cell(41.10 + 1000 / M_PER_DEG, -8.61, PROFILE_RES)
    found = profile.lookup(cell, START.weekday() * 24 + START.hour)
    assert found.level in (Level.CELL_HOUR, Level.CELL)
    assert abs(found.speed_mps - SPEED_MPS) < 0.5


async def test_refresh_adds_exactly_the_new_segments_and_nothing_twice(
    database_url: str,
) -> None:
    first = trip(0, 0, 30)
    conn = await connect(database_url)
    try:
        await store(conn, first)
        counted = await profile_store.refresh(conn, SINCE, settle=NOW)
        assert counted is not None
        assert (counted.fixes, counted.segments, counted.late_fixes) == (30, 29, 0)
        second = trip(0, 30, 12)  # arriving after the refresh
        await store(conn, second)
        counted = await profile_store.refresh(conn, SINCE, settle=NOW)
        assert counted is not None
        # 12 new fixes: 12 new segments, the first joining the last fix counted before.
        assert (counted.fixes, counted.devices, counted.segments) == (12, 1, 12)
        loaded = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
        assert same(loaded, profile_rows(fixes(first + second), UTC_ZONE)[0])

        samples, built = await stored_rows(conn), await profile_store.built_at(conn)
        again = await profile_store.refresh(conn, SINCE, settle=NOW)
        assert again is not None
        assert (again.fixes, again.segments, again.sample_rows) == (0, 0, 0)
        assert await stored_rows(conn) == samples
        assert await profile_store.built_at(conn) == built, "nothing new: no reload"
        assert await profile_store.profile_rows(conn, UTC_ZONE, SINCE) == loaded
    finally:
        await conn.close()


async def test_fixes_still_settling_wait_for_a_later_refresh(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await store(conn, trip(0, 0, 10))
        counted = await profile_store.refresh(conn, SINCE)  # the default settling time
        assert counted is not None and counted.fixes == 0
        counted = await profile_store.refresh(conn, SINCE, settle=NOW)
        assert counted is not None and (counted.fixes, counted.segments) == (10, 9)
    finally:
        await conn.close()


async def test_a_late_fix_is_skipped_and_counted(database_url: str) -> None:
    on_time = trip(0, 0, 20)
    late = trip(0, 10, 1)[0]
    conn = await connect(database_url)
    try:
        # The late fix's place in the trip was empty when the trip was counted.
        await store(conn, [r for r in on_time if r[1] != late[1]])
        assert await profile_store.refresh(conn, SINCE, settle=NOW)
        before = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
        await store(conn, arriving_now([late, *trip(0, 20, 3)]))
        counted = await profile_store.refresh(conn, SINCE, settle=NOW)
        assert counted is not None
        assert (counted.fixes, counted.late_fixes, counted.segments) == (4, 1, 3)
        after = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
    finally:
        await conn.close()
    assert sum(r.samples for r in after) > sum(r.samples for r in before)
    expected = [r for r in on_time if r[1] != late[1]] + trip(0, 20, 3)
    assert same(after, profile_rows(fixes(expected), UTC_ZONE)[0])


async def test_a_rebuild_equals_the_refreshes_of_the_same_telemetry(database_url: str) -> None:
    # Two vans from 20 to 50 minutes past the hour: across a local hour in Kolkata.
    rows = sorted((r for d in range(2) for r in trip(d, 120, 180)), key=lambda r: r[1])
    conn = await connect(database_url)
    try:
        for batch in range(0, len(rows), 45):  # arrivals interleaving the vans' fixes
            await store(conn, arriving_now(rows[batch : batch + 45]))
            assert await profile_store.refresh(conn, SINCE, settle=NOW)
        refreshed = await profile_store.profile_rows(conn, KOLKATA, SINCE)
        rebuilt = await profile_store.rebuild(conn, SINCE, settle=NOW)
        assert rebuilt is not None and (rebuilt.fixes, rebuilt.devices) == (360, 2)
        assert same(await profile_store.profile_rows(conn, KOLKATA, SINCE), refreshed)
        # A refresh right after the rebuild finds nothing new.
        counted = await profile_store.refresh(conn, SINCE, settle=NOW)
        assert counted is not None and counted.fixes == 0
    finally:
        await conn.close()
    expected, _ = profile_rows(fixes(rows), KOLKATA)
    assert same(refreshed, expected)
    assert len({r.hour_of_week for r in expected}) == 2


async def test_partial_sums_written_while_reading_add_up(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every few sums are written while the telemetry cursor is still open."""
    monkeypatch.setattr(profile_store, "FLUSH_KEYS", 3)
    rows = [r for d in range(3) for r in trip(d, 0, 25, START)]
    conn = await connect(database_url)
    try:
        await store(conn, rows)
        rebuilt = await profile_store.rebuild(conn, SINCE)
        assert rebuilt is not None and rebuilt.sample_rows > 3
        loaded = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
    finally:
        await conn.close()
    assert same(loaded, profile_rows(fixes(rows), UTC_ZONE)[0])


async def test_the_automatic_refresh_rebuilds_once_a_day(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await store(conn, trip(0, 0, 10, START))
        first = await profile_store.refresh_or_rebuild(conn, SINCE)
        assert first is not None and first.kind == "rebuild"
        await store(conn, trip(0, 10, 5, START))  # arrived long ago, committed just now
        second = await profile_store.refresh_or_rebuild(conn, SINCE)
        assert second is not None and second.kind == "refresh"
        assert second.fixes == 0, "behind the watermark: the daily rebuild will count it"
        later = datetime.now(UTC) + profile_store.REBUILD_INTERVAL
        third = await profile_store.refresh_or_rebuild(conn, SINCE, now=later)
        assert third is not None and (third.kind, third.fixes, third.segments) == (
            "rebuild",
            15,
            14,
        )
    finally:
        await conn.close()


async def test_two_processes_never_refresh_at_once(database_url: str) -> None:
    holder = await connect(database_url)
    conn = await connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(%s)", (profile_store._REBUILD_LOCK,))
        assert await profile_store.refresh(conn, SINCE, settle=NOW) is None
        assert await profile_store.rebuild(conn, SINCE, settle=NOW) is None
    finally:
        await holder.close()
        await conn.close()


async def test_the_tracker_loads_the_profile_and_its_refreshes(settings: Settings) -> None:
    conn = await connect(settings.database_url)
    try:
        await store(conn, trip(0, 0, 20))
        assert await profile_store.rebuild(conn, SINCE, settle=NOW)
        async with running_tracker(settings) as tracker:
            await eventually(lambda: tracker.etas.estimator.profile.samples > 0)
            before = tracker.etas.estimator.profile.samples
            await store(conn, trip(0, 20, 10))
            assert await profile_store.refresh(conn, SINCE, settle=NOW)
            await eventually(lambda: tracker.etas.estimator.profile.samples > before)
            profile = tracker.etas.estimator.profile
    finally:
        await conn.close()
    expected, _ = profile_rows(fixes(trip(0, 0, 30)), ZoneInfo(settings.timezone))
    assert same(profile.rows(), expected)


async def test_profiles_from_the_command_line(database_url: str) -> None:
    await drive(database_url, devices=1, count=20)
    env = {"FLEETPULSE_DATABASE_URL": database_url}
    rebuilt = json.loads(fleetpulse("profiles", "rebuild", env=env).stdout)
    assert rebuilt["kind"] == "rebuild"
    assert rebuilt["fixes"] == 21 and rebuilt["sample_rows"] > 0
    refreshed = json.loads(fleetpulse("profiles", "refresh", env=env).stdout)
    assert refreshed["kind"] == "refresh" and refreshed["fixes"] == 0
    status = fleetpulse("profiles", "status", env=env).stdout
    # 19 segments, each credited to every cell it passes: some count twice.
    assert "mean 10.0 m/s" in status and "built at: 20" in status
    assert "loaded from: " in status


async def test_speed_samples_feed_a_continuous_aggregate(
    database_url: str, timescaledb_mode: None
) -> None:
    rows = trip(0, 0, 40)
    conn = await connect(database_url)
    try:
        await store(conn, rows)
        assert await profile_store.refresh(conn, SINCE, settle=NOW)
        cur = await conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'speed_samples'"
        )
        assert await cur.fetchall() == [("speed_samples",)]
        cur = await conn.execute(
            "SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
            " WHERE view_name = 'speed_profile_buckets'"
        )
        assert await cur.fetchall() == [(False,)]
        cur = await conn.execute(
            "SELECT count(*) FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_refresh_continuous_aggregate'"
        )
        assert await cur.fetchone() == (1,)
        relation, _ = await profile_store.source(conn)
        assert relation == "speed_profile_buckets"
        # Written into buckets the refresh had materialized: counted once it ran again.
        await store(conn, trip(0, 40, 10))
        assert await profile_store.refresh(conn, SINCE, settle=NOW)
        loaded = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
        cur = await conn.execute("SELECT count(*) FROM speed_profile_buckets")
        aggregated = await cur.fetchone()
        cur = await conn.execute("SELECT count(DISTINCT (bucket, cell)) FROM speed_samples")
        distinct = await cur.fetchone()
    finally:
        await conn.close()
    assert same(loaded, profile_rows(fixes(trip(0, 0, 50)), UTC_ZONE)[0])
    assert aggregated == distinct, "one aggregate row per bucket and cell"


async def test_rebuild_refreshes_the_continuous_aggregate_outside_a_transaction(
    database_url: str, timescaledb_mode: None
) -> None:
    await drive(database_url, devices=2, count=30)
    conn = await connect(database_url)
    try:
        assert await profile_store.refresh(conn, SINCE, settle=NOW)
        before = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
        assert await profile_store.rebuild(conn, SINCE, settle=NOW)
        after = await profile_store.profile_rows(conn, UTC_ZONE, SINCE)
    finally:
        await conn.close()
    assert after and same(after, before)
    with psycopg.connect(database_url) as sync:
        row = sync.execute("SELECT count(*) FROM speed_samples").fetchone()
    assert row is not None and row[0] > 0
