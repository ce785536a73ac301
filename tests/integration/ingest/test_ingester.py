"""The ingester against a real Mosquitto (started from deploy/mosquitto) and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis

from fleetpulse.local_servers import Mosquitto, Redis
from fleetpulse.settings import Settings
from ingest import store
from tests.conftest import eventually, make_settings, running_ingester
from tests.publisher import connect, publish
from tracker.handoff import decode, partition_of, stream_key
from tracker.positions import Fix

PORTO = (41.1496, -8.6109)


def now_ms() -> int:
    return int(time.time() * 1000)


def fix(ts: int, i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "lat": PORTO[0] + i * 1e-4, "lon": PORTO[1], **extra}


async def scalar(url: str, query: str, *params: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return None if row is None else row[0]


async def rows(url: str) -> int:
    return int(await scalar(url, "SELECT count(*) FROM telemetry"))


async def quarantine_reasons(url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason")
        return {str(r): int(n) for r, n in await cur.fetchall()}


async def test_distinct_fixes_stored_once_even_when_sent_twice(settings: Settings) -> None:
    t0 = now_ms()
    messages = [(f"fleet/van-{i % 7}/telemetry", fix(t0 - i * 1000, i)) for i in range(300)]
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, messages)
        await eventually(lambda: rows(settings.database_url), within=20)
        await eventually(lambda: ingester.stats.counts["acked"] >= 300)
        assert await rows(settings.database_url) == 300
        await publish(settings.mqtt_url, messages)
        await eventually(lambda: ingester.stats.counts["acked"] >= 600)
    assert await rows(settings.database_url) == 300
    duplicates = await scalar(
        settings.database_url, "SELECT value FROM ingest_counters WHERE name = 'duplicates'"
    )
    assert duplicates == 300
    assert await scalar(settings.database_url, "SELECT count(*) FROM devices") == 7


async def test_offline_buffer_array_keeps_good_elements_and_quarantines_bad(
    settings: Settings,
) -> None:
    t0 = now_ms()
    buffer = [fix(t0 - 3000), {"ts": t0 - 2000, "lat": 123.0, "lon": 0}, fix(t0 - 1000, 1)]
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, [("fleet/drone-1/telemetry", buffer)])
        await eventually(lambda: ingester.stats.counts["acked"] >= 1)
    assert await rows(settings.database_url) == 2
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        [bad] = await store.quarantined(conn)
    assert bad.reason == "lat_out_of_range"
    assert bad.detail.startswith("element 1:")
    assert b'"lat": 123.0' in bad.payload
    assert bad.device_id == "drone-1"


async def test_each_bad_message_is_quarantined_with_its_reason(settings: Settings) -> None:
    t0 = now_ms()
    bad = [
        ("fleet/v1/telemetry", b"{not json"),
        ("fleet/v1/telemetry", {"ts": t0, "lon": 1.0}),
        ("fleet/v1/telemetry", {"ts": t0 // 1000, "lat": 1.0, "lon": 1.0}),
        ("fleet/v1/telemetry", {"ts": "2026-02-30T00:00:00Z", "lat": 1.0, "lon": 1.0}),
        ("fleet/v1/telemetry", {"ts": t0 + 3_600_000, "lat": 1.0, "lon": 1.0}),
        ("fleet/v1/telemetry", {"ts": t0 - 30 * 86_400_000, "lat": 1.0, "lon": 1.0}),
        ("fleet/v1/telemetry", {"ts": t0, "lat": 1.0, "lon": 181.0}),
        ("fleet/v1/telemetry", {"ts": t0, "lat": 1.0, "lon": 1.0, "battery": 140}),
        ("fleet/v1/telemetry", {"ts": t0, "lat": "north", "lon": 1.0}),
        ("fleet/v1/telemetry", b""),
        ("fleet/v1/telemetry", b"x" * (256 * 1024 + 1)),
        ("fleet/bad id!/telemetry", fix(t0)),
        ("fleet/v1/status", b"sleeping"),
    ]
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, bad)
        await eventually(lambda: ingester.stats.counts["acked"] >= len(bad))
    assert await rows(settings.database_url) == 0
    assert await quarantine_reasons(settings.database_url) == {
        "invalid_json": 1,
        "missing_field": 1,
        "ts_unit": 1,
        "ts_invalid": 1,
        "ts_in_future": 1,
        "ts_too_old": 1,
        "lon_out_of_range": 1,
        "value_out_of_range": 1,
        "invalid_field": 1,
        "empty_payload": 1,
        "payload_too_large": 1,
        "bad_device_id": 1,
        "invalid_status": 1,
    }
    size = await scalar(
        settings.database_url,
        "SELECT payload_size || '/' || length(payload) FROM quarantine"
        " WHERE reason = 'payload_too_large'",
    )
    assert size == f"{256 * 1024 + 1}/{64 * 1024}"


async def test_owntracks_phone_works_unmodified(settings: Settings) -> None:
    tst = int(time.time()) - 10
    location = {
        "_type": "location",
        "lat": 41.15,
        "lon": -8.61,
        "tst": tst,
        "vel": 36,
        "cog": 90,
        "alt": 80,
        "acc": 12,
        "batt": 77,
        "tid": "al",
        "t": "u",
        "conn": "w",
    }
    async with running_ingester(settings) as ingester:
        await publish(
            settings.mqtt_url,
            [
                ("owntracks/Alice/Pixel", location),
                ("owntracks/Alice/Pixel", {"_type": "transition", "event": "enter"}),
                ("owntracks/Alice/Pixel/event", {"_type": "transition"}),
                ("owntracks/Alice/Pixel", {"_type": "lwt", "tst": tst}),
            ],
        )
        await eventually(lambda: ingester.stats.counts["acked"] >= 4)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        stored = await store.latest(conn, "alice:pixel")
        counters = (await store.totals(conn))["counters"]
    assert stored is not None
    assert stored.ts == datetime.fromtimestamp(tst, UTC)
    assert stored.speed is not None and abs(stored.speed - 10.0) < 1e-6
    assert (stored.heading, stored.alt, stored.acc, stored.battery) == (90, 80, 12, 77)
    assert stored.kind == "phone"
    assert counters == {"ignored_owntracks_transition": 1, "ignored_owntracks_subtopic": 1}
    status = await scalar(
        settings.database_url, "SELECT status FROM devices WHERE device_id = 'alice:pixel'"
    )
    assert status == "offline"
    assert await quarantine_reasons(settings.database_url) == {}


async def test_out_of_order_fixes_are_all_stored_and_read_in_fix_time_order(
    settings: Settings,
) -> None:
    t0 = now_ms() - 60_000
    order = [5, 1, 4, 2, 3, 0]
    async with running_ingester(settings) as ingester:
        for k in order:
            await publish(settings.mqtt_url, [("fleet/van/telemetry", fix(t0 + k * 1000, k))])
        await eventually(lambda: ingester.stats.counts["acked"] >= len(order))
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        times = [f.ts async for f in store.history(conn, "van")]
        latest = await store.latest(conn, "van")
        window = [
            f.ts
            async for f in store.history(
                conn,
                "van",
                datetime.fromtimestamp((t0 + 1000) / 1000, UTC),
                datetime.fromtimestamp((t0 + 3000) / 1000, UTC),
            )
        ]
    expected = [datetime.fromtimestamp((t0 + k * 1000) / 1000, UTC) for k in range(6)]
    assert times == expected
    assert latest is not None and latest.ts == expected[-1]
    assert window == expected[1:3]


async def test_conflicting_fix_at_a_stored_time_is_quarantined_not_merged(
    settings: Settings,
) -> None:
    t0 = now_ms()
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, [("fleet/van/telemetry", fix(t0, speed=5.0))])
        await eventually(lambda: ingester.stats.counts["acked"] >= 1)
        await publish(settings.mqtt_url, [("fleet/van/telemetry", fix(t0, speed=9.0))])
        await eventually(lambda: ingester.stats.counts["acked"] >= 2)
    assert await rows(settings.database_url) == 1
    assert await scalar(settings.database_url, "SELECT speed FROM telemetry") == 5.0
    assert await quarantine_reasons(settings.database_url) == {"conflict": 1}


async def test_status_and_last_will_are_recorded_as_changes(settings: Settings) -> None:
    async with running_ingester(settings) as ingester:
        device = connect(
            settings.mqtt_url, topic="fleet/van-9/status", payload=b"offline", qos=1, retain=True
        )
        device.publish("fleet/van-9/status", b"online", qos=1, retain=True).wait_for_publish(5)
        await eventually(lambda: ingester.stats.counts["status_changes"] >= 1)
        # Killing the socket without DISCONNECT makes the broker publish the last will.
        device.socket().close()  # type: ignore[union-attr]
        device.loop_stop()
        await eventually(lambda: ingester.stats.counts["status_changes"] >= 2)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cur = await conn.execute(
            "SELECT status FROM device_status_changes WHERE device_id = 'van-9' ORDER BY id"
        )
        changes = [r[0] for r in await cur.fetchall()]
    assert changes == ["online", "offline"]
    assert (
        await scalar(settings.database_url, "SELECT status FROM devices WHERE device_id = 'van-9'")
        == "offline"
    )


async def test_two_ingesters_in_one_group_store_every_fix_once(
    database_url: str, broker: Mosquitto, redis_url: str
) -> None:
    first = make_settings(database_url=database_url, mqtt_url=broker.url, redis_url=redis_url)
    second = make_settings(database_url=database_url, mqtt_url=broker.url, redis_url=redis_url)
    t0 = now_ms()
    messages = [(f"fleet/d{i % 50}/telemetry", fix(t0 - i, i)) for i in range(2000)]
    async with running_ingester(first) as a, running_ingester(second) as b:
        await publish(broker.url, messages)
        await eventually(lambda: a.stats.counts["acked"] + b.stats.counts["acked"] >= 2000)
        shares = (a.stats.counts["messages"], b.stats.counts["messages"])
    assert await rows(database_url) == 2000
    assert sum(shares) == 2000
    assert min(shares) > 0, f"one ingester got nothing: {shares}"


async def test_backfill_creates_partitions_on_demand(settings: Settings, plain_mode: None) -> None:
    settings = make_settings(
        database_url=settings.database_url,
        mqtt_url=settings.mqtt_url,
        redis_url=settings.redis_url,
        max_fix_age_s="0",
        retention="0",
    )
    database_url, broker_url = settings.database_url, settings.mqtt_url
    old = datetime(2019, 3, 1, 12, tzinfo=UTC)
    messages = [
        ("fleet/van/telemetry", fix(int((old + timedelta(days=d)).timestamp() * 1000), d))
        for d in range(3)
    ]
    async with running_ingester(settings) as ingester:
        await publish(broker_url, messages)
        await eventually(lambda: ingester.stats.counts["acked"] >= 3)
    assert await rows(database_url) == 3
    partitions = await scalar(
        database_url,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
        " AND inhrelid::regclass::text LIKE 'telemetry_p2019%%'",
    )
    assert partitions == 3


def handed_on(redis_url: str, partitions: int) -> list[Fix]:
    client = redis.Redis.from_url(redis_url)
    fixes: list[Fix] = []
    for partition in range(partitions):
        for _, fields in client.xrange(stream_key(partition)):
            handoff = decode(fields[b"h"])
            assert all(partition_of(f.device_id, partitions) == partition for f in handoff.fixes)
            fixes.extend(handoff.fixes)
    client.close()
    return fixes


async def test_committed_fixes_are_handed_on_by_partition_duplicates_included(
    settings: Settings,
) -> None:
    t0 = now_ms()
    messages = [(f"fleet/v{i % 20}/telemetry", fix(t0 - i * 10, i)) for i in range(200)]
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, messages)
        await eventually(lambda: ingester.stats.counts["acked"] >= 200)
        await publish(settings.mqtt_url, messages[:50])
        await publish(settings.mqtt_url, [("fleet/v0/telemetry", fix(t0, speed=99.0))])
        await eventually(lambda: ingester.stats.counts["acked"] >= 251)
    forwarded = handed_on(settings.redis_url, settings.partitions)
    assert len(forwarded) == 250, "every committed fix, redeliveries too; not the conflict"
    assert len({f.key for f in forwarded}) == 200
    assert all(f.speed != 99.0 for f in forwarded)


async def test_no_acknowledgement_while_the_hand_off_is_down(
    database_url: str, broker: Mosquitto
) -> None:
    with Redis() as own_redis:
        settings = make_settings(
            database_url=database_url, mqtt_url=broker.url, redis_url=own_redis.url
        )
        async with running_ingester(settings) as ingester:
            own_redis.stop()
            await publish(
                broker.url, [(f"fleet/v{i}/telemetry", fix(now_ms(), i)) for i in range(10)]
            )
            await eventually(lambda: ingester.stats.counts["retries"] >= 2)
            assert await rows(database_url) == 10, "committed to the record"
            assert ingester.stats.counts["acked"] == 0, "but not acknowledged"
            own_redis.start()
            await eventually(lambda: ingester.stats.counts["acked"] >= 10)
        assert len(handed_on(own_redis.url, settings.partitions)) == 10
