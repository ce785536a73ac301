"""What the tracker published on the Redis channels the web workers follow, second by
second, counted by a subscriber of the benchmark's own: the yardstick for what the
clients receive.

A stream the clients miss in the window is explained here: when the web workers read
the feed late, what they send in the window is what was published earlier, during the
warm-up, and the feed then may have carried little of that stream (at start-up the
tracker computes every delivery's first ETA and publishes positions rarely).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import redis.asyncio as redis

from tracker.redis_live import ETAS_CHANNEL, EVENTS_CHANNEL, POSITIONS_CHANNEL

CHANNELS = {POSITIONS_CHANNEL: "positions", EVENTS_CHANNEL: "events", ETAS_CHANNEL: "etas"}
READ_TIMEOUT_S = 1.0


class FeedCounter:
    def __init__(self, redis_url: str) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        # Whole seconds since `start()` -> channel name -> (messages, bytes).
        self.messages: dict[int, Counter[str]] = {}
        self.bytes: dict[int, Counter[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    async def start(self) -> None:
        """Subscribed (confirmed by Redis) when this returns."""
        await self._pubsub.subscribe(*CHANNELS)
        self._started = time.time()
        self._task = asyncio.create_task(self._count(), name="ws-bench-feed")

    async def _count(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=READ_TIMEOUT_S
                )
            except (redis.RedisError, OSError):
                return  # Redis is going away with the run: the counts stand as they are
            if message is None or message["type"] != "message":
                continue
            channel = message["channel"]
            name = CHANNELS.get(channel.decode() if isinstance(channel, bytes) else channel)
            if name is None:
                continue
            second = int(time.time() - self._started)
            self.messages.setdefault(second, Counter())[name] += 1
            self.bytes.setdefault(second, Counter())[name] += len(message["data"])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    def rates(self, first_s: float, end_s: float) -> dict[str, dict[str, float]]:
        """Messages/s and KiB/s per channel between two times (epoch seconds)."""
        lo, hi = int(first_s - self._started), int(end_s - self._started)
        seconds = max(hi - lo, 1)
        out: dict[str, dict[str, float]] = {}
        for name in CHANNELS.values():
            messages = sum(self.messages.get(s, Counter())[name] for s in range(lo, hi))
            size = sum(self.bytes.get(s, Counter())[name] for s in range(lo, hi))
            out[name] = {
                "per_s": round(messages / seconds, 1),
                "kib_per_s": round(size / 1024 / seconds, 1),
            }
        return out

    def report(self, warmup_end: float, window_end: float) -> dict[str, Any]:
        last = int(window_end - self._started)
        return {
            "warmup": self.rates(self._started, warmup_end),
            "window": self.rates(warmup_end, window_end),
            # Positions messages each second from the first publish: when they are rare.
            "positions_per_second": [
                self.messages.get(s, Counter())["positions"] for s in range(last)
            ],
        }
