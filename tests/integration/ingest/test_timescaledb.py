"""TimescaleDB mode: run where the extension exists; skipped with the reason elsewhere.

This machine's PostgreSQL has no TimescaleDB, so these never ran here (see the README).
"""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from ingest.schema import apply_timescaledb_policies
from tests.conftest import eventually, running_ingester
from tests.publisher import publish


async def test_telemetry_is_a_compressed_hypertable_segmented_by_device(
    database_url: str, timescaledb_mode: None
) -> None:
    with psycopg.connect(database_url) as conn:
        hypertables = conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
        ).fetchall()
        segment = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings"
            " WHERE hypertable_name = 'telemetry' AND segmentby_column_index IS NOT NULL"
        ).fetchall()
    assert ("telemetry",) in hypertables
    assert segment == [("device_id",)]


async def test_policies_follow_the_settings(database_url: str, timescaledb_mode: None) -> None:
    conn = await connect(database_url)
    try:
        await apply_timescaledb_policies(conn, timedelta(hours=6), timedelta(days=30), None)
        await apply_timescaledb_policies(
            conn, timedelta(hours=6), timedelta(days=30), timedelta(days=2)
        )
        cur = await conn.execute(
            "SELECT proc_name, config FROM timescaledb_information.jobs"
            " WHERE hypertable_name = 'telemetry' ORDER BY proc_name"
        )
        jobs = {name: config for name, config in await cur.fetchall()}
    finally:
        await conn.close()
    assert set(jobs) == {"policy_compression", "policy_retention"}
    assert jobs["policy_retention"]["drop_after"] in ("30 days", "720:00:00")


async def test_fixes_and_duplicates_on_a_hypertable(
    settings: Settings, timescaledb_mode: None
) -> None:
    t0 = int(time.time() * 1000)
    messages = [
        (f"fleet/d{i % 3}/telemetry", {"ts": t0 - i, "lat": 1.0, "lon": 2.0}) for i in range(50)
    ]
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, messages + messages)
        await eventually(lambda: ingester.stats.counts["acked"] >= 100)
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    assert row == (50,)
