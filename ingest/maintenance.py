"""Storage upkeep that runs beside ingest: what TimescaleDB's policies do, done by hand
on plain PostgreSQL (partitions ahead, expired partitions dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import psycopg

from fleetpulse.database import connect
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.settings import Settings, format_duration
from ingest.partitions import Partitions
from ingest.schema import StorageMode, apply_timescaledb_policies

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600.0
RETRY_INTERVAL_S = 60.0


def describe(mode: StorageMode, settings: Settings) -> str:
    """The start-up line that says which storage mode runs and what it implies."""
    chunks = format_duration(settings.chunk_interval)
    retention = format_duration(settings.retention) if settings.retention else "none"
    if mode is StorageMode.TIMESCALEDB:
        compress = format_duration(settings.compress_after) if settings.compress_after else "never"
        return (
            f"storage: TimescaleDB hypertable (chunks {chunks}, compression after {compress},"
            f" retention {retention})"
        )
    return (
        f"storage: plain PostgreSQL, native partitions of {chunks}"
        f" (retention {retention}; compression needs TimescaleDB and is off)"
    )


async def maintain_once(settings: Settings, mode: StorageMode) -> None:
    conn = await connect(settings.database_url)
    try:
        if mode is StorageMode.TIMESCALEDB:
            await apply_timescaledb_policies(
                conn, settings.chunk_interval, settings.retention, settings.compress_after
            )
        else:
            made, dropped = await Partitions(settings.chunk_interval).maintain(
                conn, datetime.now(UTC), settings.retention
            )
            log.debug("partition maintenance: %d created, %d dropped", made, dropped)
    finally:
        await conn.close()


async def maintain_forever(settings: Settings, mode: StorageMode, stop: asyncio.Event) -> None:
    while not stop.is_set():
        delay = MAINTENANCE_INTERVAL_S
        try:
            await maintain_once(settings, mode)
        except (psycopg.OperationalError, ServiceUnavailable) as exc:
            log.warning("storage maintenance failed (%s); retrying", exc)
            delay = RETRY_INTERVAL_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
