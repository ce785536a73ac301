"""A device's history between two times, streamed in the format asked for, a page at a
time.

A page is cut by keyset on fix time (unique per device): one index-only probe finds
where the page ends and whether another follows, so the Link header is known before
the first byte is sent; then the page streams from a server-side cursor through
`web.history_formats`, never held in memory whole.
"""

from __future__ import annotations

from contextlib import aclosing
from datetime import datetime, timedelta

from aiohttp import web

from fleetpulse.database import Conn
from ingest import store
from web import history_formats as formats
from web.api import (
    TIME_SCHEMA,
    Api,
    Param,
    next_page_link,
    query_choice,
    query_int,
    query_period,
    query_time,
)
from web.auth import Role
from web.problems import Problem
from web.routes.devices import DEVICE_ID, known_id
from web.services import services

api = Api()

DEFAULT_PAGE = 10_000
MAX_PAGE = 100_000
# PostgreSQL keeps microseconds: an exclusive bound is the inclusive one a tick away.
TICK = timedelta(microseconds=1)

_FORMATS = [f.value for f in formats.Format]
_GEOMETRIES = [g.value for g in formats.Geometry]

_PARAMS = (
    DEVICE_ID,
    Param("from", "start of the range, inclusive", TIME_SCHEMA, required=True),
    Param("to", "end of the range, exclusive; after from", TIME_SCHEMA, required=True),
    Param(
        "format",
        "json (default), ndjson, geojson, gpx or csv",
        {"type": "string", "enum": _FORMATS, "default": "json"},
    ),
    Param(
        "geometry",
        "geojson only: a Point per fix (default) or the track as one LineString",
        {"type": "string", "enum": _GEOMETRIES, "default": "points"},
    ),
    Param(
        "limit",
        f"fixes per page (default {DEFAULT_PAGE})",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    ),
    Param(
        "after",
        "the `next` of the previous page: the fix time of its last fix (exclusive)",
        TIME_SCHEMA,
    ),
)


async def _page_end(
    conn: Conn, device_id: str, start: datetime, end: datetime, limit: int
) -> datetime | None:
    """The fix time of the page's last fix when another page follows, else None."""
    cur = await conn.execute(
        "SELECT ts FROM telemetry WHERE device_id = %s AND ts >= %s AND ts < %s"
        " ORDER BY ts OFFSET %s LIMIT 2",
        (device_id, start, end, limit - 1),
    )
    rows = await cur.fetchall()
    return rows[0][0] if len(rows) == 2 else None


@api.get(
    "/api/v1/devices/{device_id}/history",
    summary="A device's fixes between two times, in fix-time order, streamed",
    role=Role.VIEWER,
    tag="devices",
    params=_PARAMS,
    response=formats.HistoryPage,
    content={
        "application/json": {"schema": {"$ref": "#/components/schemas/HistoryPage"}},
        "application/x-ndjson": {"schema": formats.NDJSON_SCHEMA},
        "application/geo+json": {"schema": formats.GEOJSON_SCHEMA},
        "application/gpx+xml": {"schema": formats.GPX_SCHEMA},
        "text/csv": {"schema": formats.CSV_SCHEMA},
    },
    errors=(404,),
)
async def history(request: web.Request) -> web.StreamResponse:
    device_id = known_id(request.match_info["device_id"])
    start, end = query_period(request)
    for name, value in (("from", start), ("to", end)):
        if value is None:
            raise Problem(400, f"query parameter {name!r} is required")
    assert start is not None and end is not None
    fmt = formats.Format(query_choice(request, "format", _FORMATS) or "json")
    geometry = formats.Geometry(query_choice(request, "geometry", _GEOMETRIES) or "points")
    limit = query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    after = query_time(request, "after")
    if after is not None:
        try:
            start = max(start, after + TICK)
        except OverflowError:
            start = end  # nothing follows the last representable time
    async with services(request).db() as conn:
        cur = await conn.execute("SELECT 1 FROM devices WHERE device_id = %s", (device_id,))
        if await cur.fetchone() is None:
            raise Problem(404, f"no device {device_id!r} is known")
        last = await _page_end(conn, device_id, start, end, limit)
        next_cursor = None
        media_type = formats.MEDIA_TYPES[fmt]
        if media_type.startswith("text/"):
            media_type += "; charset=utf-8"
        response = web.StreamResponse(headers={"Content-Type": media_type})
        if last is not None:
            next_cursor = formats.cursor(last)
            response.headers["Link"] = next_page_link(request, next_cursor)
            end = last + TICK
        response.enable_chunked_encoding()
        await response.prepare(request)
        out = formats.encoder(fmt, device_id, next_cursor, geometry)
        fixes = store.history(conn, device_id, start, end)
        async with aclosing(formats.encode(fixes, out)) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
    await response.write_eof()
    return response
