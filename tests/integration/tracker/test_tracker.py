"""MQTT in → events out through the real Mosquitto, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis

from fleetpulse.database import Conn, connect
from fleetpulse.local_servers import Mosquitto, Redis
from fleetpulse.settings import Settings
from tests.conftest import (
    eventually,
    make_settings,
    running_ingester,
    running_tracker,
    with_options,
)
from tests.e2e.processes import fleetpulse
from tests.publisher import connect as mqtt_connect
from tests.publisher import publish
from tracker import delivery_store, store
from tracker.redis_live import EVENTS_CHANNEL, RedisLive

# A 300 m circle around Porto's Avenida dos Aliados, and a track that drives through it.
CENTRE = (41.1486, -8.6110)
FENCE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [CENTRE[1], CENTRE[0]]},
    "properties": {"id": "aliados", "name": "Aliados", "radius_m": 300},
}
# Latitude steps of ~111 m: outside, inside (three fixes), outside.
TRACK = [CENTRE[0] - 0.006 + k * 0.002 for k in range(7)]


def fixes(device: str, t0: int, lats: list[float]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"fleet/{device}/telemetry", {"ts": t0 + k * 10_000, "lat": lat, "lon": CENTRE[1]})
        for k, lat in enumerate(lats)
    ]


async def stored_events(url: str) -> list[tuple[str, str, str | None]]:
    conn = await connect(url, autocommit=False)
    try:
        return [(e.device_id, e.kind.value, e.fence_id) async for e in store.events(conn)]
    finally:
        await conn.close()


def fast(settings: Settings, **extra: str) -> Settings:
    """The same services, without the reorder wait, so tests see events at once."""
    return with_options(settings, reorder_window="0", **extra)


async def new_delivery(conn: Conn, delivery_id: str, vehicle_id: str) -> None:
    """A delivery to the Aliados circle's centre, due within the hour either side."""
    now = datetime.now(UTC)
    await delivery_store.create(
        conn,
        delivery_store.NewDelivery(
            id=delivery_id,
            vehicle_id=vehicle_id,
            dest_lat=CENTRE[0],
            dest_lon=CENTRE[1],
            window_start=now - timedelta(hours=1),
            window_end=now + timedelta(hours=1),
        ),
    )


async def add_fence(url: str) -> None:
    conn = await connect(url)
    try:
        await store.save_fences(conn, [("aliados", "Aliados", FENCE)])
    finally:
        await conn.close()


async def test_fixes_in_events_out_stored_published_and_live(settings: Settings) -> None:
    settings = fast(settings)
    await add_fence(settings.database_url)
    subscriber = aioredis.Redis.from_url(settings.redis_url).pubsub()
    await subscriber.subscribe(EVENTS_CHANNEL)
    t0 = int(time.time() * 1000) - 120_000
    async with running_ingester(settings), running_tracker(settings) as tracker:
        await publish(settings.mqtt_url, fixes("van-1", t0, TRACK))
        await eventually(lambda: tracker.counts["events"] >= 2)
        live = RedisLive(aioredis.Redis.from_url(settings.redis_url))
        state = await eventually(lambda: live.device("van-1"))
        assert abs(state.lat - TRACK[-1]) < 1e-9
        nearby = await live.near(CENTRE[0], CENTRE[1], 1000)
        assert [d.device_id for d in nearby] == ["van-1"]
        # Each hand-off entry read was timed from its writing to its publication.
        p50, p99 = tracker.handoff_lag.take()
        assert p50 is not None and p99 is not None
        assert 0 <= p50 <= p99 < 5_000
    assert await stored_events(settings.database_url) == [
        ("van-1", "enter", "aliados"),
        ("van-1", "exit", "aliados"),
    ]
    published: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while len(published) < 2 and time.monotonic() < deadline:
        message = await subscriber.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            published.append(json.loads(message["data"]))
    assert [m["kind"] for m in published] == ["enter", "exit"]
    assert published[0]["id"] == "van-1|aliados|enter|" + str((t0 + 20_000) * 1000)
    await subscriber.aclose()


async def test_restart_resumes_without_repeating_events(settings: Settings) -> None:
    settings = fast(settings)
    await add_fence(settings.database_url)
    t0 = int(time.time() * 1000) - 120_000
    async with running_ingester(settings):
        async with running_tracker(settings) as tracker:
            await publish(settings.mqtt_url, fixes("van-2", t0, TRACK[:4]))
            await eventually(lambda: tracker.counts["events"] >= 1)
        async with running_tracker(settings) as tracker:
            await publish(settings.mqtt_url, fixes("van-2", t0 + 40_000, TRACK[4:]))
            await eventually(lambda: tracker.counts["events"] >= 1)
            await asyncio.sleep(0.5)
    kinds = [kind for _, kind, _ in await stored_events(settings.database_url)]
    assert kinds == ["enter", "exit"]


