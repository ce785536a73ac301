"""Speed profiles rebuilt from stored telemetry (in whichever storage mode runs here)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import h3

from fleetpulse.database import connect
from ingest.partitions import Partitions
from tests.e2e.processes import fleetpulse
from tracker import profile_store
from tracker.speed_profiles import PROFILE_RES, Level

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
STEP_S = 10
SPEED_MPS = 10.0  # every hop 100 m north in 10 s


async def drive(database_url: str, devices: int, fixes: int) -> None:
    rows = []
    for d in range(devices):
        for k in range(fixes):
            lat = 41.10 + d * 0.01 + k * 100 / 111_195
            ts = START + timedelta(seconds=k * STEP_S)
            rows.append((f"van-{d}", ts, lat, -8.61, ts))
    rows.append(("van-0", START + timedelta(hours=1), 50.0, 5.0, START))  # a 1,000 km jump
    conn = await connect(database_url)
    try:
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
    finally:
        await conn.close()


async def test_rebuild_learns_speeds_and_excludes_jumps(database_url: str) -> None:
    await drive(database_url, devices=3, fixes=40)
    conn = await connect(database_url)
    try:
        rebuilt = await profile_store.rebuild(conn, START - timedelta(days=1), ZoneInfo("UTC"))
        assert rebuilt is not None
        assert (rebuilt.fixes, rebuilt.devices) == (121, 3)
        assert rebuilt.excluded_segments >= 1, "the jump is no speed"
        profile, _ = await profile_store.load(conn)
        assert await profile_store.built_at(conn) == rebuilt.built_at
    finally:
        await conn.close()
    cell = h3.latlng_to_cell(41.10 + 1000 / 111_195, -8.61, PROFILE_RES)
    found = profile.lookup(
        h3.str_to_int(cell) if isinstance(cell, str) else cell, START.weekday() * 24 + START.hour
    )
    assert found.level in (Level.CELL_HOUR, Level.CELL)
    assert abs(found.speed_mps - SPEED_MPS) < 0.5


async def test_profiles_from_the_command_line(database_url: str) -> None:
    await drive(database_url, devices=1, fixes=20)
    env = {"FLEETPULSE_DATABASE_URL": database_url}
    rebuilt = json.loads(fleetpulse("profiles", "rebuild", env=env).stdout)
    assert rebuilt["fixes"] == 21 and rebuilt["profile_rows"] > 0
    status = fleetpulse("profiles", "status", env=env).stdout
    # 19 segments, each credited to every cell it passes: some count twice.
    assert "mean 10.0 m/s" in status and "built at: 20" in status
