"""`fleetpulse mavlink-bridge` end to end: the SITL flight log (from the shared data; skipped
without it) read from the file or sent over UDP → the bridge → a private Mosquitto → a
running ingester → PostgreSQL holds every fix the bridge says it published."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import psycopg
import pytest
from pymavlink.dialects.v20 import all as dialect  # type: ignore[import-untyped]

from bench.geofence import porto
from fleetpulse.mavlink_bridge import Bridge, BridgeOptions
from fleetpulse.settings import Settings
from fleetpulse.simulation.mavlink import MavlinkFix, Translator, tlog_messages
from tests.conftest import eventually, running_ingester

TLOG = porto.data_dir() / "drones" / "mavlink_sitl" / "vtol.tlog"
pytestmark = pytest.mark.skipif(
    not TLOG.is_file(),
    reason=f"{TLOG} not found (set FLEETPULSE_DATA_DIR to the shared data folder)",
)
UDP_FRAMES = 3000  # the first ~25 s of the flight


def flight_settings(settings: Settings) -> Settings:
    """The log was flown in 2018: the ingester must take fixes of any age."""
    return dataclasses.replace(settings, max_fix_age=None, retention=None)


async def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def stored(url: str, device_id: str) -> int:
    [(count,)] = await query(url, "SELECT count(*) FROM telemetry WHERE device_id = %s", device_id)
    return int(count)


async def device_row(url: str, device_id: str) -> tuple[Any, ...] | None:
    rows = await query(url, "SELECT kind, status FROM devices WHERE device_id = %s", device_id)
    return rows[0] if rows else None


async def test_bridge_on_the_log_stores_every_fix_it_publishes(settings: Settings) -> None:
    settings = flight_settings(settings)
    url = settings.database_url
    async with running_ingester(settings):
        # The autopilot sent ~4 positions a second; the bridge passes 2.
        options = BridgeOptions(source=str(TLOG), device_id="drone-7", max_rate_hz=2.0)
        bridge = Bridge(settings, options)
        report = await bridge.run()
        assert report.devices == {1: "drone-7"}
        # 208 s of flight: fixes at least 0.5 s apart, and the log has one every ~0.25 s.
        assert 208 < report.fixes <= 2 * 208 + 1
        assert report.published == report.fixes
        assert report.unsent == 0 and report.errors == {}
        assert report.skipped["rate_limited"] > 0
        await eventually(lambda: stored(url, "drone-7"), within=20)
        await eventually(lambda: _equal(stored(url, "drone-7"), report.published), within=20)
        # Said offline before its clean disconnect (its last will otherwise).
        await eventually(lambda: _equal(device_row(url, "drone-7"), ("drone", "offline")))
    assert await query(url, "SELECT reason, detail FROM quarantine") == []
    [(first, last)] = await query(
        url, "SELECT min(ts), max(ts) FROM telemetry WHERE device_id = 'drone-7'"
    )
    assert first.year == 2018 and (last - first).total_seconds() > 200


async def test_bridge_over_udp_publishes_a_live_stream(settings: Settings) -> None:
    settings = flight_settings(settings)
    url = settings.database_url
    frames = _log_frames(UDP_FRAMES)
    expected = Translator(max_rate_hz=5.0)
    decoder = dialect.MAVLink(None)
    want = [
        item
        for received_s, frame in frames
        for item in expected.feed(decoder.decode(bytearray(frame)), received_s)
        if isinstance(item, MavlinkFix)
    ]
    stop = asyncio.Event()
    async with running_ingester(settings):
        bridge = Bridge(settings, BridgeOptions(source="udpin:127.0.0.1:0", max_rate_hz=5.0))
        running = asyncio.create_task(bridge.run(stop))
        await asyncio.wait_for(bridge.listening.wait(), 10)
        assert bridge.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for n, (_, frame) in enumerate(frames):
                sock.sendto(frame, ("127.0.0.1", bridge.port))
                if n % 50 == 0:
                    await asyncio.sleep(0)
        await eventually(lambda: bridge.report().published == len(want), within=20)
        stop.set()
        report = await asyncio.wait_for(running, 30)
        await eventually(lambda: _equal(stored(url, "mavlink-1"), len(want)), within=20)
    assert report.devices == {1: "mavlink-1"}
    assert report.unsent == 0 and report.errors == {}
    times = await query(url, "SELECT ts FROM telemetry WHERE device_id = 'mavlink-1' ORDER BY ts")
    assert [t for (t,) in times] == [f.ts for f in want]


def _log_frames(limit: int) -> list[tuple[float, bytes]]:
    with TLOG.open("rb") as f:
        frames = []
        for received_s, message in tlog_messages(f, Translator()):
            frames.append((received_s, bytes(message.get_msgbuf())))
            if len(frames) == limit:
                break
        return frames


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
