"""Each ingest and tracker process publishes its counters to Redis, so that the web app's
`/metrics` can show every stage, wherever it runs.

One hash per process and stage, `fleetpulse:stats:<stage>:<host>:<pid>`, holds the
process's totals since it started and expires unless refreshed; a sorted set lists the
hashes by expiry, so a scrape reads exactly the live ones (no SCAN over the keyspace).
A dead process's hash vanishes after `STATS_TTL_S`; a restarted one starts from zero
under a new pid, which Prometheus reads as a counter reset of a new series.
Losing these numbers loses nothing but a graph: Redis being down never stops a stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis.asyncio as redis

log = logging.getLogger(__name__)

KEY_PREFIX = "fleetpulse:stats:"
REGISTRY_KEY = "fleetpulse:stats:processes"
PUBLISH_INTERVAL_S = 5.0
# Three missed refreshes before a process counts as gone.
STATS_TTL_S = 3 * PUBLISH_INTERVAL_S

Snapshot = Callable[[], Mapping[str, int | float]]
# The field mapping redis-py's `hset` is typed to take (its key type is invariant).
_Fields = dict[
    bytes | bytearray | memoryview | str | int | float,
    bytes | bytearray | memoryview | str | int | float,
]


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stats_key(stage: str, process: str) -> str:
    return f"{KEY_PREFIX}{stage}:{process}"


@dataclass(frozen=True)
class ProcessStats:
    stage: str  # "ingest" or "tracker"
    process: str  # host:pid
    values: dict[str, float]


async def publish(
    client: redis.Redis,
    snapshots: Mapping[str, Snapshot],
    process: str,
    ttl_s: float = STATS_TTL_S,
) -> None:
    """Write each stage's snapshot once, in one round trip."""
    expires_at = time.time() + ttl_s
    async with client.pipeline(transaction=False) as pipe:
        for stage, snapshot in snapshots.items():
            key = stats_key(stage, process)
            values: _Fields = dict(snapshot().items())
            if values:
                pipe.hset(key, mapping=values)
            pipe.expire(key, max(1, round(ttl_s)))
            pipe.zadd(REGISTRY_KEY, {key: expires_at})
        await pipe.execute()


async def publish_forever(
    redis_url: str,
    snapshots: Mapping[str, Snapshot],
    stop: asyncio.Event,
    every_s: float = PUBLISH_INTERVAL_S,
) -> None:
    """Publish every `every_s` until `stop`, and once more on the way out so that the last
    totals are seen. Redis trouble is logged and retried at the next interval."""
    if not snapshots:
        return
    process = process_name()
    client = redis.Redis.from_url(redis_url)
    failing = False
    try:
        while True:
            try:
                await publish(client, snapshots, process, ttl_s=max(STATS_TTL_S, 3 * every_s))
                failing = False
            except (redis.RedisError, OSError) as exc:
                if not failing:
                    log.warning("cannot publish stats to Redis (%s); retrying", exc)
                failing = True
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await client.aclose()


async def read_all(client: redis.Redis) -> list[ProcessStats]:
    """The snapshots of every live process, in two round trips."""
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(REGISTRY_KEY, "-inf", now)
        pipe.zrange(REGISTRY_KEY, 0, -1)
        _, keys = await pipe.execute()
    if not keys:
        return []
    names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        hashes = await pipe.execute()
    found = []
    for name, fields in zip(names, hashes, strict=True):
        stage, _, process = name.removeprefix(KEY_PREFIX).partition(":")
        if not fields or not process:
            continue
        values = {}
        for field, raw in fields.items():
            with contextlib.suppress(ValueError):
                values[field.decode() if isinstance(field, bytes) else str(field)] = float(raw)
        found.append(ProcessStats(stage, process, values))
    return sorted(found, key=lambda p: (p.stage, p.process))
