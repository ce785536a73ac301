"""Speed profiles and detour factors learned from the fleet's own telemetry, kept in
PostgreSQL. Rebuilt from scratch by `fleetpulse profiles rebuild` and every refresh
interval; the trackers load the result.

Why not a TimescaleDB continuous aggregate: the rows are keyed by H3 cell and derived
from consecutive fixes of a device (most devices report no speed), neither of which a
continuous aggregate can compute without the h3-pg extension; so both storage modes use
this periodically refreshed table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, tzinfo

from fleetpulse.database import Conn
from ingest.schema import TELEMETRY_COLUMNS
from ingest.store import fix_from_row
from tracker.eta import DetourModel, DetourRow, detour_rows
from tracker.positions import Fix
from tracker.speed_profiles import ProfileRow, SegmentStats, SpeedProfile, profile_rows

REBUILD_FETCH_ROWS = 20_000
_BUILT_KEY = "profiles_built_at"
# Only one process rebuilds at a time (trackers and the CLI may race).
_REBUILD_LOCK = 7_305_013


@dataclass(frozen=True)
class Rebuilt:
    fixes: int
    devices: int
    profile_rows: int
    detour_rows: int
    excluded_segments: int
    built_at: datetime


class _Sums:
    def __init__(self) -> None:
        self.profile: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0])
        self.detour: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0])
        self.stats = SegmentStats()

    def add(self, fixes: list[Fix], zone: tzinfo) -> None:
        rows, stats = profile_rows(fixes, zone)
        self.stats = self.stats.add(stats)
        for row in rows:
            acc = self.profile[row.cell, row.hour_of_week]
            acc[0] += row.sum_speed
            acc[1] += row.samples
        for detour in detour_rows(fixes):
            acc = self.detour[detour.area, detour.band]
            acc[0] += detour.sum_log_ratio
            acc[1] += detour.samples


async def rebuild(conn: Conn, since: datetime, zone: tzinfo) -> Rebuilt | None:
    """Recompute from every fix since `since`, one device at a time (memory holds one
    device's fixes); None when another process is rebuilding right now."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_REBUILD_LOCK,))
    locked = await cur.fetchone()
    if not locked or not locked[0]:
        return None
    try:
        sums, fixes, devices = _Sums(), 0, 0
        current: list[Fix] = []
        query = (
            f"SELECT {', '.join(TELEMETRY_COLUMNS)} FROM telemetry WHERE ts >= %s"
            " ORDER BY device_id, ts"
        )
        async with conn.transaction(), conn.cursor(name="fleetpulse_profiles") as read:
            read.itersize = REBUILD_FETCH_ROWS
            await read.execute(query, (since,))
            async for row in read:
                fix = fix_from_row(row)
                if current and fix.device_id != current[0].device_id:
                    sums.add(current, zone)
                    devices += 1
                    current = []
                current.append(fix)
                fixes += 1
        if current:
            sums.add(current, zone)
            devices += 1
        async with conn.transaction():
            await conn.execute("TRUNCATE speed_profiles, detour_factors")
            async with conn.cursor() as write:
                async with write.copy(
                    "COPY speed_profiles (cell, hour_of_week, sum_speed, samples) FROM STDIN"
                ) as copy:
                    for (cell, hour), (total, n) in sums.profile.items():
                        await copy.write_row((cell, hour, total, int(n)))
                async with write.copy(
                    "COPY detour_factors (area, band, sum_log_ratio, samples) FROM STDIN"
                ) as copy:
                    for (area, band), (total, n) in sums.detour.items():
                        await copy.write_row((area, band, total, int(n)))
            cur = await conn.execute(
                "INSERT INTO fleetpulse_meta (key, value) VALUES (%s, clock_timestamp()::text)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING value",
                (_BUILT_KEY,),
            )
            built = await cur.fetchone()
        return Rebuilt(
            fixes=fixes,
            devices=devices,
            profile_rows=len(sums.profile),
            detour_rows=len(sums.detour),
            excluded_segments=sums.stats.excluded,
            built_at=datetime.fromisoformat(str(built[0])) if built else datetime.min,
        )
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_REBUILD_LOCK,))


async def built_at(conn: Conn) -> datetime | None:
    cur = await conn.execute("SELECT value FROM fleetpulse_meta WHERE key = %s", (_BUILT_KEY,))
    row = await cur.fetchone()
    return None if row is None else datetime.fromisoformat(str(row[0]))


async def load(conn: Conn) -> tuple[SpeedProfile, DetourModel]:
    cur = await conn.execute("SELECT cell, hour_of_week, sum_speed, samples FROM speed_profiles")
    profile = SpeedProfile([ProfileRow(*row) for row in await cur.fetchall()])
    cur = await conn.execute("SELECT area, band, sum_log_ratio, samples FROM detour_factors")
    detours = DetourModel([DetourRow(*row) for row in await cur.fetchall()])
    return profile, detours
