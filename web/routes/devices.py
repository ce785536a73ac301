"""Devices: the registry in PostgreSQL (first and last seen, kind, groups) with each
device's live state from Redis merged in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from aiohttp import web

from fleetpulse.database import Conn
from tracker.live import LiveDevice, Status
from tracker.positions import DEVICE_ID_PATTERN, DeviceKind
from tracker.redis_live import DEVICE_KEY_PREFIX
from web.api import (
    Api,
    Param,
    Time,
    json_response,
    next_page_link,
    query_choice,
    query_float,
    query_int,
    query_text,
)
from web.auth import Role
from web.problems import Problem
from web.services import services

api = Api()

# An aware time: RFC 3339 on the wire, `format: date-time` in the schema.

DEFAULT_PAGE = 100
MAX_PAGE = 1_000
MAX_RADIUS_M = 100_000.0
BOX_PAD_DEG = 1e-7  # about a centimetre
# Registry rows read per round when a status filter leaves most of them out.
SCAN_ROWS = 500

EffectiveStatus = Literal["moving", "stopped", "offline", "unknown"]
STATUSES: tuple[str, ...] = ("moving", "stopped", "offline", "unknown")

_live = msgspec.json.Decoder(LiveDevice)


class LiveState(msgspec.Struct, frozen=True):
    """Where the device is now, as the tracker last saw it. `cell` and `coarse_cell`
    are H3 cells in integer form; speeds in m/s, altitudes in metres."""

    device_id: str
    ts: Time
    lat: float
    lon: float
    received_at: Time
    cell: int
    coarse_cell: int
    status: Status
    speed: float | None
    heading: float | None
    alt: float | None
    rel_alt: float | None
    battery: float | None
    kind: DeviceKind | None


class Device(msgspec.Struct, frozen=True):
    """A device the database knows. `status` is the live status, or `offline` when
    only the device's last will says so, or `unknown` before the tracker has seen it;
    `reported_status` is what the device itself last published on its status topic."""

    device_id: str
    kind: str | None
    groups: list[str]
    first_seen: Time
    last_seen: Time
    last_fix_ts: Time | None
    status: EffectiveStatus
    reported_status: str | None
    status_changed_at: Time | None
    live: LiveState | None


class DevicePage(msgspec.Struct, frozen=True):
    """Devices ordered by id; `next` is the `after` of the next page, null on the last."""

    items: list[Device]
    next: str | None


DEVICE_ID = Param(
    "device_id",
    "the device's id, as in its MQTT topic",
    schema={"type": "string", "pattern": f"^{DEVICE_ID_PATTERN.pattern}$"},
    required=True,
    where="path",
)
_COORDINATE = r"-?[0-9]+(\.[0-9]+)?"
_LIST_PARAMS = (
    Param("status", "only devices with this status", {"type": "string", "enum": list(STATUSES)}),
    Param(
        "kind",
        "only devices of this kind",
        {"type": "string", "enum": [k.value for k in DeviceKind]},
    ),
    Param("group", "only devices in this group"),
    Param(
        "bbox",
        "south,west,north,east in degrees: devices whose live position is inside "
        "(a box may not cross the antimeridian)",
        {"type": "string", "pattern": f"^{_COORDINATE}(,{_COORDINATE}){{3}}$"},
    ),
    Param(
        "near",
        "lat,lon in degrees: devices whose live position is within radius_m of it",
        {"type": "string", "pattern": f"^{_COORDINATE},{_COORDINATE}$"},
    ),
    Param(
        "radius_m",
        f"the radius for near, in metres (at most {MAX_RADIUS_M:.0f}); required with near",
        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_RADIUS_M},
    ),
    Param(
        "limit",
        f"devices per page (default {DEFAULT_PAGE})",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    ),
    Param("after", "the `next` of the previous page: the last device id it held"),
)


def known_id(device_id: str) -> str:
    """A path's device id; one that breaks the id rule names no device (404)."""
    if DEVICE_ID_PATTERN.fullmatch(device_id) is None:
        raise Problem(404, f"no device {device_id!r} is known")
    return device_id


def live_state(device: LiveDevice) -> LiveState:
    return LiveState(
        device_id=device.device_id,
        ts=device.ts,
        lat=device.lat,
        lon=device.lon,
        received_at=device.received_at,
        cell=device.cell,
        coarse_cell=device.coarse_cell,
        status=device.status,
        speed=device.speed,
        heading=device.heading,
        alt=device.alt,
        rel_alt=device.rel_alt,
        battery=device.battery,
        kind=device.kind,
    )


_SELECT = (
    "SELECT device_id, kind, groups, first_seen, last_seen, last_fix_ts, status,"
    " status_changed_at FROM devices"
)


def _device(row: tuple[Any, ...], live: LiveDevice | None) -> Device:
    device_id, kind, groups, first_seen, last_seen, last_fix_ts, reported, changed_at = row
    status: EffectiveStatus
    if live is not None:
        status = live.status.value
    else:
        status = "offline" if reported == "offline" else "unknown"
    return Device(
        device_id=device_id,
        kind=kind,
        groups=list(groups),
        first_seen=first_seen,
        last_seen=last_seen,
        last_fix_ts=last_fix_ts,
        status=status,
        reported_status=reported,
        status_changed_at=changed_at,
        live=None if live is None else live_state(live),
    )


async def _live_states(request: web.Request, ids: Sequence[str]) -> list[LiveDevice | None]:
    if not ids:
        return []
    raws = await services(request).redis.mget([DEVICE_KEY_PREFIX + i for i in ids])
    return [None if raw is None else _live.decode(raw) for raw in raws]


