"""ETAs for a vehicle's stops: vans through the estimator, drones by flight and battery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from tracker.deliveries import Delivery, DeliveryState
from tracker.eta import DetourModel, EtaEstimator
from tracker.events import EventKind
from tracker.fleet_etas import DRONE_P90_FACTOR, DroneRules, FleetEtas
from tracker.positions import DeviceKind, Fix
from tracker.roads import KMH, RoadClass, RoadGraph, Way
from tracker.routing import Router
from tracker.speed_profiles import SpeedProfile

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def etas() -> FleetEtas:
    estimator = EtaEstimator(SpeedProfile(), DetourModel(), ZoneInfo("Europe/Lisbon"))
    return FleetEtas(estimator, DroneRules(cruise_speed_mps=10, cruise_alt_m=60, reserve_pct=20))


def stop(delivery_id: str, north_km: float, sequence: int, service_s: float = 120) -> Delivery:
    return Delivery(
        id=delivery_id,
        vehicle_id="v",
        dest_lat=41.15 + north_km / 111.195,
        dest_lon=-8.61,
        window_start=T0,
        window_end=T0 + timedelta(hours=2),
        sequence=sequence,
        service_s=service_s,
    )


def fix(kind: DeviceKind, battery: float | None = None) -> Fix:
    return Fix("v", T0, 41.15, -8.61, T0, kind=kind, battery=battery, rel_alt=0.0)


def test_a_vans_later_stops_include_the_earlier_service_times() -> None:
    source = etas()
    first, second = stop("a", 2, 1), stop("b", 4, 2, service_s=60)
    found, alerts = source(fix(DeviceKind.VEHICLE), [first, second])
    assert alerts == []
    assert set(found) == {"a", "b"}
    assert T0 < found["a"].p50 <= found["a"].p90
    gap = (found["b"].p50 - found["a"].p50).total_seconds()
    assert gap > first.service_s, "the second stop waits for the first one's service"
    assert found["a"].method == "grid"


def test_a_moving_vans_heading_reaches_the_road_graph() -> None:
    # A street east from the van's position and on 1 km; the van is 40 m east of its
    # first node, so heading east the route starts at the node ahead.
    a, b, c = (1, 41.15, -8.6105), (2, 41.15, -8.6089), (3, 41.15, -8.5985)
    graph = RoadGraph.from_ways([Way([a, b, c], RoadClass.PRIMARY, 36 * KMH)])
    zone = ZoneInfo("Europe/Lisbon")
    router = Router(graph, None, zone)
    source = FleetEtas(EtaEstimator(SpeedProfile(), DetourModel(), zone, router=router))
    end = msgspec.structs.replace(stop("a", 0, 1), dest_lat=c[1], dest_lon=c[2])
    van = Fix("v", T0, 41.15, -8.61, T0, speed=8.0, heading=90.0, kind=DeviceKind.VEHICLE)
    parked = Fix("v", T0, 41.15, -8.61, T0, speed=0.5, heading=90.0, kind=DeviceKind.VEHICLE)
    moving = source(van, [end])[0]["a"]
    standing = source(parked, [end])[0]["a"]
    assert moving.method == standing.method == "road"
    ahead = router.route((41.15, -8.61), c[1:], T0, heading_deg=90.0)
    nearest = router.route((41.15, -8.61), c[1:], T0)
    assert ahead is not None and nearest is not None and ahead.seconds < nearest.seconds
    assert moving.travel_s == pytest.approx(ahead.seconds)
    assert standing.travel_s == pytest.approx(nearest.seconds)


def test_finished_deliveries_get_no_eta() -> None:
    done = stop("a", 2, 1)
    done.state = DeliveryState.DELIVERED
    assert etas()(fix(DeviceKind.VEHICLE), [done]) == ({}, [])


def test_a_drone_flies_each_leg_and_its_p90_is_stretched() -> None:
    found, _ = etas()(fix(DeviceKind.DRONE), [stop("a", 3, 1)])
    flight = (found["a"].p50 - T0).total_seconds()
    assert 300 < flight < 420, "3 km at 10 m/s, plus climb, descent and hover"
    assert (found["a"].p90 - T0).total_seconds() == pytest.approx(
        flight * DRONE_P90_FACTOR, abs=1e-3
    )
    assert found["a"].method == "drone"


def test_battery_alert_is_raised_once_and_cleared() -> None:
    source = etas()
    far = [stop("a", 20, 1)]
    _, raised = source(fix(DeviceKind.DRONE, battery=30), far)
    assert [e.kind for e in raised] == [EventKind.BATTERY_INFEASIBLE]
    assert raised[0].delivery_id == "a"
    assert source(fix(DeviceKind.DRONE, battery=30), far)[1] == [], "raised once"
    _, cleared = source(fix(DeviceKind.DRONE, battery=100), [stop("a", 1, 1)])
    assert [e.kind for e in cleared] == [EventKind.BATTERY_INFEASIBLE_CLEARED]


def test_no_battery_reading_no_alert() -> None:
    assert etas()(fix(DeviceKind.DRONE, battery=None), [stop("a", 50, 1)])[1] == []
