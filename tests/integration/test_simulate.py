"""`fleetpulse simulate` and `fleetpulse replay` against the private Mosquitto and a
running ingester: what they publish is stored, exactly once per fix."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.geofence import porto
from fleetpulse.settings import Settings
from fleetpulse.simulation import recordings, replay, runner
from fleetpulse.simulation.faults import FaultConfig
from fleetpulse.simulation.fleet import FleetConfig
from fleetpulse.simulation.publisher import Publisher
from fleetpulse.simulation.recordings import RecordedFix
from mqtt.topics import TopicScheme
from tests.conftest import eventually, running_ingester
from tracker import delivery_store

ROOT = Path(__file__).resolve().parents[2]
TRIPS = porto.data_dir() / "porto/trips_dev.csv"


async def scalar(url: str, query: str, *params: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return None if row is None else row[0]


async def stored(url: str) -> int:
    return int(await scalar(url, "SELECT count(*) FROM telemetry"))


def stored_count_is(url: str, expected: int) -> Callable[[], Awaitable[bool]]:
    """For `eventually`: the device statuses are acknowledged too, so the ingester's
    acknowledgements alone do not say that every fix is in."""

    async def check() -> bool:
        return await stored(url) == expected

    return check


async def quarantined(url: str) -> int:
    return int(await scalar(url, "SELECT count(*) FROM quarantine"))


async def fleetpulse(settings: Settings, *args: str) -> tuple[str, str]:
    """The command as an operator runs it, in its own process (this loop keeps serving
    the ingester meanwhile)."""
    env = {
        **os.environ,
        "FLEETPULSE_DATABASE_URL": settings.database_url,
        "FLEETPULSE_MQTT_URL": settings.mqtt_url,
        "FLEETPULSE_REDIS_URL": settings.redis_url,
        "FLEETPULSE_WEB_PORT": str(settings.web_port),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetpulse", *args,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def test_simulated_fleet_with_faults_stores_every_fix(settings: Settings) -> None:
    faults = FaultConfig(
        jitter=0.3, late=0.15, late_s=0.5, out_of_order=0.15, duplicate=0.2, offline=0.05,
        offline_s=0.75, malformed=0.15,
    )  # fmt: skip
    fleet = FleetConfig(
        vans=3, drones=2, interval_s=0.25, duration_s=2.0, radius_m=1_000.0, stops_per_van=2,
        seed=3, faults=faults,
    )  # fmt: skip
    options = runner.SimulateOptions(fleet=fleet, create_deliveries=True)
    async with running_ingester(settings):
        report = await runner.simulate(settings, options)
        assert report.generated == 5 * 8  # five devices, a fix every 0.25 s for 2 s
        assert report.progress.unsent == 0 and report.progress.errors == 0
        for fault in ("late", "out_of_order", "duplicate", "offline", "malformed"):
            assert report.faults.get(fault, 0) > 0, fault

        async def settled() -> bool:
            url = settings.database_url
            return (await stored(url), await quarantined(url)) == (
                report.generated,
                report.malformed,
            )

        await eventually(settled)
    assert await stored(settings.database_url) == report.generated
    assert await quarantined(settings.database_url) == report.malformed
    assert await scalar(settings.database_url, "SELECT count(*) FROM devices") == 5
    duplicates = await scalar(
        settings.database_url, "SELECT value FROM ingest_counters WHERE name = 'duplicates'"
    )
    assert duplicates >= report.faults["duplicate"]
    # The vans' deliveries exist, and each printed token opens its own.
    assert len(report.created) == 3 * 2
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    try:
        for created in report.created:
            found = await delivery_store.by_token(conn, created.tracking_token, datetime.now(UTC))
            assert found is not None and found.id == created.id
            assert found.vehicle_id == created.vehicle_id
    finally:
        await conn.close()


@pytest.mark.skipif(not TRIPS.is_file(), reason=f"{TRIPS} not found (set {porto.DATA_DIR_ENV})")
async def test_replay_of_porto_trips_stores_them(settings: Settings, tmp_path: Path) -> None:
    few = tmp_path / "few_trips.csv"
    with TRIPS.open(newline="") as source, few.open("w", newline="") as target:
        rows = csv.reader(source)
        writer = csv.writer(target)
        for row in [next(rows) for _ in range(6)]:  # the header and five trips
            writer.writerow(row)
    records = list(recordings.read_porto(few, "taxi-").records())
    keys = {(r.device_id, r.ts_ms) for r in records if isinstance(r, RecordedFix)}
    scheme = TopicScheme(settings.topic_prefix)
    async with running_ingester(settings):
        async with Publisher(settings.mqtt_url, scheme) as publisher:
            done = await replay.play([records], publisher, speed=10_000, shift_to_now=True)
            progress = await publisher.close()
        assert done.records == len(records) and progress.fixes == len(records)
        await eventually(stored_count_is(settings.database_url, len(keys)))
    assert await stored(settings.database_url) == len(keys)
    [shifted_to] = done.timelines
    newest = await scalar(settings.database_url, "SELECT max(ts) FROM telemetry")
    assert newest == datetime.fromtimestamp(
        shifted_to.fix_time_ms(max(k[1] for k in keys)) / 1000, UTC
    )
    assert datetime.now(UTC) - newest < timedelta(minutes=5)  # shifted to now


GPX = """<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">
<trk><name>courier</name><trkseg>{points}</trkseg></trk></gpx>
"""


async def test_replay_command_plays_a_gpx_track(settings: Settings, tmp_path: Path) -> None:
    start = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    points = "".join(
        f'<trkpt lat="{41.15 + k * 1e-4}" lon="-8.61"><ele>80</ele>'
        f"<time>{(start + timedelta(seconds=2 * k)).isoformat()}</time></trkpt>"
        for k in range(30)
    )
    track = tmp_path / "courier.gpx"
    track.write_text(GPX.format(points=points))
    async with running_ingester(settings):
        _, err = await fleetpulse(
            settings, "replay", str(track), "--speed", "100", "--shift-to-now",
            "--device-prefix", "gpx-",
        )  # fmt: skip
        assert "courier.gpx: GPX, 1 tracks, 30 track points" in err
        assert "30 fixes acknowledged by the broker, 0 errors" in err
        await eventually(stored_count_is(settings.database_url, 30))
    assert await stored(settings.database_url) == 30
    devices = await scalar(settings.database_url, "SELECT string_agg(device_id, ',') FROM devices")
    assert devices == "gpx-courier"


async def test_simulate_command_prints_tracking_links(settings: Settings) -> None:
    async with running_ingester(settings):
        out, err = await fleetpulse(
            settings, "simulate", "--vans", "2", "--drones", "1", "--interval", "0.25",
            "--duration", "1", "--stops", "2", "--create-deliveries", "--grid", "--seed", "3",
        )  # fmt: skip
        await eventually(stored_count_is(settings.database_url, 3 * 4))
    links = [json.loads(line) for line in out.splitlines()]
    assert [(d["vehicle_id"], d["sequence"]) for d in links] == [
        ("sim-van-001", 1), ("sim-van-001", 2), ("sim-van-002", 1), ("sim-van-002", 2)
    ]  # fmt: skip
    assert all(
        d["tracking_url"] == f"{settings.web_base_url}/track/{d['tracking_token']}" for d in links
    )
    assert "simulated 3 devices on a synthetic street grid" in err
    assert "12 fixes generated" in err
    assert await stored(settings.database_url) == 3 * 4
