"""Speed profiles and detour factors learned from the fleet's own telemetry, kept in
PostgreSQL; the trackers load them.

Speed profiles are stored as partial sums per UTC quarter hour and H3 cell
(`speed_samples`, see `tracker.speed_profiles.sample_rows`). The segment speeds are
computed here, in Python, not in SQL: a segment joins consecutive fixes of one device and
is judged an outlier by the speed it implies (window functions, which a continuous
aggregate cannot have), and its cells need H3, which SQL has only with h3-pg. What the
database aggregates is these partial sums:
- TimescaleDB mode: `speed_samples` is a hypertable under the continuous aggregate
  `speed_profile_buckets` (one row per bucket and cell, real-time, with a refresh policy);
  the loader reads the aggregate.
- plain mode: the loader groups `speed_samples` itself, the "periodically refreshed table"
  (a second table of grouped rows would double the writes for a read that happens once
  per refresh).
Either way the loader takes the hour of week in the fleet's time zone and only the last
profile window of buckets.

`refresh` is incremental: it counts the telemetry that arrived (received_at) since a
watermark, joined to each device's last fix counted before it so that the first new
segment connects, and appends partial sums; the watermark moves in the same transaction,
so a crash never counts a window twice. A fix older than its device's last counted fix
(it arrived late) is skipped and counted: counting it would need the segment it splits to
be taken back. `rebuild` recomputes everything from the profile window and resets the
watermark; the automatic refresh runs it every `REBUILD_INTERVAL` (and the first time),
which also picks up late fixes and any fix committed later than `SETTLE` after arrival.

Detour factors stay a table rebuilt from scratch by `rebuild`: a factor compares the
path driven with the straight line along a whole run of fixes, which partial sums of
windows cannot give.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from fleetpulse.database import Conn
from ingest.schema import (
    SPEED_PROFILE_AGGREGATE,
    TELEMETRY_COLUMNS,
    StorageMode,
    stored_mode,
)
from ingest.store import fix_from_row
from tracker.eta import DetourModel, DetourRow, detour_rows
from tracker.positions import Fix
from tracker.speed_profiles import (
    SAMPLE_BUCKET,
    ProfileRow,
    SegmentStats,
    SpeedProfile,
    bucket_start,
    sample_rows,
)

FETCH_ROWS = 20_000
# Partial sums held in memory before they are written (a rebuild of a big fleet's month
# would otherwise hold every bucket and cell at once).
FLUSH_KEYS = 200_000
# A fix commits some time after it arrives (ingest batches, several ingesters); a refresh
# counts only what arrived at least this long ago, so that no batch still committing
# falls behind the watermark. As the tracker's re-read margin.
SETTLE = timedelta(minutes=5)
# How often the automatic refresh recomputes from scratch instead of incrementally.
REBUILD_INTERVAL = timedelta(days=1)
_BUILT_KEY = "profiles_built_at"  # last change: the trackers reload when it moves
_REBUILT_KEY = "profiles_rebuilt_at"
_WATERMARK_KEY = "profiles_watermark"
# Only one process rebuilds or refreshes at a time (trackers and the CLI may race).
_REBUILD_LOCK = 7_305_013


@dataclass(frozen=True)
class Counted:
    """What a rebuild or a refresh counted."""

    kind: Literal["rebuild", "refresh"]
    fixes: int  # read, late ones included
    devices: int
    late_fixes: int  # older than their device's last counted fix: skipped
    segments: int  # used
    excluded_segments: int
    sample_rows: int  # written to speed_samples
    detour_rows: int | None  # None: a refresh leaves detour factors as they are
    watermark: datetime  # arrival time counted up to
    built_at: datetime | None  # when the profile last changed


class _Counter:
    """Segment speeds of device after device, partial sums written every FLUSH_KEYS."""

    def __init__(self, conn: Conn, *, detours: bool) -> None:
        self._conn = conn
        self._samples: dict[tuple[datetime, int], list[float]] = defaultdict(lambda: [0.0, 0])
        self.detours: dict[tuple[int, int], list[float]] | None = (
            defaultdict(lambda: [0.0, 0]) if detours else None
        )
        self.stats = SegmentStats()
        self.fixes = self.devices = self.late = self.rows_written = 0
        self.first_bucket: datetime | None = None
        self.last_bucket: datetime | None = None

    async def add(self, anchor: Fix | None, fresh: list[Fix]) -> None:
        """One device's newly arrived fixes, after its last counted one (`anchor`)."""
        kept = fresh if anchor is None else [f for f in fresh if f.ts > anchor.ts]
        self.fixes += len(fresh)
        self.devices += 1
        self.late += len(fresh) - len(kept)
        fixes = kept if anchor is None else [anchor, *kept]
        rows, stats = sample_rows(fixes)
        self.stats = self.stats.add(stats)
        for row in rows:
            acc = self._samples[row.bucket, row.cell]
            acc[0] += row.sum_speed
            acc[1] += row.samples
        if self.detours is not None:
            for detour in detour_rows(fixes):
                acc = self.detours[detour.area, detour.band]
                acc[0] += detour.sum_log_ratio
                acc[1] += detour.samples
        if len(self._samples) >= FLUSH_KEYS:
            await self.flush()

    async def flush(self) -> None:
        if not self._samples:
            return
        buckets = [bucket for bucket, _ in self._samples]
        first, last = min(buckets), max(buckets)
        self.first_bucket = min(first, self.first_bucket or first)
        self.last_bucket = max(last, self.last_bucket or last)
        async with (
            self._conn.cursor() as write,
            write.copy("COPY speed_samples (bucket, cell, sum_speed, samples) FROM STDIN") as copy,
        ):
            for (bucket, cell), (total, n) in self._samples.items():
                await copy.write_row((bucket, cell, total, int(n)))
        self.rows_written += len(self._samples)
        self._samples.clear()


