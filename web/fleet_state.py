"""What `/metrics` reads from PostgreSQL and Redis about the whole deployment: counters
every ingest and tracker process publishes (`fleetpulse.process_stats`), durable ingest
counters, recent rejects and events, the hand-off streams and the trackers' checkpoints.

Every query is bounded whatever the data's size: index ranges over the last hour, small
tables, partial indexes. A reading is reused for `CACHE_S`, so scrapes from several
Prometheus servers (or a dashboard refreshing) cost the database one reading per interval.
A source that fails or is slow is reported as down; the others are still shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import psycopg
import psycopg_pool
import redis.asyncio as redis

from fleetpulse import process_stats
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.process_stats import ProcessStats
from tracker.handoff import stream_key
from tracker.redis_live import LIVE_GEO_KEY
from web.services import Services

log = logging.getLogger(__name__)

CACHE_S = 5.0
SOURCE_TIMEOUT_S = 2.0
# "Recent" rejects and events: long enough to see a trickle, short enough for an index range.
RECENT_S = 3600

_INGEST_COUNTERS = "SELECT name, value FROM ingest_counters"
_QUARANTINE_RECENT = (
    "SELECT reason, count(*) FROM quarantine"
    " WHERE received_at > now() - make_interval(secs => %s) GROUP BY reason"
)
_EVENTS_RECENT = (
    "SELECT kind, count(*) FROM events"
    " WHERE recorded_at > now() - make_interval(secs => %s) GROUP BY kind"
)
_CHECKPOINTS = (
    "SELECT partition, stream_id, extract(epoch FROM now() - updated_at)::float8"
    " FROM tracker_checkpoints"
)
# Matches the partial index on open deliveries, so finished ones (the bulk) are not read.
_OPEN_DELIVERIES = (
    "SELECT state, count(*) FROM deliveries"
    " WHERE state NOT IN ('delivered', 'failed', 'cancelled') GROUP BY state"
)
_WEBHOOK_OUTBOX = (
    "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8"
    " FROM webhook_deliveries WHERE status = 'pending'"
)
_WEBHOOK_DEAD = "SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'"


@dataclass
class Checkpoint:
    stream_id: str
    age_s: float


@dataclass
class DatabaseReading:
    ingest_counters: dict[str, int] = field(default_factory=dict)
    quarantine_recent: dict[str, int] = field(default_factory=dict)
    events_recent: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    open_deliveries: dict[str, int] = field(default_factory=dict)
    # None where the webhooks' tables do not exist (an older schema).
    webhooks_pending: int | None = None
    webhooks_oldest_pending_s: float | None = None
    webhooks_dead: int | None = None


@dataclass
class RedisReading:
    processes: list[ProcessStats] = field(default_factory=list)
    stream_lengths: dict[int, int] = field(default_factory=dict)
    # The newest entry id of each non-empty hand-off stream.
    stream_heads: dict[int, str] = field(default_factory=dict)
    live_devices: int = 0


@dataclass
class FleetReading:
    database: DatabaseReading | None
    redis: RedisReading | None
    database_error: str = ""
    redis_error: str = ""
    read_s: float = 0.0

    def tracker_lag_s(self) -> dict[int, float]:
        """Per partition, how much newer (by entry time) the stream's newest hand-off entry
        is than the last one its tracker checkpointed. It does not grow while the stream is
        idle; it includes up to one checkpoint interval (5 s) of work already done."""
        if self.database is None or self.redis is None:
            return {}
        lag = {}
        for partition, head in self.redis.stream_heads.items():
            checkpoint = self.database.checkpoints.get(partition)
            head_ms, done_ms = (
                _entry_ms(head),
                _entry_ms(checkpoint.stream_id if checkpoint else ""),
            )
            if head_ms is not None and done_ms is not None:
                lag[partition] = max(0.0, (head_ms - done_ms) / 1000.0)
        return lag


def _entry_ms(stream_id: str) -> int | None:
    head = stream_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


async def read_database(services: Services) -> DatabaseReading:
    reading = DatabaseReading()
    async with services.db() as conn:
        cur = await conn.execute(_INGEST_COUNTERS)
        reading.ingest_counters = {str(n): int(str(v)) for n, v in await cur.fetchall()}
        cur = await conn.execute(_QUARANTINE_RECENT, (RECENT_S,))
        reading.quarantine_recent = {str(r): int(str(n)) for r, n in await cur.fetchall()}
        cur = await conn.execute(_EVENTS_RECENT, (RECENT_S,))
        reading.events_recent = {str(k): int(str(n)) for k, n in await cur.fetchall()}
        cur = await conn.execute(_CHECKPOINTS)
        reading.checkpoints = {
            int(str(p)): Checkpoint(str(s), float(str(a))) for p, s, a in await cur.fetchall()
        }
        cur = await conn.execute(_OPEN_DELIVERIES)
        reading.open_deliveries = {str(s): int(str(n)) for s, n in await cur.fetchall()}
        cur = await conn.execute("SELECT to_regclass('webhook_deliveries') IS NOT NULL")
        row = await cur.fetchone()
        if row is not None and row[0]:
            cur = await conn.execute(_WEBHOOK_OUTBOX)
            pending = await cur.fetchone()
            if pending is not None:
                reading.webhooks_pending = int(str(pending[0]))
                reading.webhooks_oldest_pending_s = (
                    None if pending[1] is None else float(str(pending[1]))
                )
            cur = await conn.execute(_WEBHOOK_DEAD)
            dead = await cur.fetchone()
            reading.webhooks_dead = int(str(dead[0])) if dead is not None else None
    return reading


async def read_redis(client: redis.Redis, partitions: int) -> RedisReading:
    reading = RedisReading(processes=await process_stats.read_all(client))
    async with client.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.xlen(stream_key(partition))
            pipe.xrevrange(stream_key(partition), count=1)
        pipe.zcard(LIVE_GEO_KEY)
        replies = await pipe.execute()
    for partition in range(partitions):
        length, newest = replies[2 * partition], replies[2 * partition + 1]
        reading.stream_lengths[partition] = int(length)
        if newest:
            entry_id = newest[0][0]
            reading.stream_heads[partition] = (
                entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            )
    reading.live_devices = int(replies[-1])
    return reading


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {SOURCE_TIMEOUT_S} s"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class FleetState:
    """The latest reading, refreshed at most every `CACHE_S`; concurrent scrapes share
    one refresh."""

    def __init__(self, cache_s: float | None = None) -> None:
        self._cache_s = CACHE_S if cache_s is None else cache_s
        self._reading: FleetReading | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def reading(self, services: Services) -> FleetReading:
        async with self._lock:
            now = time.monotonic()
            if self._reading is None or now - self._read_at >= self._cache_s:
                self._reading = await self._read(services)
                self._read_at = time.monotonic()
            return self._reading

    async def _read(self, services: Services) -> FleetReading:
        started = time.perf_counter()
        database, from_redis = await asyncio.gather(
            asyncio.wait_for(read_database(services), SOURCE_TIMEOUT_S),
            asyncio.wait_for(
                read_redis(services.redis, services.settings.partitions), SOURCE_TIMEOUT_S
            ),
            return_exceptions=True,
        )
        reading = FleetReading(None, None)
        if isinstance(database, DatabaseReading):
            reading.database = database
        elif isinstance(
            database,
            psycopg.Error | psycopg_pool.PoolTimeout | ServiceUnavailable | TimeoutError | OSError,
        ):
            reading.database_error = _describe(database)
            log.warning("metrics: PostgreSQL not read: %s", reading.database_error)
        else:
            raise database
        if isinstance(from_redis, RedisReading):
            reading.redis = from_redis
        elif isinstance(from_redis, redis.RedisError | TimeoutError | OSError):
            reading.redis_error = _describe(from_redis)
            log.warning("metrics: Redis not read: %s", reading.redis_error)
        else:
            raise from_redis
        reading.read_s = time.perf_counter() - started
        return reading
