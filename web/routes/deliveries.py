"""Deliveries over REST: what `fleetpulse deliveries` does, through the same store
functions, so that the CLI and the API behave alike. Every change is audited in the
transaction that makes it; running trackers reload changed deliveries by polling.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import redis
from aiohttp import web

from tracker import delivery_store, geojson
from tracker import store as tracker_store
from tracker.deliveries import Delivery, DeliveryState, Eta, ServiceType
from tracker.positions import DEVICE_ID_PATTERN
from tracker.shapes import Circle, MultiPolygon, Polygon
from web import auth
from web.api import (
    Api,
    Param,
    body,
    json_response,
    principal,
    query_choice,
    query_int,
    query_text,
)
from web.problems import Problem
from web.routes.fences import GeoMultiPolygon, GeoPolygon
from web.services import Services, services

log = logging.getLogger("fleetpulse.web")
api = Api()

TAG = "deliveries"
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
MAX_DROP_RADIUS_M = 100_000.0
MAX_SERVICE_S = 86_400.0
MAX_SEQUENCE = 2**31 - 1  # an integer column
MAX_DETAIL_CHARS = 1_000
# Times a delivery may carry: later ones would overflow on the way (a window's end plus a
# day), earlier ones are no delivery FleetPulse has made.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 1, 1, tzinfo=UTC)
_T = TypeVar("_T")

_ID_PATTERN = f"^{DEVICE_ID_PATTERN.pattern}$"
DeviceId = Annotated[str, msgspec.Meta(pattern=_ID_PATTERN)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339 with an offset")]
# The columns are 4-byte floats: a value too small for one is refused by PostgreSQL, so
# radii start at a metre and service times are kept to the millisecond.
DropRadius = Annotated[float, msgspec.Meta(ge=1, le=MAX_DROP_RADIUS_M)]
StopOrder = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_SEQUENCE, description="order among the vehicle's stops")
]
ServiceSeconds = Annotated[
    float, msgspec.Meta(ge=0, le=MAX_SERVICE_S, description="planned time at the stop")
]
Detail = Annotated[str, msgspec.Meta(max_length=MAX_DETAIL_CHARS, pattern=r"^[^\x00]*$")]
ID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": _ID_PATTERN}
DELIVERY_ID = Param(
    "delivery_id",
    "the delivery's id",
    ID_SCHEMA,
    required=True,
    where="path",
)


class DeliveryPoint(msgspec.Struct):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class DeliveryCreate(msgspec.Struct, forbid_unknown_fields=True):
    id: DeviceId
    vehicle_id: Annotated[str, msgspec.Meta(pattern=_ID_PATTERN, description="van or drone")]
    destination: DeliveryPoint
    window_start: AwareTime
    window_end: AwareTime
    drop_radius_m: DropRadius = 50.0
    drop_zone: Annotated[
        GeoPolygon | GeoMultiPolygon | None,
        msgspec.Meta(description="a polygon drop zone instead of the radius"),
    ] = None
    service_type: ServiceType = ServiceType.STANDARD
    sequence: StopOrder = 0
    service_s: ServiceSeconds = 120.0
    token_expires_at: Annotated[
        AwareTime | None,
        msgspec.Meta(description="when the tracking link stops working (default: a day after)"),
    ] = None


class DeliveryChange(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Only the fields given change; a new vehicle or destination restarts the approach."""

    vehicle_id: DeviceId | None = None
    destination: DeliveryPoint | None = None
    drop_radius_m: DropRadius | None = None
    window_start: AwareTime | None = None
    window_end: AwareTime | None = None
    sequence: StopOrder | None = None
    service_s: ServiceSeconds | None = None


class DeliveryOutcome(msgspec.Struct, forbid_unknown_fields=True):
    outcome: Literal["delivered", "failed"]
    detail: Detail = ""


class DeliveryCancellation(msgspec.Struct, forbid_unknown_fields=True):
    detail: Detail = ""


class DeliveryTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    expires_at: AwareTime | None = None


class DeliveryEta(msgspec.Struct):
    p50: datetime
    p90: datetime
    computed_at: datetime
    method: str