def _window_query(after_watermark: bool) -> str:
    """Fixes arrived in (after, upper] with fix time from `since`, device by device in
    fix-time order, each device's last fix counted before (anchor = true) first."""
    columns = ", ".join(TELEMETRY_COLUMNS)
    arrived = "received_at > %(after)s AND " if after_watermark else ""
    fresh = (
        f"SELECT {columns} FROM telemetry"
        f" WHERE {arrived}received_at <= %(upper)s AND ts >= %(since)s"
    )
    if not after_watermark:
        return f"SELECT {columns}, false AS anchor FROM ({fresh}) f ORDER BY device_id, ts"
    anchors = (
        f"SELECT a.* FROM (SELECT DISTINCT device_id FROM fresh) d CROSS JOIN LATERAL ("
        f" SELECT {columns} FROM telemetry t WHERE t.device_id = d.device_id"
        "  AND t.received_at <= %(after)s AND t.ts >= %(since)s ORDER BY t.ts DESC LIMIT 1) a"
    )
    return (
        f"WITH fresh AS ({fresh}), anchors AS ({anchors})"
        f" SELECT {columns}, true AS anchor FROM anchors"
        f" UNION ALL SELECT {columns}, false FROM fresh"
        " ORDER BY device_id, anchor DESC, ts"
    )


async def _count_window(
    conn: Conn, counter: _Counter, since: datetime, after: datetime | None, upper: datetime
) -> None:
    device: str | None = None
    anchor: Fix | None = None
    fresh: list[Fix] = []
    async with conn.cursor(name="fleetpulse_profiles") as read:
        read.itersize = FETCH_ROWS
        await read.execute(
            _window_query(after is not None), {"after": after, "upper": upper, "since": since}
        )
        async for row in read:
            fix = fix_from_row(row[:-1])
            if fix.device_id != device:
                if device is not None:
                    await counter.add(anchor, fresh)
                device, anchor, fresh = fix.device_id, None, []
            if row[-1]:
                anchor = fix
            else:
                fresh.append(fix)
    if device is not None:
        await counter.add(anchor, fresh)
    await counter.flush()


async def _try_lock(conn: Conn) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_REBUILD_LOCK,))
    locked = await cur.fetchone()
    return bool(locked and locked[0])


