"""ETAs for every remaining stop of a vehicle or drone, as the delivery tracking needs
them. Pure.

Vans and phones: the `EtaEstimator` (road graph when configured, else the H3 grid; the
fix's heading, when it reports one while moving, starts the route ahead of the vehicle),
with the residuals of earlier deliveries setting P50 and P90. Drones: a flight per leg
(climb, cruise, descent, hover) and a battery check over the whole remaining round of
stops, raising `battery_infeasible` once per delivery and clearing it when it recovers.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import timedelta

from tracker.deliveries import Delivery, Eta
from tracker.drone_energy import DroneTrip, feasibility
from tracker.eta import EtaEstimator, Stop, StopEta
from tracker.events import Event, EventKind
from tracker.positions import DeviceKind, Fix

ETAS_KEPT_PER_DELIVERY = 20  # settled against the arrival to teach the residuals
# A heading reported below this speed is noise (a parked vehicle's compass).
MIN_HEADING_SPEED_MPS = 2.0
# No residuals yet for drones: their P90 is the flight time stretched by this (wind, queues).
DRONE_P90_FACTOR = 1.25


@dataclass(frozen=True)
class DroneRules:
    cruise_speed_mps: float = 10.0
    cruise_alt_m: float = 60.0
    reserve_pct: float = 20.0


@dataclass
class FleetEtas:
    estimator: EtaEstimator
    drones: DroneRules = field(default_factory=DroneRules)
    _given: dict[str, collections.deque[StopEta]] = field(default_factory=dict)
    _infeasible: set[str] = field(default_factory=set)

    def __call__(self, fix: Fix, stops: list[Delivery]) -> tuple[dict[str, Eta], list[Event]]:
        active = [d for d in stops if d.active]
        if not active:
            return {}, []
        if fix.kind is DeviceKind.DRONE:
            return self._flight(fix, active)
        moving = fix.speed is not None and fix.speed >= MIN_HEADING_SPEED_MPS
        results = self.estimator.estimate(
            fix.lat,
            fix.lon,
            fix.ts,
            [Stop(d.id, d.dest_lat, d.dest_lon, d.service_s) for d in active],
            fix.heading if moving else None,
        )
        etas = {}
        for result in results:
            kept = self._given.setdefault(
                result.stop_id, collections.deque(maxlen=ETAS_KEPT_PER_DELIVERY)
            )
            kept.append(result)
            etas[result.stop_id] = Eta(
                result.arrival_p50,
                result.arrival_p90,
                fix.ts,
                result.method.value,
                travel_s=result.travel_s,
                service_s=result.service_s,
                straight_m=result.straight_m,
            )
        return etas, []

    def arrived(self, delivery_id: str, fix: Fix) -> None:
        """The vehicle is there: what each kept ETA predicted becomes a residual."""
        for given in self._given.pop(delivery_id, ()):
            self.estimator.record_arrival(given, fix.ts)
        self._infeasible.discard(delivery_id)

    def _flight(self, fix: Fix, stops: list[Delivery]) -> tuple[dict[str, Eta], list[Event]]:
        rules = self.drones
        lat, lon, alt = fix.lat, fix.lon, fix.rel_alt or 0.0
        seconds = used = 0.0
        etas: dict[str, Eta] = {}
        events: list[Event] = []
        for stop in stops:
            trip = DroneTrip(
                lat=lat,
                lon=lon,
                alt_m=alt,
                dest_lat=stop.dest_lat,
                dest_lon=stop.dest_lon,
                dest_alt_m=0.0,
                cruise_alt_m=max(rules.cruise_alt_m, alt),
                cruise_speed_mps=rules.cruise_speed_mps,
            )
            flight = trip.duration_s
            etas[stop.id] = Eta(
                fix.ts + timedelta(seconds=seconds + flight),
                fix.ts + timedelta(seconds=seconds + flight * DRONE_P90_FACTOR),
                fix.ts,
                "drone",
            )
            if fix.battery is not None:
                check = feasibility(trip, fix.battery - used, rules.reserve_pct)
                events.extend(self._battery_alert(fix, stop, check.feasible, check.detail))
                used += check.expected_pct
            seconds += flight + stop.service_s
            lat, lon, alt = stop.dest_lat, stop.dest_lon, 0.0
        return etas, events

    def _battery_alert(self, fix: Fix, stop: Delivery, feasible: bool, detail: str) -> list[Event]:
        if feasible == (stop.id not in self._infeasible):
            return []
        if feasible:
            self._infeasible.discard(stop.id)
            kind = EventKind.BATTERY_INFEASIBLE_CLEARED
        else:
            self._infeasible.add(stop.id)
            kind = EventKind.BATTERY_INFEASIBLE
        return [
            Event(
                fix.device_id,
                kind,
                fix.ts,
                lat=fix.lat,
                lon=fix.lon,
                alt=fix.alt,
                detail=detail,
                delivery_id=stop.id,
            )
        ]