class DeliveryView(msgspec.Struct):
    id: str
    vehicle_id: str
    destination: DeliveryPoint
    drop_radius_m: float | None
    drop_zone: GeoPolygon | GeoMultiPolygon | None
    window_start: datetime
    window_end: datetime
    service_type: ServiceType
    sequence: int
    service_s: float
    state: DeliveryState
    late_risk: bool
    eta: Annotated[DeliveryEta | None, msgspec.Meta(description="the latest ETA published")]


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryView]
    next_after: Annotated[
        str | None, msgspec.Meta(description="pass as `after` for the next page; null at the end")
    ]


class DeliveryTracking(msgspec.Struct):
    """The customer's link: the token is shown this once and kept only as a hash."""

    delivery_id: str
    tracking_token: str
    tracking_url: str
    token_expires_at: datetime


class DeliveryCreated(msgspec.Struct):
    delivery: DeliveryView
    tracking: DeliveryTracking


# --- routes ------------------------------------------------------------------------------


@api.post(
    "/api/v1/deliveries",
    summary="Create a delivery; answers its customer tracking link once",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    body=DeliveryCreate,
    response=DeliveryCreated,
    status=201,
    errors=[409],
)
async def create_delivery(request: web.Request) -> web.Response:
    new = await body(request, DeliveryCreate)
    _check_times(
        window_start=new.window_start,
        window_end=new.window_end,
        token_expires_at=new.token_expires_at,
    )
    expires = new.token_expires_at or new.window_end + delivery_store.TOKEN_LIFETIME_AFTER_WINDOW
    if new.token_expires_at is None and expires <= datetime.now(UTC):
        raise Problem(
            422,
            f"the window ended at {new.window_end.isoformat()}, and its tracking link would "
            "expire a day after: give token_expires_at",
        )
    _check_expiry(expires, "token_expires_at")
    record = delivery_store.NewDelivery(
        id=new.id,
        vehicle_id=new.vehicle_id,
        dest_lat=new.destination.lat,
        dest_lon=new.destination.lon,
        window_start=new.window_start,
        window_end=new.window_end,
        drop_radius_m=new.drop_radius_m,
        drop_zone=None if new.drop_zone is None else msgspec.to_builtins(new.drop_zone),
        service_type=new.service_type,
        sequence=new.sequence,
        service_s=round(new.service_s, 3),
        token_expires_at=expires,
    )
    found = services(request)
    with _store_errors():
        async with found.db() as conn, conn.transaction():
            token = await delivery_store.create(conn, record)
            detail = msgspec.to_builtins(new)
            detail["token_expires_at"] = expires.isoformat()
            await auth.audit(conn, principal(request).token_id, "delivery.create", new.id, detail)
            delivery = await delivery_store.get(conn, new.id)
    created = DeliveryCreated(_view(delivery, None), _tracking(found, new.id, token, expires))
    return json_response(created, status=201)


