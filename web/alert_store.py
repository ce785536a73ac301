"""Alerts as dispatch sees them: stored events, their acknowledgements (once per event,
audited), and the events a reconnecting websocket client missed.

Any stored event is an alert until a dispatcher acknowledges it; clients narrow what
they watch by kind. An acknowledgement is stored first, then announced on
`fleetpulse:acks` so that every web worker tells its dispatch clients.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
import redis.asyncio as redis

from fleetpulse.database import Conn
from tracker.redis_live import EventMessage
from web import auth

log = logging.getLogger(__name__)

ACKS_CHANNEL = "fleetpulse:acks"
RECENT_ALERTS = timedelta(hours=24)
SNAPSHOT_ALERTS = 500
MAX_NOTE_CHARS = 1000

_EVENT_COLUMNS = "id, device_id, kind, ts, fence_id, lat, lon, alt, detail, delivery_id"
_json = msgspec.json.Encoder()


class AckRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a dispatcher may say when acknowledging an alert."""

    note: Annotated[str, msgspec.Meta(max_length=MAX_NOTE_CHARS)] = ""


class Ack(msgspec.Struct, frozen=True):
    """An acknowledgement, as stored, returned and broadcast."""

    event_id: str
    acked_by: str
    acked_at: str
    note: str


class UnknownEvent(LookupError):
    pass


class AlreadyAcknowledged(Exception):
    def __init__(self, ack: Ack) -> None:
        super().__init__(
            f"the alert {ack.event_id!r} was already acknowledged by {ack.acked_by} at "
            f"{ack.acked_at}"
        )
        self.ack = ack


def _event(row: tuple[Any, ...]) -> EventMessage:
    event_id, device, kind, ts, fence, lat, lon, alt, detail, delivery = row
    return EventMessage(
        event_id, device, kind, ts.isoformat(), fence, lat, lon, alt, detail, delivery
    )


def _filters(
    devices: Collection[str] | None, kinds: Collection[str] | None
) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if devices is not None:
        clauses.append(" AND e.device_id = ANY(%s)")
        params.append(list(devices))
    if kinds is not None:
        clauses.append(" AND e.kind = ANY(%s)")
        params.append(list(kinds))
    return "".join(clauses), params


async def unacknowledged(
    conn: Conn,
    *,
    since: datetime,
    devices: Collection[str] | None = None,
    kinds: Collection[str] | None = None,
    limit: int = SNAPSHOT_ALERTS,
) -> list[EventMessage]:
    """Events stored since `since` that nobody acknowledged: the newest `limit`, newest
    last. By the time they were stored, which is indexed in both storage modes and is
    when dispatch could first have seen them."""
    where, params = _filters(devices, kinds)
    cur = await conn.execute(
        f"SELECT {', '.join('e.' + c for c in _EVENT_COLUMNS.split(', '))} FROM events e"
        f" WHERE e.recorded_at >= %s{where}"
        " AND NOT EXISTS (SELECT 1 FROM alert_acks a WHERE a.event_id = e.id)"
        " ORDER BY e.recorded_at DESC, e.ts DESC, e.id DESC LIMIT %s",
        [since, *params, limit],
    )
    rows = await cur.fetchall()
    return [_event(row) for row in reversed(rows)]


async def recorded_at(conn: Conn, event_id: str) -> datetime | None:
    """When the event was stored, or None for an id the database does not have."""
    cur = await conn.execute("SELECT recorded_at FROM events WHERE id = %s LIMIT 1", (event_id,))
    row = await cur.fetchone()
    return None if row is None else row[0]


async def recorded_after(
    conn: Conn,
    at: datetime,
    *,
    exclude_id: str,
    devices: Collection[str] | None = None,
    kinds: Collection[str] | None = None,
    limit: int,
) -> tuple[list[EventMessage], bool]:
    """Events stored at or after `at`, in the order they were stored, but `exclude_id`:
    the newest `limit`, and whether older ones were left out."""
    where, params = _filters(devices, kinds)
    cur = await conn.execute(
        f"SELECT {', '.join('e.' + c for c in _EVENT_COLUMNS.split(', '))} FROM events e"
        f" WHERE e.recorded_at >= %s AND e.id <> %s{where}"
        " ORDER BY e.recorded_at DESC, e.ts DESC, e.id DESC LIMIT %s",
        [at, exclude_id, *params, limit + 1],
    )
    rows = await cur.fetchall()
    truncated = len(rows) > limit
    return [_event(row) for row in reversed(rows[:limit])], truncated


async def acknowledge(conn: Conn, event_id: str, who: auth.Principal, note: str) -> Ack:
    """Store and audit the acknowledgement; raises UnknownEvent or AlreadyAcknowledged."""
    async with conn.transaction():
        cur = await conn.execute("SELECT 1 FROM events WHERE id = %s LIMIT 1", (event_id,))
        if await cur.fetchone() is None:
            raise UnknownEvent(event_id)
        cur = await conn.execute(
            "INSERT INTO alert_acks (event_id, acked_by, note) VALUES (%s, %s, %s)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING acked_at",
            (event_id, who.name, note),
        )
        row = await cur.fetchone()
        if row is None:
            cur = await conn.execute(
                "SELECT acked_by, acked_at, note FROM alert_acks WHERE event_id = %s",
                (event_id,),
            )
            found = await cur.fetchone()
            assert found is not None  # acknowledgements are never deleted
            raise AlreadyAcknowledged(Ack(event_id, found[0], found[1].isoformat(), found[2]))
        await auth.audit(conn, who.token_id, "alert.ack", event_id, {"note": note, "by": who.name})
    return Ack(event_id, who.name, row[0].isoformat(), note)


async def announce(client: redis.Redis, ack: Ack) -> None:
    """Tell every web worker. The stored acknowledgement is the record: if Redis is
    unavailable, clients still see it in their next snapshot, so this only logs."""
    try:
        await client.publish(ACKS_CHANNEL, _json.encode(ack))
    except (redis.RedisError, OSError) as exc:
        log.warning("acknowledgement of %s stored but not announced: %s", ack.event_id, exc)
