"""Deliveries followed on their vehicles' fixes: ETAs, state transitions, what to publish.

Only the newest fix of a vehicle drives its deliveries (a late fix says nothing about
where the vehicle is now). The rows in PostgreSQL are the truth: `load` takes what
dispatch changed, and keeps what the tracker knows that the row does not (how long the
vehicle has been inside the drop zone) when nothing that matters changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from tracker.deliveries import Delivery, DeliveryMachine, DeliveryState, Eta, EtaThrottle, next_stop
from tracker.events import Event
from tracker.positions import Fix


class EtaSource(Protocol):
    """ETAs of a vehicle's remaining stops (in serving order) from its current fix, by
    delivery id, with any alert they raise; told when a delivery's vehicle arrives."""

    def __call__(self, fix: Fix, stops: list[Delivery]) -> tuple[dict[str, Eta], list[Event]]: ...

    def arrived(self, delivery_id: str, fix: Fix) -> None: ...


@dataclass(frozen=True)
class StateChange:
    delivery: Delivery
    was: DeliveryState
    at: datetime


@dataclass(frozen=True)
class EtaUpdate:
    delivery: Delivery
    fix: Fix
    eta: Eta


@dataclass
class DeliveryTracking:
    machine: DeliveryMachine
    eta_source: EtaSource | None = None
    throttle: EtaThrottle = field(default_factory=EtaThrottle)
    by_vehicle: dict[str, dict[str, Delivery]] = field(default_factory=dict)
    # Which vehicle holds each delivery: the tracker reloads every delivery changed in
    # the last seconds into every partition, each second; a search through all vehicles
    # per delivery took 30-50 ms of its loop with 1,000 deliveries.
    vehicle_of: dict[str, str] = field(default_factory=dict)

    def load(self, deliveries: Iterable[Delivery]) -> set[str]:
        """Take the stored rows; returns the vehicles whose deliveries changed."""
        touched: set[str] = set()
        for fresh in deliveries:
            if self.vehicle_of.get(fresh.id, fresh.vehicle_id) != fresh.vehicle_id:
                self._forget(fresh.id)  # reassigned away
            own = self.by_vehicle.setdefault(fresh.vehicle_id, {})
            held = own.get(fresh.id)
            if not fresh.active:
                if self._forget(fresh.id):
                    touched.add(fresh.vehicle_id)
                self.throttle.forget(fresh.id)
            elif held is None or _differs(held, fresh):
                own[fresh.id] = fresh
                self.vehicle_of[fresh.id] = fresh.vehicle_id
                touched.add(fresh.vehicle_id)
                self.throttle.forget(fresh.id)  # its next ETA is news
        return touched

    def drop(self, delivery_ids: Iterable[str]) -> None:
        """Forget deliveries now served by vehicles another partition owns."""
        for delivery_id in delivery_ids:
            self._forget(delivery_id)

    def _forget(self, delivery_id: str) -> bool:
        vehicle = self.vehicle_of.pop(delivery_id, None)
        if vehicle is None:
            return False
        own = self.by_vehicle.get(vehicle, {})
        own.pop(delivery_id, None)
        if not own:
            self.by_vehicle.pop(vehicle, None)
        return True

    def on_fix(self, fix: Fix) -> tuple[list[Event], list[StateChange], list[EtaUpdate]]:
        own = self.by_vehicle.get(fix.device_id)
        if not own:
            return [], [], []
        stops = sorted(own.values(), key=lambda d: (d.sequence, d.window_end, d.id))
        etas: dict[str, Eta] = {}
        events: list[Event] = []
        if self.eta_source is not None:
            etas, alerts = self.eta_source(fix, stops)
            events.extend(alerts)
        first = next_stop(stops)
        changes: list[StateChange] = []
        updates: list[EtaUpdate] = []
        for delivery in stops:
            was, was_late = delivery.state, delivery.late_risk
            eta = etas.get(delivery.id)
            events.extend(self.machine.on_fix(delivery, fix, eta, delivery is first))
            if delivery.state is not was or delivery.late_risk is not was_late:
                changes.append(StateChange(delivery, was, fix.ts))
                if delivery.state is DeliveryState.ARRIVED and self.eta_source is not None:
                    self.eta_source.arrived(delivery.id, fix)
            if eta is not None and self.throttle.should_publish(
                delivery.id, fix.received_at, eta.p50
            ):
                updates.append(EtaUpdate(delivery, fix, eta))
        return events, changes, updates


def _facts(delivery: Delivery) -> tuple[object, ...]:
    return (
        delivery.state,
        delivery.late_risk,
        delivery.vehicle_id,
        delivery.dest_lat,
        delivery.dest_lon,
        delivery.drop_radius_m,
        delivery.window_start,
        delivery.window_end,
        delivery.sequence,
        delivery.service_s,
    )


def _differs(held: Delivery, fresh: Delivery) -> bool:
    """Whether the stored row says something the tracker's copy does not know."""
    return _facts(held) != _facts(fresh)
