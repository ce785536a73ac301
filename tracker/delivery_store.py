"""PostgreSQL side of deliveries: created and changed by dispatch (CLI, later the API),
advanced by the tracker. The row is the truth; the tracker reloads rows that changed.

A customer's tracking token is generated here, shown once, and kept only as a hash.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleetpulse.database import Conn
from fleetpulse.errors import FleetPulseError
from tracker import geojson
from tracker.deliveries import (
    Delivery,
    DeliveryMachine,
    DeliveryState,
    DropZone,
    Eta,
    ServiceType,
)
from tracker.delivery_tracking import EtaUpdate
from tracker.eta import EtaMethod, StopEta
from tracker.eta_accuracy import Settled
from tracker.events import Event
from tracker.positions import is_valid_device_id

TOKEN_BYTES = 24  # 192 random bits, URL-safe: unguessable
TOKEN_LIFETIME_AFTER_WINDOW = timedelta(days=1)
POLL_OVERLAP_S = 30
_COLUMNS = (
    "id, vehicle_id, dest_lat, dest_lon, drop_radius_m, drop_zone, window_start, window_end,"
    " service_type, sequence, service_s, state, late_risk"
)


class DeliveryError(FleetPulseError):
    """A delivery that does not exist, or a change it cannot take."""


class UnknownDelivery(DeliveryError):
    """No delivery has this id."""


class DeliveryConflict(DeliveryError):
    """The delivery exists already, or its state does not allow the change."""


@dataclass(frozen=True)
class NewDelivery:
    id: str
    vehicle_id: str
    dest_lat: float
    dest_lon: float
    window_start: datetime
    window_end: datetime
    drop_radius_m: float = 50.0
    drop_zone: dict[str, Any] | None = None  # a GeoJSON Polygon or MultiPolygon geometry
    service_type: ServiceType = ServiceType.STANDARD
    sequence: int = 0
    service_s: float = 120.0
    token_expires_at: datetime | None = None


@dataclass(frozen=True)
class Change:
    """Fields dispatch may change at the last minute; None leaves a field as it is."""

    vehicle_id: str | None = None
    dest: tuple[float, float] | None = None
    drop_radius_m: float | None = None
    window: tuple[datetime, datetime] | None = None
    sequence: int | None = None
    service_s: float | None = None

    def restarts_approach(self) -> bool:
        return self.vehicle_id is not None or self.dest is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def drop_zone(geometry: dict[str, Any] | None) -> DropZone | None:
    """A stored GeoJSON geometry as a drop-zone shape (validated like a fence's)."""
    if geometry is None:
        return None
    feature = {"type": "Feature", "geometry": geometry, "properties": {"id": "drop-zone"}}
    shape = geojson.parse_feature(feature).shape
    if not isinstance(shape, DropZone):  # a corridor is no place to leave a parcel
        raise geojson.FenceFormatError("a drop zone is a Polygon or a MultiPolygon")
    return shape


def _delivery(row: Sequence[Any]) -> Delivery:
    (
        id_,
        vehicle,
        lat,
        lon,
        radius,
        zone,
        start,
        end,
        service,
        sequence,
        service_s,
        state,
        late,
    ) = row
    return Delivery(
        id=id_,
        vehicle_id=vehicle,
        dest_lat=lat,
        dest_lon=lon,
        drop_radius_m=radius,
        zone=drop_zone(zone),
        window_start=start,
        window_end=end,
        service_type=ServiceType(service),
        sequence=sequence,
        service_s=service_s,
        state=DeliveryState(state),
        late_risk=late,
    )


async def create(conn: Conn, new: NewDelivery) -> str:
    """Store a delivery; returns the customer's tracking token (shown this once)."""
    for what, name in (("delivery id", new.id), ("vehicle id", new.vehicle_id)):
        # Drivers name deliveries in MQTT reports, so ids follow the device-id rules.
        if not is_valid_device_id(name):
            raise DeliveryError(f"{what} {name!r} must match [A-Za-z0-9_.:-]{{1,64}}")
    if new.window_end <= new.window_start:
        raise DeliveryError("the delivery window must end after it starts")
    drop_zone(new.drop_zone)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = new.token_expires_at or new.window_end + TOKEN_LIFETIME_AFTER_WINDOW
    cur = await conn.execute(
        "INSERT INTO deliveries (id, vehicle_id, dest_lat, dest_lon, drop_radius_m, drop_zone,"
        " window_start, window_end, service_type, sequence, service_s, token_hash,"
        " token_expires_at) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING",
        (
            new.id,
            new.vehicle_id,
            new.dest_lat,
            new.dest_lon,
            new.drop_radius_m,
            None if new.drop_zone is None else json.dumps(new.drop_zone),
            new.window_start,
            new.window_end,
            new.service_type.value,
            new.sequence,
            new.service_s,
            hash_token(token),
            expires,
        ),
    )
    if cur.rowcount == 0:
        raise DeliveryConflict(f"a delivery {new.id!r} exists already")
    return token


async def get(conn: Conn, delivery_id: str) -> Delivery:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE id = %s", (delivery_id,))
    row = await cur.fetchone()
    if row is None:
        raise UnknownDelivery(f"no delivery {delivery_id!r}")
    return _delivery(row)


async def by_token(conn: Conn, token: str, now: datetime) -> Delivery | None:
    """The one delivery a customer's token opens, while it has not expired."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE token_hash = %s AND token_expires_at > %s",
        (hash_token(token), now),
    )
    row = await cur.fetchone()
    return None if row is None else _delivery(row)


async def listing(
    conn: Conn, *, vehicle_id: str | None = None, active_only: bool = False
) -> list[Delivery]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE (%(v)s::text IS NULL OR vehicle_id = %(v)s)"
        " AND (NOT %(a)s OR state NOT IN ('delivered', 'failed', 'cancelled'))"
        " ORDER BY vehicle_id, sequence, window_end, id",
        {"v": vehicle_id, "a": active_only},
    )
    return [_delivery(row) for row in await cur.fetchall()]


async def page(
    conn: Conn,
    *,
    vehicle_id: str | None = None,
    state: DeliveryState | None = None,
    after_id: str | None = None,
    limit: int = 100,
) -> list[Delivery]:
    """Up to `limit` deliveries in id order, after `after_id`: pages that stay stable while
    deliveries are added or change state."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE (%(v)s::text IS NULL OR vehicle_id = %(v)s)"
        " AND (%(s)s::text IS NULL OR state = %(s)s)"
        " AND (%(after)s::text IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s",
        {
            "v": vehicle_id,
            "s": None if state is None else state.value,
            "after": after_id,
            "limit": limit,
        },
    )
    return [_delivery(row) for row in await cur.fetchall()]


