"""Stored events (geofence, device and delivery), filtered, in event-time order, a page
at a time. Pages are cut by keyset on (ts, id), so a page never repeats or skips an
event, even while new ones are stored."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from tracker.events import EventKind
from web.api import (
    TIME_SCHEMA,
    Api,
    Param,
    Time,
    json_response,
    next_page_link,
    query_choice,
    query_int,
    query_period,
    query_text,
)
from web.auth import Role
from web.problems import Problem
from web.services import services

api = Api()

DEFAULT_PAGE = 100
MAX_PAGE = 1_000
_KINDS = [k.value for k in EventKind]


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as stored. `id` is stable (the same event always has the same id) and
    is what the dispatch websocket's `since` takes; `ts` is event time, `recorded_at`
    when FleetPulse stored it."""

    id: str
    device_id: str
    kind: EventKind
    ts: Time
    fence_id: str | None
    delivery_id: str | None
    lat: float | None
    lon: float | None
    alt: float | None
    detail: str
    recorded_at: Time


class EventPage(msgspec.Struct, frozen=True):
    """Events ordered by (ts, id); `next` is the `after` of the next page, null on the
    last."""

    items: list[StoredEvent]
    next: str | None


_COLUMNS = "id, device_id, kind, ts, fence_id, delivery_id, lat, lon, alt, detail, recorded_at"

_PARAMS = (
    Param("device", "only events of this device"),
    Param("fence", "only events of this geofence"),
    Param("delivery", "only events of this delivery"),
    Param("kind", "only events of this kind", {"type": "string", "enum": _KINDS}),
    Param("from", "event time from, inclusive", TIME_SCHEMA),
    Param("to", "event time until, exclusive; after from", TIME_SCHEMA),
    Param(
        "limit",
        f"events per page (default {DEFAULT_PAGE})",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    ),
    Param("after", "the `next` of the previous page: the id of the last event it held"),
)


@api.get(
    "/api/v1/events",
    summary="Stored events, filtered, in event-time order, a page at a time",
    role=Role.VIEWER,
    tag="events",
    params=_PARAMS,
    response=EventPage,
)
async def list_events(request: web.Request) -> web.Response:
    clauses: list[str] = []
    params: list[Any] = []
    for name, column in (
        ("device", "device_id"),
        ("fence", "fence_id"),
        ("delivery", "delivery_id"),
    ):
        value = query_text(request, name)
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    kind = query_choice(request, "kind", _KINDS)
    if kind is not None:
        clauses.append("kind = %s")
        params.append(kind)
    start, end = query_period(request)
    if start is not None:
        clauses.append("ts >= %s")
        params.append(start)
    if end is not None:
        clauses.append("ts < %s")
        params.append(end)
    limit = query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    after = query_text(request, "after")
    async with services(request).db() as conn:
        if after is not None:
            cur = await conn.execute("SELECT ts FROM events WHERE id = %s LIMIT 1", (after,))
            row = await cur.fetchone()
            if row is None:
                raise Problem(400, f"query parameter 'after': no stored event has the id {after!r}")
            clauses.append("(ts, id) > (%s, %s)")
            params.extend((row[0], after))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM events{where} ORDER BY ts, id LIMIT %s", [*params, limit + 1]
        )
        rows = await cur.fetchall()
    items = [StoredEvent(*row) for row in rows[:limit]]
    next_cursor = items[-1].id if len(rows) > limit else None
    headers = None if next_cursor is None else {"Link": next_page_link(request, next_cursor)}
    return json_response(EventPage(items, next_cursor), headers=headers)
