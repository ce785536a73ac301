"""A task cancelled while it waits on Redis must end: every stage stops its loops by
cancelling them, and a swallowed cancellation leaves a loop running and a shutdown
hanging. redis-py 8.0 and 8.1 swallow it for most commands, hence the pin below 8;
this test fails if an upgrade brings that back."""

import asyncio
import random

import pytest
import redis.asyncio as redis

ROUNDS = 300


async def _commands_until_cancelled(client: redis.Redis, halt: asyncio.Event) -> None:
    while not halt.is_set():
        await client.get("fleetpulse:test:cancel")
        await client.pipeline(transaction=False).get("a").get("b").execute()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_task_cancelled_during_a_redis_command_ends(redis_url: str, protocol: int) -> None:
    client = redis.Redis.from_url(redis_url, protocol=protocol)
    rng = random.Random(7)
    halt = asyncio.Event()
    try:
        for round_ in range(ROUNDS):
            task = asyncio.create_task(_commands_until_cancelled(client, halt))
            await asyncio.sleep(rng.random() * 0.002)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                halt.set()  # the loop's own way out, since cancelling it did not work
                await task
                pytest.fail(f"a cancelled task kept running (round {round_ + 1} of {ROUNDS})")
            assert task.cancelled()
    finally:
        await client.aclose()
