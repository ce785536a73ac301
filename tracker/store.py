"""PostgreSQL side of the tracker: fences, events, checkpoints, and the telemetry it
re-reads when Redis has lost the hand-off. PostgreSQL is the record; this module is the
only one in tracker/ that talks to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetpulse.database import Conn
from ingest.schema import TELEMETRY_COLUMNS
from ingest.store import fix_from_row
from tracker.events import Event, EventKind
from tracker.positions import Fix

REREAD_FETCH_ROWS = 10_000
_EVENT_COLUMNS = (
    "id",
    "device_id",
    "kind",
    "ts",
    "fence_id",
    "lat",
    "lon",
    "alt",
    "detail",
    "delivery_id",
)


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    stream_id: str
    watermark: datetime | None
    redis_epoch: str
    state: bytes


# --- fences -------------------------------------------------------------------------


async def fence_features(conn: Conn) -> list[dict[str, Any]]:
    """Every stored fence as its GeoJSON Feature, ordered by id."""
    cur = await conn.execute("SELECT feature FROM fences ORDER BY id")
    return [row[0] for row in await cur.fetchall()]


async def fences_version(conn: Conn) -> tuple[int, datetime | None]:
    """Changes when a fence is added, changed or removed: cheap to poll."""
    cur = await conn.execute("SELECT count(*), max(updated_at) FROM fences")
    row = await cur.fetchone()
    return (0, None) if row is None else (int(row[0]), row[1])


async def save_fences(conn: Conn, features: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
    """Insert or replace fences given as (id, name, feature); returns how many."""
    rows = list(features)
    async with conn.transaction():
        for fence_id, name, feature in rows:
            await conn.execute(
                "INSERT INTO fences (id, name, feature) VALUES (%s, %s, %s::jsonb)"
                " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,"
                " feature = EXCLUDED.feature, updated_at = now()",
                (fence_id, name, json.dumps(feature)),
            )
    return len(rows)


async def fence_feature(conn: Conn, fence_id: str) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT feature FROM fences WHERE id = %s", (fence_id,))
    row = await cur.fetchone()
    return None if row is None else dict(row[0])


async def save_fence(conn: Conn, fence_id: str, name: str, feature: dict[str, Any]) -> bool:
    """Insert or replace one fence; True when it is new."""
    # clock_timestamp, not now() (the transaction's start): a replace inside a long
    # transaction must still move fences_version. xmax is 0 only on a row just inserted.
    cur = await conn.execute(
        "INSERT INTO fences (id, name, feature) VALUES (%s, %s, %s::jsonb)"
        " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,"
        " feature = EXCLUDED.feature, updated_at = clock_timestamp()"
        " RETURNING xmax = 0",
        (fence_id, name, json.dumps(feature)),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def delete_fence(conn: Conn, fence_id: str) -> bool:
    cur = await conn.execute("DELETE FROM fences WHERE id = %s", (fence_id,))
    return cur.rowcount > 0


async def device_groups(conn: Conn) -> dict[str, frozenset[str]]:
    """Devices that belong to groups, with their groups."""
    cur = await conn.execute("SELECT device_id, groups FROM devices WHERE groups <> '{}'")
    return {str(device): frozenset(groups) for device, groups in await cur.fetchall()}


async def set_device_groups(conn: Conn, device_id: str, groups: list[str]) -> bool:
    cur = await conn.execute(
        "UPDATE devices SET groups = %s WHERE device_id = %s", (sorted(set(groups)), device_id)
    )
    return cur.rowcount > 0


# --- events -------------------------------------------------------------------------


async def save_events(conn: Conn, events: list[Event]) -> int:
    """Store events once each (ids are deterministic); returns how many were new."""
    if not events:
        return 0
    columns: list[list[Any]] = [[] for _ in _EVENT_COLUMNS]
    for e in events:
        values = (
            e.id,
            e.device_id,
            e.kind.value,
            e.ts,
            e.fence_id,
            e.lat,
            e.lon,
            e.alt,
            e.detail,
            e.delivery_id,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    cur = await conn.execute(
        f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)})"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],"
        " %s::text[], %s::float8[], %s::float8[], %s::float4[], %s::text[], %s::text[])"
        " ON CONFLICT DO NOTHING",
        columns,
    )
    return max(cur.rowcount, 0)


async def events(
    conn: Conn,
    *,
    device_id: str | None = None,
    fence_id: str | None = None,
    delivery_id: str | None = None,
    kind: EventKind | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncIterator[Event]:
    """Stored events in event-time order, streamed (server-side cursor)."""
    clauses, params = [], []
    for column, value in (
        ("device_id", device_id),
        ("fence_id", fence_id),
        ("delivery_id", delivery_id),
        ("kind", kind),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(str(value))
    if since is not None:
        clauses.append("ts >= %s")
        params.append(since)  # type: ignore[arg-type]
    if until is not None:
        clauses.append("ts < %s")
        params.append(until)  # type: ignore[arg-type]
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    query = (
        "SELECT device_id, kind, ts, fence_id, lat, lon, alt, detail, delivery_id FROM events"
        f"{where} ORDER BY ts, id"
    )
    async with conn.transaction(), conn.cursor(name="fleetpulse_events") as cur:
        await cur.execute(query, params)
        async for device, kind_, ts, fence, lat, lon, alt, detail, delivery in cur:
            yield Event(device, EventKind(kind_), ts, fence, lat, lon, alt, detail, delivery)


# --- checkpoints --------------------------------------------------------------------


async def load_checkpoints(conn: Conn, partitions: Iterable[int]) -> dict[int, Checkpoint]:
    cur = await conn.execute(
        "SELECT partition, stream_id, watermark, redis_epoch, state FROM tracker_checkpoints"
        " WHERE partition = ANY(%s)",
        (list(partitions),),
    )
    return {row[0]: Checkpoint(*row) for row in await cur.fetchall()}


async def save_checkpoint(conn: Conn, checkpoint: Checkpoint) -> None:
    await conn.execute(
        "INSERT INTO tracker_checkpoints (partition, stream_id, watermark, redis_epoch, state)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (partition) DO UPDATE SET"
        " stream_id = EXCLUDED.stream_id, watermark = EXCLUDED.watermark,"
        " redis_epoch = EXCLUDED.redis_epoch, state = EXCLUDED.state, updated_at = now()",
        (
            checkpoint.partition,
            checkpoint.stream_id,
            checkpoint.watermark,
            checkpoint.redis_epoch,
            checkpoint.state,
        ),
    )


# --- re-reading telemetry -----------------------------------------------------------


async def latest_fixes(conn: Conn) -> AsyncIterator[Fix]:
    """Each known device's newest stored fix, as the device registry last recorded it."""
    columns = ", ".join("t." + c for c in TELEMETRY_COLUMNS)
    query = (
        f"SELECT {columns} FROM devices d JOIN telemetry t"
        " ON t.device_id = d.device_id AND t.ts = d.last_fix_ts"
    )
    async with conn.transaction(), conn.cursor(name="fleetpulse_latest") as cur:
        await cur.execute(query)
        async for row in cur:
            yield fix_from_row(row)


async def fixes_received_after(conn: Conn, after: datetime | None) -> AsyncIterator[Fix]:
    """Stored fixes that arrived after `after` (all when None), in arrival order."""
    where, params = ("WHERE received_at > %s", [after]) if after else ("", [])
    query = f"SELECT {', '.join(TELEMETRY_COLUMNS)} FROM telemetry {where} ORDER BY received_at"
    async with conn.transaction(), conn.cursor(name="fleetpulse_reread") as cur:
        cur.itersize = REREAD_FETCH_ROWS
        await cur.execute(query, params)
        async for row in cur:
            yield fix_from_row(row)