async def latest_etas(conn: Conn, delivery_ids: Sequence[str]) -> dict[str, Eta]:
    """The newest ETA published for each of these deliveries that has one."""
    cur = await conn.execute(
        "SELECT DISTINCT ON (delivery_id) delivery_id, p50, p90, predicted_at, method"
        " FROM eta_predictions WHERE delivery_id = ANY(%s)"
        " ORDER BY delivery_id, predicted_at DESC",
        (list(delivery_ids),),
    )
    return {
        delivery: Eta(p50, p90, predicted_at, method)
        for delivery, p50, p90, predicted_at, method in await cur.fetchall()
    }


async def reissue_token(
    conn: Conn, delivery_id: str, expires_at: datetime | None = None
) -> tuple[str, datetime]:
    """A new tracking token for the delivery; the old one stops working at once. Returns
    the token (shown this once) and when it expires (default: a day after the window)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    cur = await conn.execute(
        "UPDATE deliveries SET token_hash = %s,"
        " token_expires_at = coalesce(%s::timestamptz, window_end + %s) WHERE id = %s"
        " RETURNING token_expires_at",
        (hash_token(token), expires_at, TOKEN_LIFETIME_AFTER_WINDOW, delivery_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise UnknownDelivery(f"no delivery {delivery_id!r}")
    return token, row[0]


async def changed_since(conn: Conn, since: datetime | None) -> tuple[list[Delivery], datetime]:
    """Deliveries changed after `since` (all when None), and the newest change time."""
    # updated_at is stamped before commit: a change committed late can carry an older
    # stamp than one already seen, so each poll looks back a margin (loading is idempotent).
    cur = await conn.execute(
        f"SELECT {_COLUMNS}, updated_at FROM deliveries WHERE %(s)s::timestamptz IS NULL"
        " OR updated_at > %(s)s::timestamptz - %(margin)s::interval ORDER BY updated_at",
        {"s": since, "margin": f"{POLL_OVERLAP_S} seconds"},
    )
    rows = await cur.fetchall()
    newest = max((row[-1] for row in rows), default=since)
    return [_delivery(row[:-1]) for row in rows], newest or datetime.min


async def change(conn: Conn, delivery_id: str, change: Change) -> Delivery:
    """Apply a last-minute change; a new vehicle or destination restarts the approach."""
    delivery = await get(conn, delivery_id)
    if not delivery.active:
        raise DeliveryConflict(f"delivery {delivery_id!r} is {delivery.state}: it cannot change")
    if change.vehicle_id is not None:
        delivery.vehicle_id = change.vehicle_id
    if change.dest is not None:
        delivery.dest_lat, delivery.dest_lon = change.dest
    if change.drop_radius_m is not None:
        delivery.drop_radius_m = change.drop_radius_m
    if change.window is not None:
        if change.window[1] <= change.window[0]:
            raise DeliveryError("the delivery window must end after it starts")
        delivery.window_start, delivery.window_end = change.window
    if change.sequence is not None:
        delivery.sequence = change.sequence
    if change.service_s is not None:
        delivery.service_s = change.service_s
    if change.restarts_approach():
        DeliveryMachine().reassigned(delivery)
    await conn.execute(
        "UPDATE deliveries SET vehicle_id = %s, dest_lat = %s, dest_lon = %s,"
        " drop_radius_m = %s, window_start = %s, window_end = %s, sequence = %s,"
        " service_s = %s, state = %s, updated_at = clock_timestamp() WHERE id = %s",
        (
            delivery.vehicle_id,
            delivery.dest_lat,
            delivery.dest_lon,
            delivery.drop_radius_m,
            delivery.window_start,
            delivery.window_end,
            delivery.sequence,
            delivery.service_s,
            delivery.state.value,
            delivery_id,
        ),
    )
    return delivery


async def record_state(conn: Conn, delivery: Delivery, was: DeliveryState, at: datetime) -> bool:
    """Persist a transition the tracker made at fix time `at`, unless dispatch changed
    the delivery since (then the tracker reloads it instead). An arrival settles the
    error of every ETA given for this delivery."""
    cur = await conn.execute(
        "UPDATE deliveries SET state = %s, late_risk = %s, updated_at = clock_timestamp()"
        " WHERE id = %s AND state = %s",
        (delivery.state.value, delivery.late_risk, delivery.id, was.value),
    )
    if cur.rowcount and delivery.state is DeliveryState.ARRIVED:
        await conn.execute(
            "UPDATE eta_predictions SET arrived_at = %s"
            " WHERE delivery_id = %s AND arrived_at IS NULL",
            (at, delivery.id),
        )
    return cur.rowcount > 0


async def save_etas(conn: Conn, updates: Sequence[EtaUpdate]) -> None:
    """Every published ETA is kept, so that accuracy can be measured when it arrives."""
    for update in updates:
        await conn.execute(
            "INSERT INTO eta_predictions (delivery_id, predicted_at, vehicle_id, lat, lon,"
            " p50, p90, method, travel_s, service_s, straight_m)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                update.delivery.id,
                update.eta.computed_at,
                update.delivery.vehicle_id,
                update.fix.lat,
                update.fix.lon,
                update.eta.p50,
                update.eta.p90,
                update.eta.method,
                update.eta.travel_s,
                update.eta.service_s,
                update.eta.straight_m,
            ),
        )


async def report(
    conn: Conn, delivery_id: str, outcome: DeliveryState, at: datetime, detail: str = ""
) -> list[Event]:
    """Delivered, failed (driver or API) or cancelled (dispatch): stored with its event."""
    delivery = await get(conn, delivery_id)
    events = DeliveryMachine().report(delivery, outcome, at, detail)
    if not events:
        raise DeliveryConflict(f"delivery {delivery_id!r} is {delivery.state} already")
    await conn.execute(
        "UPDATE deliveries SET state = %s, updated_at = clock_timestamp() WHERE id = %s",
        (outcome.value, delivery_id),
    )
    return events


async def settled_model_etas(conn: Conn, limit: int = 5_000) -> list[tuple[StopEta, datetime]]:
    """The newest road and grid ETAs settled by an arrival, as the model gave them."""
    cur = await conn.execute(
        "SELECT delivery_id, method, predicted_at, travel_s, service_s, straight_m, arrived_at"
        " FROM eta_predictions WHERE arrived_at IS NOT NULL AND travel_s IS NOT NULL"
        " AND method IN ('road', 'grid') ORDER BY arrived_at DESC LIMIT %s",
        (limit,),
    )
    return [
        (
            StopEta(delivery, EtaMethod(method), at, travel, service, 0.0, straight, 0.0, 0.0),
            arrived,
        )
        for delivery, method, at, travel, service, straight, arrived in await cur.fetchall()
    ]


async def settled_etas(conn: Conn, since: datetime | None = None) -> list[Settled]:
    """Published ETAs of deliveries that have arrived since."""
    cur = await conn.execute(
        "SELECT predicted_at, lat, lon, p50, p90, arrived_at, method FROM eta_predictions"
        " WHERE arrived_at IS NOT NULL AND (%(s)s::timestamptz IS NULL OR predicted_at >= %(s)s)",
        {"s": since},
    )
    return [Settled(*row) for row in await cur.fetchall()]
