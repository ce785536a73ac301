"""tracker.redis_live against a real Redis: a large batch of live states (more than one
chunk of the storing script) is stored, indexed for GEO queries and published once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import redis.asyncio as aioredis

from tracker.live import LiveDevice, Status
from tracker.redis_live import POSITIONS_CHANNEL, RedisLive

COUNT = 7_001  # the script issues its commands for 1,000 devices at a time


def _device(i: int) -> LiveDevice:
    at = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    lat, lon = 41.10 + (i % 100) * 1e-3, -8.65 + (i // 100) * 1e-3
    return LiveDevice(f"van-{i:05d}", at, lat, lon, at, 1, 2, Status.MOVING, speed=float(i))


async def test_a_large_batch_is_stored_indexed_and_published(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    subscriber = client.pubsub()
    await subscriber.subscribe(POSITIONS_CHANNEL)
    live = RedisLive(client)
    devices = [_device(i) for i in range(COUNT)]
    await live.write(devices, [])

    assert await live.device("van-04321") == devices[4321]
    assert await live.device("van-07000") == devices[7000]
    everything = await live.in_box(41.0, -8.7, 41.3, -8.5)
    assert sorted(d.device_id for d in everything) == [d.device_id for d in devices]
    [nearest] = await live.near(devices[1234].lat, devices[1234].lon, 20.0)
    assert nearest == devices[1234]

    message = None
    while message is None:
        message = await subscriber.get_message(ignore_subscribe_messages=True, timeout=5.0)
    published = json.loads(message["data"])
    assert [p["device_id"] for p in published] == [d.device_id for d in devices]
    await subscriber.aclose()
    await client.aclose()
