"""Geofences over REST, as GeoJSON: the same Features `fleetpulse geofences import` reads.

Bodies are read as raw JSON and checked by `tracker.geojson`, whose errors name the
feature and the field. What is stored (and answered) is the fence written back as its
canonical Feature: an editor's extra properties are not kept. Running trackers pick up
changes by polling `fences_version`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from fleetpulse.database import Conn
from tracker import geojson
from tracker import store as tracker_store
from tracker.fences import FENCE_ID_PATTERN, Fence
from web import auth
from web.api import Api, Param, json_response, principal
from web.problems import Problem
from web.services import services

api = Api()

TAG = "geofences"
_ID_PATTERN = f"^{FENCE_ID_PATTERN.pattern}$"
FENCE_ID = Param(
    "fence_id",
    "the fence's id (its properties.id)",
    {"type": "string", "pattern": _ID_PATTERN},
    required=True,
    where="path",
)

# --- the GeoJSON shapes, for the OpenAPI document ------------------------------------------
# Requests are not decoded through these (tracker.geojson gives the precise errors); they
# describe what is accepted and what is answered.

Coordinate = Annotated[
    list[float], msgspec.Meta(min_length=2, description="[lon, lat], degrees (WGS 84)")
]


class GeoPolygon(msgspec.Struct, tag_field="type", tag="Polygon"):
    coordinates: Annotated[
        list[list[Coordinate]], msgspec.Meta(description="the exterior ring, then any holes")
    ]


class GeoMultiPolygon(msgspec.Struct, tag_field="type", tag="MultiPolygon"):
    coordinates: list[list[list[Coordinate]]]


class GeoPoint(msgspec.Struct, tag_field="type", tag="Point"):
    coordinates: Annotated[Coordinate, msgspec.Meta(description="a circle's centre")]


class GeoLineString(msgspec.Struct, tag_field="type", tag="LineString"):
    coordinates: Annotated[list[Coordinate], msgspec.Meta(description="a corridor's centre line")]


class FenceAltitude(msgspec.Struct):
    datum: Literal["amsl", "takeoff"]
    floor_m: float | None = None
    ceiling_m: float | None = None


class FenceWindow(msgspec.Struct):
    days: list[Annotated[int, msgspec.Meta(ge=0, le=6, description="0 is Monday")]]
    start: Annotated[str, msgspec.Meta(pattern=r"^\d\d:\d\d(:\d\d)?$")]
    end: Annotated[str, msgspec.Meta(pattern=r"^\d\d:\d\d(:\d\d)?$")]


class FenceSchedule(msgspec.Struct):
    tz: Annotated[str, msgspec.Meta(description="an IANA time zone, e.g. Europe/Lisbon")]
    windows: list[FenceWindow]


class FenceProperties(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(pattern=_ID_PATTERN)]
    name: str = ""
    radius_m: Annotated[float, msgspec.Meta(gt=0, description="a Point's radius")] | None = None
    width_m: Annotated[float, msgspec.Meta(gt=0, description="a corridor's width")] | None = None
    tags: list[str] = []
    kinds: list[Literal["vehicle", "drone", "phone"]] = []
    groups: list[str] = []
    dwell_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    altitude: FenceAltitude | None = None
    schedule: FenceSchedule | None = None


class FenceFeature(msgspec.Struct, tag_field="type", tag="Feature"):
    geometry: GeoPolygon | GeoMultiPolygon | GeoPoint | GeoLineString
    properties: FenceProperties


class FenceCollection(msgspec.Struct, tag_field="type", tag="FeatureCollection"):
    features: list[FenceFeature]


class FenceImport(msgspec.Struct):
    created: list[str]
    replaced: list[str]


# --- routes ------------------------------------------------------------------------------


@api.get(
    "/api/v1/geofences",
    summary="Every geofence, as a GeoJSON FeatureCollection",
    role=auth.Role.VIEWER,
    tag=TAG,
    response=FenceCollection,
)
async def list_fences(request: web.Request) -> web.Response:
    async with services(request).db() as conn:
        features = await tracker_store.fence_features(conn)
    return json_response({"type": "FeatureCollection", "features": features})


@api.get(
    "/api/v1/geofences/{fence_id}",
    summary="One geofence, as a GeoJSON Feature",
    role=auth.Role.VIEWER,
    tag=TAG,
    params=[FENCE_ID],
    response=FenceFeature,
    errors=[404],
)
async def get_fence(request: web.Request) -> web.Response:
    fence_id = _fence_id(request)
    async with services(request).db() as conn:
        feature = await tracker_store.fence_feature(conn, fence_id)
    if feature is None:
        raise Problem(404, f"no fence {fence_id!r}")
    return json_response(feature)


@api.put(
    "/api/v1/geofences/{fence_id}",
    summary="Create or replace one geofence (properties.id may be left out; the path names it)",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    params=[FENCE_ID],
    body=FenceFeature,
    response=FenceFeature,
)
async def put_fence(request: web.Request) -> web.Response:
    fence_id = request.match_info["fence_id"]
    document = await _json(request)
    properties = document.get("properties") if isinstance(document, dict) else None
    if isinstance(properties, dict):
        if "id" not in properties:
            document = {**document, "properties": {**properties, "id": fence_id}}
        elif properties["id"] != fence_id:
            raise Problem(
                422, f"properties.id {properties['id']!r} differs from the path's {fence_id!r}"
            )
    try:
        fence = geojson.parse_feature(document)
    except geojson.FenceFormatError as exc:
        raise Problem(422, str(exc)) from None
    actor = principal(request).token_id
    async with services(request).db() as conn, conn.transaction():
        feature, _ = await _save(conn, actor, fence)
    return json_response(feature)


@api.post(
    "/api/v1/geofences",
    summary="Add or replace many geofences from a FeatureCollection: all of them or none",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    body=FenceCollection,
    response=FenceImport,
)
async def import_fences(request: web.Request) -> web.Response:
    raw = await request.read()
    await _json(request)  # malformed JSON is a 400; everything after is a 422
    try:
        fences = geojson.loads(raw)
    except geojson.FenceFormatError as exc:
        raise Problem(422, str(exc)) from None
    except RecursionError:
        raise Problem(400, "the body is nested too deeply to be GeoJSON") from None
    actor = principal(request).token_id
    created: list[str] = []
    replaced: list[str] = []
    async with services(request).db() as conn, conn.transaction():
        for fence in fences:
            _, is_new = await _save(conn, actor, fence)
            (created if is_new else replaced).append(fence.id)
    return json_response(FenceImport(created, replaced))


@api.delete(
    "/api/v1/geofences/{fence_id}",
    summary="Delete a geofence",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    params=[FENCE_ID],
    status=204,
    errors=[404],
)
async def delete_fence(request: web.Request) -> web.Response:
    fence_id = _fence_id(request)
    actor = principal(request).token_id
    async with services(request).db() as conn, conn.transaction():
        # Read first so that the audit log keeps what was deleted.
        feature = await tracker_store.fence_feature(conn, fence_id)
        if feature is None or not await tracker_store.delete_fence(conn, fence_id):
            raise Problem(404, f"no fence {fence_id!r}")
        await auth.audit(conn, actor, "fence.delete", fence_id, {"feature": feature})
    return web.Response(status=204)


async def _save(conn: Conn, actor: str, fence: Fence) -> tuple[dict[str, Any], bool]:
    """Store the fence as its canonical Feature and audit it, in the caller's transaction;
    returns the Feature and whether the fence is new."""
    feature = geojson.to_feature(fence)
    created = await tracker_store.save_fence(conn, fence.id, fence.name, feature)
    action = "fence.create" if created else "fence.replace"
    await auth.audit(conn, actor, action, fence.id, {"feature": feature})
    return feature, created


def _fence_id(request: web.Request) -> str:
    fence_id = request.match_info["fence_id"]
    if not FENCE_ID_PATTERN.fullmatch(fence_id):  # no such fence can have been stored
        raise Problem(404, f"no fence {fence_id!r}")
    return fence_id


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise Problem(400, "a GeoJSON body is required")
    try:
        document = msgspec.json.decode(raw)
    except msgspec.ValidationError as exc:  # valid JSON, but a number no float can hold
        raise Problem(422, f"invalid body: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    _reject_nul(document)
    return document


def _reject_nul(document: Any) -> None:
    """PostgreSQL keeps no NUL in text or jsonb: refuse it here rather than fail there."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise Problem(422, f"text must not contain NUL (\\u0000): {value[:60]!r}")
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
