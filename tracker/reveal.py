"""What a customer sees of their delivery. Pure.

In the spirit of Fleet Engine's consumer view: the customer always sees the state, the
window, the ETA (P50-P90) and the late-risk flag; the vehicle's exact position only once
it is close (P50 ETA under a threshold, or few enough stops before theirs); before that,
only a coarse H3 cell the vehicle is in. Never another stop's id, address or ETA: the
count of stops before theirs is all they learn of the others. Once the delivery is
final, no position at all: the vehicle has moved on to other people's doorsteps.

Coordinates in shapes are GeoJSON-ordered `[lon, lat]`, as everywhere on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import h3
import msgspec

from tracker.deliveries import Delivery, DeliveryState
from tracker.live import LiveDevice
from tracker.shapes import Circle, MultiPolygon, Polygon

Coordinates = list[tuple[float, float]]  # a ring of [lon, lat]


@dataclass(frozen=True)
class RevealRules:
    eta: timedelta  # the exact position shows once the P50 ETA is below this ...
    stops: int  # ... or once at most this many stops remain before this one
    coarse_res: int  # H3 resolution of the area shown before that


@dataclass(frozen=True)
class EtaFacts:
    """The delivery's latest ETA, as the tracker published or stored it."""

    p50: datetime
    p90: datetime
    computed_at: datetime


class TrackWindow(msgspec.Struct, frozen=True):
    start: datetime
    end: datetime


class TrackEta(msgspec.Struct, frozen=True):
    p50: datetime
    p90: datetime
    computed_at: datetime


class TrackDestination(msgspec.Struct, frozen=True):
    """The customer's own drop point: a circle, or polygons (GeoJSON MultiPolygon
    coordinates) when the drop zone was drawn."""

    lat: float
    lon: float
    radius_m: float | None
    zone: list[list[Coordinates]] | None


class TrackPosition(msgspec.Struct, frozen=True):
    lat: float
    lon: float
    ts: datetime  # the fix time
    speed: float | None
    heading: float | None


class TrackArea(msgspec.Struct, frozen=True):
    """Where the vehicle is, no finer than an H3 cell of a coarse resolution."""

    cell: str  # H3 index in hex: 64-bit integers do not survive JavaScript
    resolution: int
    boundary: Coordinates  # closed ring


class TrackView(msgspec.Struct, frozen=True):
    """GET /api/v1/track/{token}, and the `delivery` of a `track` websocket message."""

    delivery_id: str
    state: DeliveryState
    late_risk: bool
    window: TrackWindow
    timezone: str  # the fleet's IANA zone, for showing times the way the window was agreed
    eta: TrackEta | None  # None once arrived or final, or before the first estimate
    stops_before: int | None  # active stops the vehicle serves first; None once final
    destination: TrackDestination
    revealed: bool  # whether the exact position is shown (when known)
    position: TrackPosition | None
    area: TrackArea | None  # the coarse cell while not revealed


def is_revealed(
    delivery: Delivery,
    eta: EtaFacts | None,
    stops_before: int,
    rules: RevealRules,
    now: datetime,
) -> bool:
    if not delivery.active:
        return False
    if delivery.state is DeliveryState.ARRIVED or stops_before <= rules.stops:
        return True
    return eta is not None and eta.p50 - now < rules.eta


def customer_view(
    delivery: Delivery,
    eta: EtaFacts | None,
    vehicle: LiveDevice | None,
    stops_before: int,
    rules: RevealRules,
    now: datetime,
    timezone: str,
) -> TrackView:
    """What the customer of `delivery` sees at `now`. `vehicle` is the live state of the
    delivery's own vehicle (the caller's duty), `eta` the latest ETA for it."""
    active = delivery.active
    shows_eta = active and delivery.state is not DeliveryState.ARRIVED and eta is not None
    revealed = is_revealed(delivery, eta, stops_before, rules, now)
    position = area = None
    if active and vehicle is not None:
        if revealed:
            position = TrackPosition(
                vehicle.lat, vehicle.lon, vehicle.ts, vehicle.speed, vehicle.heading
            )
        else:
            area = coarse_area(vehicle.lat, vehicle.lon, rules.coarse_res)
    return TrackView(
        delivery_id=delivery.id,
        state=delivery.state,
        late_risk=delivery.late_risk and active,
        window=TrackWindow(delivery.window_start, delivery.window_end),
        timezone=timezone,
        eta=TrackEta(eta.p50, eta.p90, eta.computed_at) if shows_eta and eta else None,
        stops_before=max(stops_before, 0) if active else None,
        destination=destination(delivery),
        revealed=revealed,
        position=position,
        area=area,
    )


def coarse_area(lat: float, lon: float, resolution: int) -> TrackArea:
    cell: str = h3.latlng_to_cell(lat, lon, resolution)
    ring = [(float(lng), float(la)) for la, lng in h3.cell_to_boundary(cell)]
    ring.append(ring[0])
    return TrackArea(cell, resolution, ring)


def destination(delivery: Delivery) -> TrackDestination:
    zone = delivery.zone
    if isinstance(zone, Circle):
        return TrackDestination(zone.lat, zone.lon, zone.radius_m, None)
    if isinstance(zone, Polygon | MultiPolygon):
        polygons = zone.polygons if isinstance(zone, MultiPolygon) else (zone,)
        rings = [[list(p.exterior), *(list(h) for h in p.holes)] for p in polygons]
        return TrackDestination(delivery.dest_lat, delivery.dest_lon, None, rings)
    return TrackDestination(delivery.dest_lat, delivery.dest_lon, delivery.drop_radius_m, None)