async def test_redis_emptied_live_state_is_rebuilt_from_postgresql(settings: Settings) -> None:
    settings = fast(settings)
    t0 = int(time.time() * 1000) - 60_000
    async with running_ingester(settings), running_tracker(settings) as tracker:
        await publish(settings.mqtt_url, fixes("van-3", t0, TRACK))
        live = RedisLive(aioredis.Redis.from_url(settings.redis_url))
        await eventually(lambda: live.device("van-3"))
        redis.Redis.from_url(settings.redis_url).flushall()
        await eventually(lambda: tracker.counts["rebuilds"] >= 1, within=15)
        state = await eventually(lambda: live.device("van-3"))
        assert abs(state.lat - TRACK[-1]) < 1e-9
        # The hand-off works again after the rebuild.
        await publish(settings.mqtt_url, fixes("van-3", t0 + 100_000, [CENTRE[0]]))
        await eventually(lambda: _at(live, "van-3", CENTRE[0]))


async def _at(live: RedisLive, device: str, lat: float) -> bool:
    state = await live.device(device)
    return state is not None and abs(state.lat - lat) < 1e-9


async def test_last_will_makes_an_offline_event(settings: Settings) -> None:
    settings = fast(settings)
    async with running_ingester(settings), running_tracker(settings) as tracker:
        device = mqtt_connect(
            settings.mqtt_url, topic="fleet/van-4/status", payload=b"offline", qos=1, retain=True
        )
        t0 = int(time.time() * 1000)
        device.publish(
            "fleet/van-4/telemetry", json.dumps({"ts": t0, "lat": 41.1, "lon": -8.6}), qos=1
        ).wait_for_publish(5)
        live = RedisLive(aioredis.Redis.from_url(settings.redis_url))
        await eventually(lambda: live.device("van-4"))
        device.socket().close()  # type: ignore[union-attr]
        device.loop_stop()
        await eventually(lambda: tracker.counts["events"] >= 1)
        state = await live.device("van-4")
        assert state is not None and state.status == "offline"
    assert await stored_events(settings.database_url) == [("van-4", "offline", None)]


async def test_tracker_rides_out_a_redis_restart(database_url: str, broker: Mosquitto) -> None:
    with Redis() as own_redis:
        settings = make_settings(
            database_url=database_url,
            mqtt_url=broker.url,
            redis_url=own_redis.url,
            reorder_window="0",
        )
        await add_fence(database_url)
        t0 = int(time.time() * 1000) - 120_000
        async with running_ingester(settings), running_tracker(settings) as tracker:
            await publish(broker.url, fixes("van-5", t0, TRACK[:4]))
            await eventually(lambda: tracker.counts["events"] >= 1)
            own_redis.restart()  # persistence on: same data, same epoch
            await publish(broker.url, fixes("van-5", t0 + 40_000, TRACK[4:]))
            # redis-py may reconnect by itself or the tracker restarts its loop (counted
            # in "restarts"): either way, what it records must be right.
            await eventually(lambda: tracker.counts["events"] >= 1 and _has_exit(database_url))
    kinds = [kind for _, kind, _ in await stored_events(database_url)]
    assert kinds == ["enter", "exit"]


async def _has_exit(url: str) -> bool:
    return any(kind == "exit" for _, kind, _ in await stored_events(url))


async def test_a_delivery_follows_its_vehicle_to_arrival(settings: Settings) -> None:
    settings = fast(settings)
    conn = await connect(settings.database_url)
    await new_delivery(conn, "parcel-1", "van-6")
    t0 = int(time.time() * 1000) - 100_000
    north_m = [5_000, 800, 10, 10, 5]  # far, close, then inside the 50 m zone for 30 s
    track = [
        (
            "fleet/van-6/telemetry",
            {"ts": t0 + k * 15_000, "lat": CENTRE[0] + m / 111_195, "lon": CENTRE[1]},
        )
        for k, m in enumerate(north_m)
    ]
    async with running_ingester(settings), running_tracker(settings) as tracker:
        await publish(settings.mqtt_url, track)
        await eventually(lambda: tracker.counts["events"] >= 3)
    events = await stored_events(settings.database_url)
    assert [kind for _, kind, _ in events] == ["en_route", "approaching", "arrived"]
    stored = await delivery_store.get(conn, "parcel-1")
    assert stored.state == "arrived"
    cur = await conn.execute(
        "SELECT count(*), count(arrived_at), min(method) FROM eta_predictions"
        " WHERE delivery_id = 'parcel-1'"
    )
    given, settled, method = await cur.fetchone() or (0, 0, None)
    assert given >= 1 and settled == given, "every ETA given is settled by the arrival"
    assert method == "grid", "no road graph configured: estimated on the H3 grid"
    async with running_tracker(settings) as restarted:
        assert restarted.counts["residuals_primed"] == given, "arrivals are learned again"
    await conn.close()


