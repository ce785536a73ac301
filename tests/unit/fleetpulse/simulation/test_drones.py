"""Drones take off, climb to their cruise height, cruise, descend and land, and drain
their battery as the tracker's energy model says, swapping it before the reserve."""

from __future__ import annotations

import itertools
import random

import pytest

from fleetpulse.simulation.drones import Drone, DronePhase, DroneSpec, DroneState
from fleetpulse.simulation.geo import bearing_deg, haversine_m
from tests.unit.fleetpulse.simulation.conftest import PORTO_CENTRE
from tracker.drone_energy import DroneTrip

STEP_S = 0.5
FLYING = {DronePhase.CLIMB, DronePhase.CRUISE, DronePhase.DESCENT}


def fly(drone: Drone, seconds: float) -> list[DroneState]:
    states = [drone.state()]
    for _ in range(int(seconds / STEP_S)):
        drone.advance(STEP_S)
        states.append(drone.state())
    return states


def runs(states: list[DroneState]) -> list[tuple[DronePhase, list[DroneState]]]:
    return [(phase, list(group)) for phase, group in itertools.groupby(states, lambda s: s.phase)]


def test_a_sortie_climbs_cruises_descends_and_lands() -> None:
    spec = DroneSpec(cruise_alt_m=60.0, cruise_speed_mps=10.0, radius_m=1_500.0)
    drone = Drone(PORTO_CENTRE, random.Random(1), spec)
    states = fly(drone, 900)
    phases = [phase for phase, _ in runs(states)]
    assert phases[:8] == [
        DronePhase.CLIMB,
        DronePhase.CRUISE,
        DronePhase.DESCENT,
        DronePhase.PARKED,  # the parcel
        DronePhase.CLIMB,
        DronePhase.CRUISE,
        DronePhase.DESCENT,
        DronePhase.PARKED,  # back at the base
    ]
    for phase, run in runs(states):
        alts = [s.rel_alt_m for s in run]
        if phase is DronePhase.CLIMB:
            assert alts == sorted(alts) and alts[0] == pytest.approx(0.0, abs=2.0)
            assert all(s.speed_mps == 0 and s.climb_mps == spec.climb_mps for s in run)
        elif phase is DronePhase.CRUISE:
            assert all(a == pytest.approx(60.0) for a in alts)
            assert all(s.speed_mps == 10.0 and s.climb_mps == 0 for s in run)
        elif phase is DronePhase.DESCENT:
            assert alts == sorted(alts, reverse=True)
            assert all(s.climb_mps == -spec.descent_mps for s in run)
        else:
            assert all(a == 0.0 and s.speed_mps == 0.0 for a, s in zip(alts, run, strict=True))
        if phase is not DronePhase.CRUISE:  # vertical or standing: no horizontal move
            assert haversine_m(run[0].lat, run[0].lon, run[-1].lat, run[-1].lon) < 1e-6
    assert max(s.rel_alt_m for s in states) == pytest.approx(60.0)
    assert all(s.alt_m == pytest.approx(spec.ground_alt_m + s.rel_alt_m) for s in states)


def test_destination_lies_within_the_radius() -> None:
    for seed in range(20):
        drone = Drone(PORTO_CENTRE, random.Random(seed), DroneSpec(radius_m=1_000.0))
        assert drone.destination is not None
        assert 250.0 - 1 <= haversine_m(*PORTO_CENTRE, *drone.destination) <= 1_000.0 + 1


def test_cruise_heading_points_at_the_destination() -> None:
    drone = Drone(PORTO_CENTRE, random.Random(4))
    destination = drone.destination
    assert destination is not None
    cruise = next(run for phase, run in runs(fly(drone, 900)) if phase is DronePhase.CRUISE)
    first, last = cruise[0], cruise[-1]
    assert haversine_m(last.lat, last.lon, *destination) < haversine_m(
        first.lat, first.lon, *destination
    )
    bearing = bearing_deg(*PORTO_CENTRE, *destination)
    assert all(s.heading_deg == pytest.approx(bearing) for s in cruise)


def test_battery_drains_in_flight_as_the_energy_model_says() -> None:
    spec = DroneSpec()
    drone = Drone(PORTO_CENTRE, random.Random(2), spec)
    assert drone.destination is not None
    trip = DroneTrip(
        lat=PORTO_CENTRE[0],
        lon=PORTO_CENTRE[1],
        alt_m=0.0,
        dest_lat=drone.destination[0],
        dest_lon=drone.destination[1],
        dest_alt_m=0.0,
        cruise_alt_m=spec.cruise_alt_m,
        cruise_speed_mps=spec.cruise_speed_mps,
        hover_s=0.0,
    )
    expected = 2 * trip.expected_consumption_pct(spec.model)
    states = fly(drone, trip.duration_s * 2 + spec.drop_s + 1)
    assert states[-1].phase is DronePhase.PARKED  # back at the base
    assert 100.0 - states[-1].battery_pct == pytest.approx(expected, rel=1e-6)
    for phase, run in runs(states):
        levels = [s.battery_pct for s in run]
        if phase in FLYING:
            assert all(b > a for b, a in itertools.pairwise(levels))
        else:
            assert len(set(levels)) == 1  # motors off on the ground


def test_battery_is_swapped_before_the_reserve_is_touched() -> None:
    spec = DroneSpec(radius_m=3_000.0, reserve_pct=25.0)
    drone = Drone(PORTO_CENTRE, random.Random(9), spec)
    states = fly(drone, 4 * 3600)
    landed = [s.battery_pct for s in states if s.phase is DronePhase.PARKED]
    assert min(landed) >= spec.reserve_pct
    phases = runs(states)
    after_swaps = [
        after
        for (phase, _), (_, after) in itertools.pairwise(phases)
        if phase is DronePhase.SWAPPING
    ]
    assert len(after_swaps) >= 2
    assert all(run[0].battery_pct > 99.9 for run in after_swaps)  # a fresh battery, taking off
    assert drone.sorties > 5


def test_a_sortie_out_of_reach_is_shortened() -> None:
    # 20 km out and back is far beyond one battery: the drone flies a shorter one.
    spec = DroneSpec(radius_m=20_000.0)
    drone = Drone(PORTO_CENTRE, random.Random(3), spec)
    assert drone.destination is not None
    assert haversine_m(*PORTO_CENTRE, *drone.destination) < 5_000.0
    states = fly(drone, 3600)
    assert min(s.battery_pct for s in states) >= spec.reserve_pct


def test_spec_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="cruise_speed_mps"):
        DroneSpec(cruise_speed_mps=0.0)
    with pytest.raises(ValueError, match="reserve_pct"):
        DroneSpec(reserve_pct=100.0)