@api.get(
    "/api/v1/deliveries",
    summary="Deliveries in id order, a page at a time",
    role=auth.Role.VIEWER,
    tag=TAG,
    params=[
        Param("vehicle", "only those served by this vehicle or drone", ID_SCHEMA),
        Param(
            "state",
            "only those in this state",
            {"type": "string", "enum": [s.value for s in DeliveryState]},
        ),
        Param("after", "the `next_after` of the previous page", ID_SCHEMA),
        Param(
            "limit",
            f"page size (default {PAGE_SIZE})",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        ),
    ],
    response=DeliveryPage,
)
async def list_deliveries(request: web.Request) -> web.Response:
    state = query_choice(request, "state", [s.value for s in DeliveryState])
    limit = query_int(request, "limit", PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
    async with services(request).db() as conn:
        found = await delivery_store.page(
            conn,
            vehicle_id=_query_id(request, "vehicle"),
            state=None if state is None else DeliveryState(state),
            after_id=_query_id(request, "after"),
            limit=limit + 1,  # one more says whether there is a next page
        )
        etas = await delivery_store.latest_etas(conn, [d.id for d in found[:limit]])
    items = [_view(d, etas.get(d.id)) for d in found[:limit]]
    next_after = items[-1].id if len(found) > limit else None
    return json_response(DeliveryPage(items, next_after))


@api.get(
    "/api/v1/deliveries/{delivery_id}",
    summary="One delivery, with its latest ETA",
    role=auth.Role.VIEWER,
    tag=TAG,
    params=[DELIVERY_ID],
    response=DeliveryView,
    errors=[404],
)
async def get_delivery(request: web.Request) -> web.Response:
    delivery_id = _delivery_id(request)
    with _store_errors():
        async with services(request).db() as conn:
            delivery = await delivery_store.get(conn, delivery_id)
            etas = await delivery_store.latest_etas(conn, [delivery_id])
    return json_response(_view(delivery, etas.get(delivery_id)))


@api.patch(
    "/api/v1/deliveries/{delivery_id}",
    summary="A last-minute change: destination, window, vehicle, order or service time",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    params=[DELIVERY_ID],
    body=DeliveryChange,
    response=DeliveryView,
    errors=[404, 409],
)
async def change_delivery(request: web.Request) -> web.Response:
    delivery_id = _delivery_id(request)
    patch = await body(request, DeliveryChange)
    _check_times(window_start=patch.window_start, window_end=patch.window_end)
    given = msgspec.to_builtins(patch)
    if not given:
        fields = ", ".join(DeliveryChange.__struct_fields__)
        raise Problem(422, f"the body changes nothing: give at least one of {fields}")
    with _store_errors():
        async with services(request).db() as conn, conn.transaction():
            window = None
            if patch.window_start is not None or patch.window_end is not None:
                current = await delivery_store.get(conn, delivery_id)
                window = (
                    patch.window_start or current.window_start,
                    patch.window_end or current.window_end,
                )
            change = delivery_store.Change(
                vehicle_id=patch.vehicle_id,
                dest=None
                if patch.destination is None
                else (patch.destination.lat, patch.destination.lon),
                drop_radius_m=patch.drop_radius_m,
                window=window,
                sequence=patch.sequence,
                service_s=None if patch.service_s is None else round(patch.service_s, 3),
            )
            delivery = await delivery_store.change(conn, delivery_id, change)
            actor = principal(request).token_id
            await auth.audit(conn, actor, "delivery.update", delivery_id, given)
            etas = await delivery_store.latest_etas(conn, [delivery_id])
    return json_response(_view(delivery, etas.get(delivery_id)))


@api.post(
    "/api/v1/deliveries/{delivery_id}/cancel",
    summary="Cancel a delivery (the body may be left out)",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    params=[DELIVERY_ID],
    body=DeliveryCancellation,
    response=DeliveryView,
    errors=[404, 409],
)
async def cancel_delivery(request: web.Request) -> web.Response:
    cancellation = await _optional_body(request, DeliveryCancellation)
    return await _close(request, DeliveryState.CANCELLED, cancellation.detail, "delivery.cancel")


@api.post(
    "/api/v1/deliveries/{delivery_id}/report",
    summary="Delivered or failed, as the driver would report it over MQTT",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    params=[DELIVERY_ID],
    body=DeliveryOutcome,
    response=DeliveryView,
    errors=[404, 409],
)
async def report_delivery(request: web.Request) -> web.Response:
    report = await body(request, DeliveryOutcome)
    return await _close(request, DeliveryState(report.outcome), report.detail, "delivery.report")


@api.post(
    "/api/v1/deliveries/{delivery_id}/token",
    summary="A new customer tracking link; the old one stops working at once",
    role=auth.Role.DISPATCHER,
    tag=TAG,
    params=[DELIVERY_ID],
    body=DeliveryTokenRequest,
    response=DeliveryTracking,
    errors=[404],
)
async def new_tracking_token(request: web.Request) -> web.Response:
    delivery_id = _delivery_id(request)
    wanted = await _optional_body(request, DeliveryTokenRequest)
    _check_times(expires_at=wanted.expires_at)
    if wanted.expires_at is not None:
        _check_expiry(wanted.expires_at, "expires_at")
    found = services(request)
    with _store_errors():
        async with found.db() as conn, conn.transaction():
            token, expires = await delivery_store.reissue_token(
                conn, delivery_id, wanted.expires_at
            )
            # The token itself is never logged; only that a new one was made.
            detail = {"token_expires_at": expires.isoformat()}
            await auth.audit(
                conn, principal(request).token_id, "delivery.token", delivery_id, detail
            )
    return json_response(_tracking(found, delivery_id, token, expires))


# --- helpers -----------------------------------------------------------------------------


async def _close(
    request: web.Request, outcome: DeliveryState, detail: str, action: str
) -> web.Response:
    """Delivered, failed or cancelled: the state, its event and the audit row together,
    then the event published, as `fleetpulse deliveries report|cancel` does."""
    delivery_id = _delivery_id(request)
    found = services(request)
    with _store_errors():
        async with found.db() as conn:
            async with conn.transaction():
                events = await delivery_store.report(
                    conn, delivery_id, outcome, datetime.now(UTC), detail
                )
                await tracker_store.save_events(conn, events)
                audit_detail = {"outcome": outcome.value, "detail": detail}
                await auth.audit(
                    conn, principal(request).token_id, action, delivery_id, audit_detail
                )
            delivery = await delivery_store.get(conn, delivery_id)
            etas = await delivery_store.latest_etas(conn, [delivery_id])
    try:
        await found.live.write([], events)
    except redis.RedisError as exc:  # stored already: live clients see it late, not never
        log.warning("delivery %s %s stored but not published: %s", delivery_id, outcome, exc)
    return json_response(_view(delivery, etas.get(delivery_id)))


def _delivery_id(request: web.Request) -> str:
    delivery_id = request.match_info["delivery_id"]
    if not DEVICE_ID_PATTERN.fullmatch(delivery_id):  # no delivery can have this id
        raise Problem(404, f"no delivery {delivery_id!r}")
    return delivery_id


def _query_id(request: web.Request, name: str) -> str | None:
    value = query_text(request, name)
    if value is not None and not DEVICE_ID_PATTERN.fullmatch(value):
        raise Problem(
            400, f"query parameter {name!r}: {value[:80]!r} must match {DEVICE_ID_PATTERN.pattern}"
        )
    return value


def _check_times(**times: datetime | None) -> None:
    for field, value in times.items():
        if value is None:
            continue
        try:
            inside = EARLIEST <= value < LATEST
        except OverflowError:  # an offset that moves year 1 or 9999 off the calendar
            inside = False
        if not inside:
            raise Problem(422, f"{field}: {value.isoformat()} is not between 1970 and 9997")


@contextmanager
def _store_errors() -> Iterator[None]:
    """The store's refusals as problems the client can act on."""
    try:
        yield
    except delivery_store.UnknownDelivery as exc:
        raise Problem(404, str(exc)) from None
    except delivery_store.DeliveryConflict as exc:
        raise Problem(409, str(exc)) from None
    except geojson.FenceFormatError as exc:
        raise Problem(422, f"drop_zone: {exc}") from None
    except delivery_store.DeliveryError as exc:
        raise Problem(422, str(exc)) from None


async def _optional_body(request: web.Request, kind: type[_T]) -> _T:
    if not (await request.read()).strip():
        return kind()
    return await body(request, kind)


def _check_expiry(expires: datetime, field: str) -> None:
    if expires <= datetime.now(UTC):
        raise Problem(422, f"{field}: {expires.isoformat()} has passed: the link would never work")


def _tracking(found: Services, delivery_id: str, token: str, expires: datetime) -> DeliveryTracking:
    url = f"{found.settings.web_base_url}/track/{token}"
    return DeliveryTracking(delivery_id, token, url, expires)


def _zone_geometry(zone: Any) -> GeoPolygon | GeoMultiPolygon | None:
    def rings(polygon: Polygon) -> list[list[list[float]]]:
        return [[[lon, lat] for lon, lat in ring] for ring in (polygon.exterior, *polygon.holes)]

    if isinstance(zone, Polygon):
        return GeoPolygon(rings(zone))
    if isinstance(zone, MultiPolygon):
        return GeoMultiPolygon([rings(p) for p in zone.polygons])
    return None


def _view(delivery: Delivery, eta: Eta | None) -> DeliveryView:
    zone = delivery.zone
    radius = zone.radius_m if isinstance(zone, Circle) else delivery.drop_radius_m
    geometry = _zone_geometry(zone)
    return DeliveryView(
        id=delivery.id,
        vehicle_id=delivery.vehicle_id,
        destination=DeliveryPoint(delivery.dest_lat, delivery.dest_lon),
        drop_radius_m=None if geometry is not None else radius,
        drop_zone=geometry,
        window_start=delivery.window_start,
        window_end=delivery.window_end,
        service_type=delivery.service_type,
        sequence=delivery.sequence,
        service_s=delivery.service_s,
        state=delivery.state,
        late_risk=delivery.late_risk,
        eta=None if eta is None else DeliveryEta(eta.p50, eta.p90, eta.computed_at, eta.method),
    )