async def test_drivers_close_deliveries_over_mqtt_and_only_their_own(settings: Settings) -> None:
    settings = fast(settings)
    conn = await connect(settings.database_url)
    for delivery_id in ("parcel-2", "parcel-3"):
        await new_delivery(conn, delivery_id, "van-7")
    ms = int(time.time() * 1000)
    report = {"delivery_id": "parcel-2", "outcome": "delivered", "ts": ms, "detail": "porch"}
    async with running_ingester(settings) as ingester, running_tracker(settings) as tracker:
        await publish(
            settings.mqtt_url,
            [
                ("fleet/van-7/delivery", report),
                ("fleet/van-7/delivery", report),  # the same report again: applied once
                ("fleet/van-8/delivery", {**report, "delivery_id": "parcel-3"}),
                ("fleet/van-7/delivery", {**report, "delivery_id": "nope"}),
                ("fleet/van-7/delivery", {**report, "outcome": "lost"}),
            ],
        )
        await eventually(lambda: ingester.stats.counts["acked"] >= 5)
        await eventually(lambda: tracker.counts["events"] >= 1)
    assert (await delivery_store.get(conn, "parcel-2")).state == "delivered"
    assert (await delivery_store.get(conn, "parcel-3")).state == "scheduled"
    await conn.close()
    assert await stored_events(settings.database_url) == [("van-7", "delivered", None)]
    async with await psycopg.AsyncConnection.connect(settings.database_url) as db:
        cur = await db.execute("SELECT reason, detail FROM quarantine ORDER BY id")
        refused = await cur.fetchall()
    assert sorted(refused) == [
        ("delivery_refused", "delivery 'parcel-3' is served by another vehicle"),
        ("delivery_refused", "no delivery 'nope'"),
        ("invalid_field", "Invalid enum value 'lost' - at `$.outcome`"),
    ]


async def test_a_reassignment_gets_an_eta_at_once_from_the_new_vehicles_last_position(
    settings: Settings,
) -> None:
    settings = fast(settings)
    conn = await connect(settings.database_url)
    await new_delivery(conn, "parcel-9", "van-10")
    ms = int(time.time() * 1000)
    async with running_ingester(settings), running_tracker(settings) as tracker:
        await publish(
            settings.mqtt_url,
            [("fleet/van-11/telemetry", {"ts": ms, "lat": CENTRE[0] + 0.03, "lon": CENTRE[1]})],
        )
        live = RedisLive(aioredis.Redis.from_url(settings.redis_url))
        await eventually(lambda: live.device("van-11"))
        await delivery_store.change(conn, "parcel-9", delivery_store.Change(vehicle_id="van-11"))
        await eventually(lambda: tracker.counts["eta_updates"] >= 1)
    cur = await conn.execute(
        "SELECT vehicle_id FROM eta_predictions WHERE delivery_id = 'parcel-9'"
    )
    assert await cur.fetchall() == [("van-11",)], "no new fix was needed"
    events = await stored_events(settings.database_url)
    assert [kind for _, kind, _ in events] == ["en_route"]
    await conn.close()


async def test_live_state_and_events_from_the_command_line(settings: Settings) -> None:
    settings = fast(settings)
    await add_fence(settings.database_url)
    t0 = int(time.time() * 1000) - 120_000
    async with running_ingester(settings), running_tracker(settings) as tracker:
        await publish(settings.mqtt_url, fixes("van-12", t0, TRACK))
        await eventually(lambda: tracker.counts["events"] >= 2)
        live = RedisLive(aioredis.Redis.from_url(settings.redis_url))
        await eventually(lambda: live.device("van-12"))
    env = {
        "FLEETPULSE_DATABASE_URL": settings.database_url,
        "FLEETPULSE_REDIS_URL": settings.redis_url,
    }
    shown = json.loads(fleetpulse("devices", "show", "van-12", env=env).stdout)
    assert shown["device_id"] == "van-12" and abs(shown["lat"] - TRACK[-1]) < 1e-9
    near = fleetpulse("devices", "near", str(TRACK[-1]), str(CENTRE[1]), "100", env=env)
    assert [json.loads(line)["device_id"] for line in near.stdout.splitlines()] == ["van-12"]
    far = fleetpulse("devices", "in-box", "0", "0", "1", "1", env=env)
    assert far.stdout == ""
    missing = fleetpulse("devices", "show", "nobody", env=env, check=False)
    assert missing.returncode == 1 and "no live state" in missing.stderr
    exported = fleetpulse("events", "export", "--fence", "aliados", "--kind", "exit", env=env)
    assert [json.loads(line)["kind"] for line in exported.stdout.splitlines()] == ["exit"]