def _coordinates(request: web.Request, name: str, count: int) -> list[float]:
    text = request.query.get(name, "")
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count or any(v != v or abs(v) == float("inf") for v in values):
        shape = "south,west,north,east" if count == 4 else "lat,lon"
        raise Problem(400, f"query parameter {name!r}: expected {shape} in degrees, got {text!r}")
    for i, value in enumerate(values):
        axis = "latitude" if (count == 4 and i % 2 == 0) or (count == 2 and i == 0) else "longitude"
        bound = 90 if axis == "latitude" else 180
        if not -bound <= value <= bound:
            raise Problem(
                400,
                f"query parameter {name!r}: {axis} {value} is outside -{bound}..{bound}",
            )
    return values


async def _spatial_ids(request: web.Request) -> set[str] | None:
    """Ids of the devices inside bbox and within radius of near; None when neither is
    given."""
    live = services(request).live
    found: set[str] | None = None
    if request.query.get("bbox"):
        south, west, north, east = _coordinates(request, "bbox", 4)
        if south > north or west > east:
            raise Problem(
                400,
                "query parameter 'bbox': south must not exceed north, nor west east "
                "(a box may not cross the antimeridian)",
            )
        # Redis cannot search a box of zero width or height: search one a centimetre
        # larger (inclusive edges make a line or a point a fair question), then cut.
        pad = BOX_PAD_DEG if south == north or west == east else 0.0
        found = {
            d.device_id
            for d in await live.in_box(south - pad, west - pad, north + pad, east + pad)
            if south <= d.lat <= north and west <= d.lon <= east
        }
    radius = query_float(request, "radius_m")
    if request.query.get("near"):
        lat, lon = _coordinates(request, "near", 2)
        if radius is None:
            raise Problem(400, "query parameter 'radius_m' is required with 'near'")
        if not 0 < radius <= MAX_RADIUS_M:
            raise Problem(
                400,
                f"query parameter 'radius_m': must be above 0 and at most "
                f"{MAX_RADIUS_M:.0f}, got {radius}",
            )
        near = {d.device_id for d in await live.near(lat, lon, radius)}
        found = near if found is None else found & near
    elif radius is not None:
        raise Problem(400, "query parameter 'radius_m' needs 'near'")
    return found


async def _registry_rows(
    conn: Conn,
    *,
    after: str | None,
    kind: str | None,
    group: str | None,
    ids: set[str] | None,
    limit: int,
) -> list[tuple[Any, ...]]:
    clauses, params = [], []
    if after is not None:
        clauses.append("device_id > %s")
        params.append(after)
    if kind is not None:
        clauses.append("kind = %s")
        params.append(kind)
    if group is not None:
        clauses.append("%s = ANY(groups)")
        params.append(group)
    if ids is not None:
        clauses.append("device_id = ANY(%s)")
        params.append(sorted(ids))  # type: ignore[arg-type]
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    cur = await conn.execute(f"{_SELECT}{where} ORDER BY device_id LIMIT %s", [*params, limit])
    return await cur.fetchall()


@api.get(
    "/api/v1/devices",
    summary="Devices with their live state, filtered, ordered by id, a page at a time",
    role=Role.VIEWER,
    tag="devices",
    params=_LIST_PARAMS,
    response=DevicePage,
)
async def list_devices(request: web.Request) -> web.Response:
    status = query_choice(request, "status", STATUSES)
    kind = query_choice(request, "kind", [k.value for k in DeviceKind])
    group = query_text(request, "group")
    limit = query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    after = query_text(request, "after")
    ids = await _spatial_ids(request)
    found: list[Device] = []
    if ids is None or ids:
        # Without a status filter one read of limit + 1 rows says whether a page follows;
        # with one, rows are read in rounds until enough pass it.
        batch = limit + 1 if status is None else max(limit + 1, SCAN_ROWS)
        async with services(request).db() as conn:
            while len(found) <= limit:
                rows = await _registry_rows(
                    conn, after=after, kind=kind, group=group, ids=ids, limit=batch
                )
                states = await _live_states(request, [row[0] for row in rows])
                for row, state in zip(rows, states, strict=True):
                    device = _device(row, state)
                    if status is None or device.status == status:
                        found.append(device)
                if len(rows) < batch:
                    break
                after = rows[-1][0]
    more = len(found) > limit
    page = found[:limit]
    next_cursor = page[-1].device_id if more else None
    headers = None if next_cursor is None else {"Link": next_page_link(request, next_cursor)}
    return json_response(DevicePage(page, next_cursor), headers=headers)


async def _known_device(request: web.Request, device_id: str) -> Device:
    async with services(request).db() as conn:
        cur = await conn.execute(_SELECT + " WHERE device_id = %s", (device_id,))
        row = await cur.fetchone()
    if row is None:
        raise Problem(404, f"no device {device_id!r} is known")
    [state] = await _live_states(request, [device_id])
    return _device(row, state)


@api.get(
    "/api/v1/devices/{device_id}",
    summary="One device: registry, groups, first and last seen, live state",
    role=Role.VIEWER,
    tag="devices",
    params=(DEVICE_ID,),
    response=Device,
    errors=(404,),
)
async def device_detail(request: web.Request) -> web.Response:
    return json_response(await _known_device(request, known_id(request.match_info["device_id"])))


@api.get(
    "/api/v1/devices/{device_id}/live",
    summary="One device's live state only",
    role=Role.VIEWER,
    tag="devices",
    params=(DEVICE_ID,),
    response=LiveState,
    errors=(404,),
)
async def device_live(request: web.Request) -> web.Response:
    device_id = known_id(request.match_info["device_id"])
    [state] = await _live_states(request, [device_id])
    if state is None:
        await _known_device(request, device_id)  # 404 when the device is unknown
        raise Problem(404, f"device {device_id!r} has no live state yet")
    return json_response(live_state(state))
