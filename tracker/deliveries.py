"""Deliveries and their state machine, driven by fixes and ETAs. Pure.

    scheduled ─▶ en_route ─▶ approaching ─▶ arrived ─▶ delivered
        │            │            │            └──────▶ failed
        └────────────┴────────────┴──▶ delivered / failed (reported), cancelled (changed)

- en_route: the delivery is its vehicle's next stop and the vehicle reports a fix;
- approaching: the P50 ETA or the distance to the drop zone falls under a threshold;
- arrived: the vehicle stayed inside the drop zone for the arrival dwell, by fix time;
- delivered / failed: reported by the driver or the API; cancelled: by dispatch.
`late_risk` is raised once when the P50 ETA passes the window's end and cleared once
when it comes back. Every transition is an event with a deterministic id.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from tracker.events import Event, EventKind
from tracker.live import haversine_m
from tracker.positions import Fix
from tracker.shapes import Circle, MultiPolygon, Polygon


class DeliveryState(enum.StrEnum):
    SCHEDULED = "scheduled"
    EN_ROUTE = "en_route"
    APPROACHING = "approaching"
    ARRIVED = "arrived"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.CANCELLED})
_STATE_EVENT = {
    DeliveryState.EN_ROUTE: EventKind.EN_ROUTE,
    DeliveryState.APPROACHING: EventKind.APPROACHING,
    DeliveryState.ARRIVED: EventKind.ARRIVED,
    DeliveryState.DELIVERED: EventKind.DELIVERED,
    DeliveryState.FAILED: EventKind.FAILED,
    DeliveryState.CANCELLED: EventKind.CANCELLED,
}


class ServiceType(enum.StrEnum):
    STANDARD = "standard"
    SAME_DAY = "same_day"
    ON_DEMAND = "on_demand"


DropZone = Circle | Polygon | MultiPolygon


@dataclass(frozen=True)
class DeliveryRules:
    approach_eta_s: float = 300.0
    approach_distance_m: float = 1_000.0
    arrival_dwell_s: float = 30.0


@dataclass(frozen=True)
class Eta:
    """Predicted arrival at the drop zone: median and 90th percentile."""

    p50: datetime
    p90: datetime
    computed_at: datetime
    method: str = "grid"  # how it was estimated: road graph, H3 grid, drone flight
    # The raw model figures behind a road or grid estimate (None for drones): stored, so
    # that arrivals can teach the residuals again after a restart.
    travel_s: float | None = None
    service_s: float | None = None
    straight_m: float | None = None


class Delivery(msgspec.Struct, kw_only=True):
    """One parcel for one stop. `sequence` orders a vehicle's remaining stops."""

    id: str
    vehicle_id: str
    dest_lat: float
    dest_lon: float
    drop_radius_m: float = 50.0
    zone: DropZone | None = None  # a polygon drop zone instead of the radius
    window_start: datetime
    window_end: datetime
    service_type: ServiceType = ServiceType.STANDARD
    sequence: int = 0
    service_s: float = 120.0
    state: DeliveryState = DeliveryState.SCHEDULED
    late_risk: bool = False
    inside_since: datetime | None = None

    @property
    def active(self) -> bool:
        return self.state not in FINAL_STATES

    def in_drop_zone(self, lat: float, lon: float) -> bool:
        if self.zone is not None:
            return self.zone.contains(lat, lon)
        return haversine_m(lat, lon, self.dest_lat, self.dest_lon) <= self.drop_radius_m


def next_stop(deliveries: list[Delivery]) -> Delivery | None:
    """The active delivery a vehicle serves next: lowest sequence, then earliest window."""
    active = [d for d in deliveries if d.active]
    return min(active, key=lambda d: (d.sequence, d.window_end, d.id), default=None)


