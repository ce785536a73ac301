"""Delivery drones flying sorties from a base. Pure: a drone is advanced by seconds.

A sortie flies the profile the tracker plans with (`tracker.drone_energy.DroneTrip`, as
the DJI waypoint missions in the shared logs fly): take off and climb vertically to the
cruise height, cruise in a straight line, descend vertically and land at the drop point,
stay on the ground while the parcel is released, and fly back the same way. The battery
drains at the rate the tracker's energy model predicts for each phase, so a simulated
fleet and the tracker's feasibility check agree; before a sortie the drone lands its
battery swap when the round trip would eat into the reserve.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from dataclasses import dataclass

from fleetpulse.simulation.geo import bearing_deg, interpolate, offset
from tracker.drone_energy import (
    DEFAULT_CLIMB_MPS,
    DEFAULT_DESCENT_MPS,
    DEFAULT_MODEL,
    DroneEnergyModel,
    DroneTrip,
    FlightPhase,
)

# A plausible ground elevation for a city (metres above mean sea level); terrain is not
# modelled: the drone takes off and lands at this height everywhere.
GROUND_ALT_AMSL_M = 80.0
SORTIE_RADIUS_M = 2_000.0
MIN_SORTIE_FRACTION = 0.25  # destinations lie between a quarter of the radius and all of it
DROP_S = 30.0  # on the ground at the destination
TURNAROUND_S = 30.0  # on the ground at the base between sorties
SWAP_S = 120.0  # a battery swap at the base
FULL_PCT = 100.0
_SHRINK = 0.5  # a sortie out of reach even on a full battery is flown at half the distance
_EPSILON_S = 1e-9


class DronePhase(enum.StrEnum):
    PARKED = "parked"  # on the ground, motors off: dropping a parcel, turning around
    SWAPPING = "swapping"  # on the ground at the base, battery being replaced
    CLIMB = "climb"  # take-off: vertical, from the ground to the cruise height
    CRUISE = "cruise"
    DESCENT = "descent"  # vertical, down to the landing


@dataclass(frozen=True)
class DroneSpec:
    cruise_alt_m: float = 60.0  # above the take-off point
    cruise_speed_mps: float = 10.0
    climb_mps: float = DEFAULT_CLIMB_MPS
    descent_mps: float = DEFAULT_DESCENT_MPS
    radius_m: float = SORTIE_RADIUS_M
    reserve_pct: float = 20.0
    ground_alt_m: float = GROUND_ALT_AMSL_M
    drop_s: float = DROP_S
    turnaround_s: float = TURNAROUND_S
    swap_s: float = SWAP_S
    model: DroneEnergyModel = DEFAULT_MODEL

    def __post_init__(self) -> None:
        for name in ("cruise_alt_m", "cruise_speed_mps", "climb_mps", "descent_mps", "radius_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.reserve_pct < FULL_PCT:
            raise ValueError(f"reserve_pct must be within [0, 100), got {self.reserve_pct}")


@dataclass(frozen=True)
class DroneState:
    lat: float
    lon: float
    rel_alt_m: float  # above the take-off point
    alt_m: float  # above mean sea level
    speed_mps: float  # horizontal
    climb_mps: float  # vertical, up-positive
    heading_deg: float
    battery_pct: float
    phase: DronePhase


@dataclass(frozen=True)
class _Segment:
    phase: DronePhase
    duration_s: float
    start: tuple[float, float]
    end: tuple[float, float]
    rel_alt: tuple[float, float]
    speed_mps: float
    climb_mps: float
    drain_pct_s: float


class Drone:
    def __init__(
        self, base: tuple[float, float], rng: random.Random, spec: DroneSpec | None = None
    ) -> None:
        self.base = base
        self.spec = spec or DroneSpec()
        self._rng = rng
        self.battery_pct = FULL_PCT
        self.clock_s = 0.0
        self.sorties = 0
        self.destination: tuple[float, float] | None = None
        self._heading = 0.0
        self._segments: deque[_Segment] = deque()
        self._elapsed_s = 0.0  # into the first segment
        self._plan_sortie()
        self._face_next_cruise()

    def state(self) -> DroneState:
        segment = self._segments[0]
        f = self._elapsed_s / segment.duration_s if segment.duration_s > 0 else 1.0
        lat, lon = interpolate(*segment.start, *segment.end, f)
        rel = segment.rel_alt[0] + (segment.rel_alt[1] - segment.rel_alt[0]) * f
        return DroneState(
            lat=lat,
            lon=lon,
            rel_alt_m=rel,
            alt_m=self.spec.ground_alt_m + rel,
            speed_mps=segment.speed_mps,
            climb_mps=segment.climb_mps,
            heading_deg=self._heading,
            battery_pct=self.battery_pct,
            phase=segment.phase,
        )

    def advance(self, dt_s: float) -> None:
        while dt_s > _EPSILON_S:
            segment = self._segments[0]
            used = min(dt_s, segment.duration_s - self._elapsed_s)
            self.battery_pct = max(0.0, self.battery_pct - segment.drain_pct_s * used)
            self._elapsed_s += used
            self.clock_s += used
            dt_s -= used
            if self._elapsed_s >= segment.duration_s - _EPSILON_S:
                self._segments.popleft()
                self._elapsed_s = 0.0
                if segment.phase is DronePhase.SWAPPING:
                    self.battery_pct = FULL_PCT
                if not self._segments:
                    self._plan_sortie()
                self._face_next_cruise()

    def _face_next_cruise(self) -> None:
        # A multirotor yaws towards its target while it climbs; on the ground and while
        # descending it keeps the heading it had.
        if self._segments[0].phase in (DronePhase.CLIMB, DronePhase.CRUISE):
            cruise = next((s for s in self._segments if s.phase is DronePhase.CRUISE), None)
            if cruise is not None and cruise.start != cruise.end:
                self._heading = bearing_deg(*cruise.start, *cruise.end)

    def _plan_sortie(self) -> None:
        spec = self.spec
        distance = self._rng.uniform(MIN_SORTIE_FRACTION, 1.0) * spec.radius_m
        bearing = math.radians(self._rng.uniform(0.0, 360.0))
        battery = self.battery_pct
        while True:
            north, east = distance * math.cos(bearing), distance * math.sin(bearing)
            dest = offset(*self.base, north, east)
            out = self._trip(self.base, dest)
            needed = 2 * out.expected_consumption_pct(spec.model)
            if battery - spec.reserve_pct >= needed:
                break
            if battery < FULL_PCT:
                self._ground(DronePhase.SWAPPING, self.base, spec.swap_s)
                battery = FULL_PCT
                continue
            distance *= _SHRINK
        self.sorties += 1
        self.destination = dest
        self._fly(out)
        self._ground(DronePhase.PARKED, dest, spec.drop_s)
        self._fly(self._trip(dest, self.base))
        self._ground(DronePhase.PARKED, self.base, spec.turnaround_s)

    def _trip(self, start: tuple[float, float], end: tuple[float, float]) -> DroneTrip:
        spec = self.spec
        return DroneTrip(
            lat=start[0],
            lon=start[1],
            alt_m=0.0,
            dest_lat=end[0],
            dest_lon=end[1],
            dest_alt_m=0.0,
            cruise_alt_m=spec.cruise_alt_m,
            cruise_speed_mps=spec.cruise_speed_mps,
            climb_mps=spec.climb_mps,
            descent_mps=spec.descent_mps,
            hover_s=0.0,
        )

    def _fly(self, trip: DroneTrip) -> None:
        start, end = (trip.lat, trip.lon), (trip.dest_lat, trip.dest_lon)
        level = trip.cruise_level_m
        model = self.spec.model
        where = {
            FlightPhase.CLIMB: (start, start, (0.0, level), DronePhase.CLIMB),
            FlightPhase.CRUISE: (start, end, (level, level), DronePhase.CRUISE),
            FlightPhase.DESCENT: (end, end, (level, 0.0), DronePhase.DESCENT),
        }
        for phase in trip.phases():
            if phase.kind not in where or phase.duration_s <= 0:
                continue  # no hover: the drone lands to drop its parcel
            a, b, alt, kind = where[phase.kind]
            drain = model.rate_pct_s(phase.speed_mps, phase.climb_mps)
            self._segments.append(
                _Segment(kind, phase.duration_s, a, b, alt, phase.speed_mps, phase.climb_mps, drain)
            )

    def _ground(self, phase: DronePhase, at: tuple[float, float], seconds: float) -> None:
        self._segments.append(_Segment(phase, seconds, at, at, (0.0, 0.0), 0.0, 0.0, 0.0))
