"""Read side of what ingest stores: history, latest fix, quarantine, totals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetpulse.database import Conn
from ingest.schema import TELEMETRY_COLUMNS
from tracker.positions import DeviceKind, Fix

HISTORY_FETCH_ROWS = 5_000
_SELECT_FIX = f"SELECT {', '.join(TELEMETRY_COLUMNS)} FROM telemetry WHERE device_id = %s"


def fix_from_row(row: tuple[Any, ...]) -> Fix:
    values = dict(zip(TELEMETRY_COLUMNS, row, strict=True))
    if values["kind"] is not None:
        values["kind"] = DeviceKind(values["kind"])
    return Fix(**values)


async def history(
    conn: Conn, device_id: str, start: datetime | None = None, end: datetime | None = None
) -> AsyncIterator[Fix]:
    """A device's fixes in fix-time order, `start` inclusive, `end` exclusive, streamed
    through a server-side cursor so that a long range never sits in memory."""
    query: str = _SELECT_FIX
    params: list[object] = [device_id]
    if start is not None:
        query, params = query + " AND ts >= %s", [*params, start]
    if end is not None:
        query, params = query + " AND ts < %s", [*params, end]
    async with conn.transaction(), conn.cursor(name="fleetpulse_history") as cur:
        cur.itersize = HISTORY_FETCH_ROWS
        await cur.execute(query + " ORDER BY ts", params)
        async for row in cur:
            yield fix_from_row(row)


async def latest(conn: Conn, device_id: str) -> Fix | None:
    """The device's fix with the greatest fix time (not the last to arrive)."""
    cur = await conn.execute(_SELECT_FIX + " ORDER BY ts DESC LIMIT 1", (device_id,))
    row = await cur.fetchone()
    return None if row is None else fix_from_row(row)


@dataclass(frozen=True)
class QuarantinedMessage:
    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes
    payload_size: int


async def quarantined(
    conn: Conn, reason: str | None = None, since: datetime | None = None, limit: int = 100
) -> list[QuarantinedMessage]:
    """Newest first."""
    query = (
        "SELECT id, received_at, topic, device_id, reason, detail, payload, payload_size"
        " FROM quarantine WHERE (%(reason)s::text IS NULL OR reason = %(reason)s)"
        " AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
        " ORDER BY id DESC LIMIT %(limit)s"
    )
    cur = await conn.execute(query, {"reason": reason, "since": since, "limit": limit})
    return [QuarantinedMessage(*row) for row in await cur.fetchall()]


async def totals(conn: Conn) -> dict[str, Any]:
    """What `fleetpulse stats` prints: devices, fixes, quarantined per reason, counters."""
    out: dict[str, Any] = {}
    cur = await conn.execute("SELECT count(*) FROM devices")
    out["devices"] = (await cur.fetchone() or (0,))[0]
    cur = await conn.execute("SELECT count(*) FROM telemetry")
    out["fixes"] = (await cur.fetchone() or (0,))[0]
    cur = await conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY 1")
    out["quarantined"] = {str(reason): n for reason, n in await cur.fetchall()}
    cur = await conn.execute("SELECT name, value FROM ingest_counters ORDER BY name")
    out["counters"] = {str(name): n for name, n in await cur.fetchall()}
    return out