class DeliveryMachine:
    def __init__(self, rules: DeliveryRules | None = None) -> None:
        self.rules = rules or DeliveryRules()

    def on_fix(self, delivery: Delivery, fix: Fix, eta: Eta | None, is_next: bool) -> list[Event]:
        """Advance one active delivery of the fix's vehicle; `eta` is its latest ETA."""
        if not delivery.active or fix.device_id != delivery.vehicle_id:
            return []
        events = self._late_risk(delivery, fix, eta)
        state = delivery.state
        if state is DeliveryState.SCHEDULED and is_next:
            events.append(self._move(delivery, DeliveryState.EN_ROUTE, fix))
            state = delivery.state
        if state is DeliveryState.EN_ROUTE and self._close(delivery, fix, eta):
            events.append(self._move(delivery, DeliveryState.APPROACHING, fix))
            state = delivery.state
        if state in (DeliveryState.EN_ROUTE, DeliveryState.APPROACHING):
            events.extend(self._arrival(delivery, fix))
        return events

    def report(
        self, delivery: Delivery, outcome: DeliveryState, at: datetime, detail: str = ""
    ) -> list[Event]:
        """Delivered or failed as the driver or the API reports it; cancelled by dispatch."""
        if outcome not in FINAL_STATES:
            raise ValueError(f"a report is delivered, failed or cancelled, not {outcome}")
        if not delivery.active:
            return []
        delivery.state = outcome
        return [self._event(delivery, _STATE_EVENT[outcome], at, None, None, detail)]

    def reassigned(self, delivery: Delivery) -> None:
        """A new vehicle (or a new destination): the approach starts again."""
        if delivery.active:
            delivery.state = DeliveryState.SCHEDULED
            delivery.inside_since = None

    def _close(self, delivery: Delivery, fix: Fix, eta: Eta | None) -> bool:
        distance = haversine_m(fix.lat, fix.lon, delivery.dest_lat, delivery.dest_lon)
        if distance <= self.rules.approach_distance_m:
            return True
        if eta is None:
            return False
        return (eta.p50 - fix.ts).total_seconds() <= self.rules.approach_eta_s

    def _arrival(self, delivery: Delivery, fix: Fix) -> list[Event]:
        if not delivery.in_drop_zone(fix.lat, fix.lon):
            delivery.inside_since = None
            return []
        if delivery.inside_since is None or fix.ts < delivery.inside_since:
            delivery.inside_since = fix.ts
        stayed = fix.ts - delivery.inside_since
        if stayed < timedelta(seconds=self.rules.arrival_dwell_s):
            return []
        events = []
        if delivery.state is DeliveryState.EN_ROUTE:  # too quick to be seen approaching
            events.append(self._move(delivery, DeliveryState.APPROACHING, fix))
        events.append(self._move(delivery, DeliveryState.ARRIVED, fix))
        return events

    def _late_risk(self, delivery: Delivery, fix: Fix, eta: Eta | None) -> list[Event]:
        if eta is None or delivery.state is DeliveryState.ARRIVED:
            return []
        late = eta.p50 > delivery.window_end
        if late == delivery.late_risk:
            return []
        delivery.late_risk = late
        kind = EventKind.LATE_RISK if late else EventKind.LATE_RISK_CLEARED
        minutes = (eta.p50 - delivery.window_end).total_seconds() / 60
        detail = f"P50 ETA {eta.p50.isoformat()} is {minutes:+.1f} min from the window's end"
        return [self._event(delivery, kind, fix.ts, fix.lat, fix.lon, detail)]

    def _move(self, delivery: Delivery, state: DeliveryState, fix: Fix) -> Event:
        delivery.state = state
        return self._event(delivery, _STATE_EVENT[state], fix.ts, fix.lat, fix.lon, "")

    @staticmethod
    def _event(
        delivery: Delivery,
        kind: EventKind,
        at: datetime,
        lat: float | None,
        lon: float | None,
        detail: str,
    ) -> Event:
        return Event(
            delivery.vehicle_id,
            kind,
            at,
            lat=lat,
            lon=lon,
            detail=detail,
            delivery_id=delivery.id,
        )


@dataclass
class EtaThrottle:
    """Publish an ETA when its arrival time moved by ≥ 30 s or by ≥ 10 % of the time left,
    at most once per delivery per few seconds: customers need the news, not each fix's
    jitter."""

    min_shift_s: float = 30.0
    min_shift_ratio: float = 0.10
    min_interval_s: float = 5.0

    def __post_init__(self) -> None:
        self._last: dict[str, tuple[datetime, datetime]] = {}

    def should_publish(self, delivery_id: str, now: datetime, arrival: datetime) -> bool:
        last = self._last.get(delivery_id)
        if last is not None:
            published_at, published_arrival = last
            if (now - published_at).total_seconds() < self.min_interval_s:
                return False
            shift = abs((arrival - published_arrival).total_seconds())
            remaining = max((arrival - now).total_seconds(), 1.0)
            if shift < self.min_shift_s and shift / remaining < self.min_shift_ratio:
                return False
        self._last[delivery_id] = (now, arrival)
        return True

    def forget(self, delivery_id: str) -> None:
        self._last.pop(delivery_id, None)
