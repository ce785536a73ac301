"""The tracker notices when the hand-off stream was trimmed past its position."""

from __future__ import annotations

import redis.asyncio as aioredis

from fleetpulse.settings import Settings
from tests.conftest import make_settings
from tracker.handoff import stream_key
from tracker.service import Tracker


async def test_trimming_past_the_position_is_seen(settings: Settings) -> None:
    settings = make_settings(
        database_url=settings.database_url, redis_url=settings.redis_url, partitions="1"
    )
    client = aioredis.Redis.from_url(settings.redis_url)
    first = await client.xadd(stream_key(0), {"h": b""})
    for _ in range(3000):
        await client.xadd(stream_key(0), {"h": b""}, maxlen=100, approximate=True)
    last = await client.xadd(stream_key(0), {"h": b""}, maxlen=100, approximate=True)
    tracker = Tracker(settings)
    partition = tracker._partition(0, None)
    partition.stream_id = first.decode()
    assert await tracker._trimmed(client, partition), "its next entries are gone"
    partition.stream_id = last.decode()
    assert not await tracker._trimmed(client, partition), "caught up: nothing missed"
    await client.aclose()