async def _unlock(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", (_REBUILD_LOCK,))


async def _meta_time(conn: Conn, key: str) -> datetime | None:
    cur = await conn.execute("SELECT value FROM fleetpulse_meta WHERE key = %s", (key,))
    row = await cur.fetchone()
    return None if row is None else datetime.fromisoformat(str(row[0]))


async def _set_meta_time(conn: Conn, key: str, value: datetime | None = None) -> datetime:
    """Store `value` (the database's clock when None) under `key`."""
    cur = await conn.execute(
        "INSERT INTO fleetpulse_meta (key, value)"
        " VALUES (%s, coalesce(%s::timestamptz, clock_timestamp())::text)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING value",
        (key, value),
    )
    row = await cur.fetchone()
    assert row is not None
    return datetime.fromisoformat(str(row[0]))


async def _upper(conn: Conn, settle: timedelta) -> datetime:
    """Arrival time up to which fixes are taken to be committed (the database's clock)."""
    cur = await conn.execute("SELECT clock_timestamp() - %s::interval", (settle,))
    row = await cur.fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


async def _refresh_aggregate(conn: Conn, start: datetime | None, end: datetime) -> None:
    """Materialize the continuous aggregate's buckets in [start, end) (from the first
    when start is None). A procedure that cannot run in a transaction block: `conn` is
    in autocommit mode and outside any transaction here."""
    await conn.execute(
        f"CALL refresh_continuous_aggregate('{SPEED_PROFILE_AGGREGATE}',"
        " %s::timestamptz, %s::timestamptz)",
        (start, end),
    )


async def _trim(conn: Conn, mode: StorageMode, since: datetime) -> None:
    """Forget partial sums older than the profile window."""
    if mode is StorageMode.TIMESCALEDB:
        # Whole chunks only; the aggregate keeps its own chunks until dropped likewise.
        await conn.execute("SELECT drop_chunks('speed_samples', older_than => %s)", (since,))
        await conn.execute(
            f"SELECT drop_chunks('{SPEED_PROFILE_AGGREGATE}', older_than => %s)", (since,)
        )
    else:
        await conn.execute("DELETE FROM speed_samples WHERE bucket < %s", (since,))


def _result(
    kind: Literal["rebuild", "refresh"],
    counter: _Counter,
    watermark: datetime,
    built: datetime | None,
) -> Counted:
    return Counted(
        kind=kind,
        fixes=counter.fixes,
        devices=counter.devices,
        late_fixes=counter.late,
        segments=counter.stats.used,
        excluded_segments=counter.stats.excluded,
        sample_rows=counter.rows_written,
        detour_rows=None if counter.detours is None else len(counter.detours),
        watermark=watermark,
        built_at=built,
    )


async def rebuild(conn: Conn, since: datetime, *, settle: timedelta = SETTLE) -> Counted | None:
    """Recompute speed samples and detour factors from every fix since `since` that
    arrived up to `settle` ago, one device at a time; the watermark restarts there.
    None when another process is rebuilding or refreshing right now."""
    if not await _try_lock(conn):
        return None
    try:
        mode = await stored_mode(conn)
        upper = await _upper(conn, settle)
        counter = _Counter(conn, detours=True)
        async with conn.transaction():
            await conn.execute("TRUNCATE speed_samples, detour_factors")
            await _count_window(conn, counter, since, None, upper)
            assert counter.detours is not None
            async with (
                conn.cursor() as write,
                write.copy(
                    "COPY detour_factors (area, band, sum_log_ratio, samples) FROM STDIN"
                ) as copy,
            ):
                for (area, band), (total, n) in counter.detours.items():
                    await copy.write_row((area, band, total, int(n)))
            await _set_meta_time(conn, _WATERMARK_KEY, upper)
            await _set_meta_time(conn, _REBUILT_KEY)
            built = await _set_meta_time(conn, _BUILT_KEY)
        if mode is StorageMode.TIMESCALEDB:
            # TRUNCATE invalidated the aggregate's whole range: recompute all of it.
            end = max(counter.last_bucket or upper, upper)
            await _refresh_aggregate(conn, None, bucket_start(end) + SAMPLE_BUCKET)
        return _result("rebuild", counter, upper, built)
    finally:
        await _unlock(conn)


async def refresh(conn: Conn, since: datetime, *, settle: timedelta = SETTLE) -> Counted | None:
    """Append the segment speeds of the fixes that arrived since the watermark (all
    since `since` when there is none yet) and up to `settle` ago; drop partial sums older
    than `since`. None when another process is rebuilding or refreshing right now."""
    if not await _try_lock(conn):
        return None
    try:
        mode = await stored_mode(conn)
        after = await _meta_time(conn, _WATERMARK_KEY)
        upper = await _upper(conn, settle)
        counter = _Counter(conn, detours=False)
        if after is not None and upper <= after:
            return _result("refresh", counter, after, await built_at(conn))
        async with conn.transaction():
            await _count_window(conn, counter, since, after, upper)
            await _set_meta_time(conn, _WATERMARK_KEY, upper)
            if counter.rows_written:
                await _set_meta_time(conn, _BUILT_KEY)
        if (
            mode is StorageMode.TIMESCALEDB
            and counter.first_bucket is not None
            and counter.last_bucket is not None
        ):
            await _refresh_aggregate(
                conn, counter.first_bucket, counter.last_bucket + SAMPLE_BUCKET
            )
        await _trim(conn, mode or StorageMode.PLAIN, bucket_start(since))
        return _result("refresh", counter, upper, await built_at(conn))
    finally:
        await _unlock(conn)


async def refresh_or_rebuild(
    conn: Conn, since: datetime, now: datetime | None = None
) -> Counted | None:
    """What the automatic refresh does: a rebuild when none ran in the last
    `REBUILD_INTERVAL` (or ever), else an incremental refresh."""
    rebuilt = await _meta_time(conn, _REBUILT_KEY)
    if rebuilt is None or (now or datetime.now(UTC)) - rebuilt >= REBUILD_INTERVAL:
        return await rebuild(conn, since)
    return await refresh(conn, since)


async def built_at(conn: Conn) -> datetime | None:
    """When the stored profile last changed (a rebuild, or a refresh that added rows)."""
    return await _meta_time(conn, _BUILT_KEY)


async def watermark(conn: Conn) -> datetime | None:
    """Arrival time up to which telemetry has been counted."""
    return await _meta_time(conn, _WATERMARK_KEY)


async def source(conn: Conn) -> tuple[str, str]:
    """The relation the profile is loaded from, and how to say it."""
    if await stored_mode(conn) is StorageMode.TIMESCALEDB:
        return SPEED_PROFILE_AGGREGATE, "TimescaleDB continuous aggregate"
    return "speed_samples", "table speed_samples, grouped when loaded"


async def profile_rows(conn: Conn, zone: ZoneInfo, since: datetime) -> list[ProfileRow]:
    """Profile rows (cell, hour of week in `zone`) of the buckets from `since` on."""
    relation, _ = await source(conn)
    cur = await conn.execute(
        "SELECT cell, ((extract(isodow FROM local) - 1) * 24 + extract(hour FROM local))::int,"
        " sum(sum_speed), sum(samples)::bigint"
        " FROM (SELECT cell, bucket AT TIME ZONE %s AS local, sum_speed, samples"
        f" FROM {relation} WHERE bucket >= %s) s"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        (zone.key, bucket_start(since)),
    )
    return [ProfileRow(int(c), int(h), float(s), int(n)) for c, h, s, n in await cur.fetchall()]


async def load(conn: Conn, zone: ZoneInfo, since: datetime) -> tuple[SpeedProfile, DetourModel]:
    """The speed profile of the buckets from `since` on, and the detour factors."""
    profile = SpeedProfile(await profile_rows(conn, zone, since))
    cur = await conn.execute("SELECT area, band, sum_log_ratio, samples FROM detour_factors")
    detours = DetourModel([DetourRow(*row) for row in await cur.fetchall()])
    return profile, detours
