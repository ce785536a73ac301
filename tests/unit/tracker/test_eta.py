"""ETAs: the grid estimate (learned detour factors, traversal speed of the cells on the
way), the road graph when configured, service times of earlier stops, and P50/P90 from
the residuals recorded on arrival (the fitting itself: test_eta_residuals.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import h3.api.basic_int as h3
import pytest

from tracker.eta import (
    DEFAULT_DETOUR,
    DETOUR_AREA_RES,
    DetourModel,
    DetourRow,
    EtaEstimator,
    EtaMethod,
    Stop,
    detour_rows,
    distance_band,
)
from tracker.eta_residuals import PRIOR_P90_RATIO, Residuals
from tracker.live import haversine_m
from tracker.positions import Fix
from tracker.roads import KMH, RoadClass, RoadGraph, Way
from tracker.routing import Router
from tracker.speed_profiles import PROFILE_RES, ProfileRow, SpeedProfile, cells_between

UTC_ZONE = ZoneInfo("UTC")
AT = datetime(2013, 7, 1, 4, 0, tzinfo=UTC)  # Monday, hour of week 4 in UTC
HERE = (41.150, -8.610)
THERE = (41.150, -8.595)  # ~1.26 km east: distance band 2
M_PER_DEG = 111_195.0


def offset(point: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat, lon = point
    return lat + north_m / M_PER_DEG, lon + east_m / (M_PER_DEG * math.cos(math.radians(lat)))


def detours(factor: float, *points: tuple[float, float], band: int = 2) -> DetourModel:
    rows = [
        DetourRow(h3.latlng_to_cell(*p, DETOUR_AREA_RES), band, 30 * math.log(factor), 30)
        for p in points
    ]
    return DetourModel(rows)


def grid_estimator(
    profile: SpeedProfile | None = None, model: DetourModel | None = None
) -> EtaEstimator:
    return EtaEstimator(
        profile or SpeedProfile(default_speed_mps=10.0), model or DetourModel(), UTC_ZONE
    )


def test_grid_estimate_is_straight_line_times_detour_at_profile_speed() -> None:
    straight = haversine_m(*HERE, *THERE)
    assert distance_band(straight) == 2
    eta = grid_estimator(model=detours(1.5, HERE)).estimate(*HERE, AT, [Stop("s", *THERE)])[0]
    assert eta.method is EtaMethod.GRID
    assert eta.straight_m == pytest.approx(straight)
    assert eta.metres == pytest.approx(straight * 1.5)
    assert eta.travel_s == pytest.approx(straight * 1.5 / 10.0)


def test_detour_factors_depend_on_area_and_band() -> None:
    elsewhere = (41.30, -8.30)  # another res-7 area
    model = DetourModel(
        [
            DetourRow(h3.latlng_to_cell(*HERE, DETOUR_AREA_RES), 2, 30 * math.log(1.5), 30),
            DetourRow(h3.latlng_to_cell(*elsewhere, DETOUR_AREA_RES), 2, 30 * math.log(1.1), 30),
        ]
    )
    assert model.factor(*HERE, 1_500.0) == pytest.approx(1.5)
    assert model.factor(*elsewhere, 1_500.0) == pytest.approx(1.1)
    # An area without its own: the band over every area (geometric mean).
    assert model.factor(38.7, -9.1, 1_500.0) == pytest.approx(math.sqrt(1.5 * 1.1))
    # A band nobody has driven: the default.
    assert model.factor(*HERE, 300.0) == DEFAULT_DETOUR
    # Too few samples do not count.
    few = DetourModel([DetourRow(h3.latlng_to_cell(*HERE, DETOUR_AREA_RES), 2, 3.0, 5)])
    assert few.factor(*HERE, 1_500.0) == DEFAULT_DETOUR


def test_detour_factors_are_learned_from_driven_paths() -> None:
    # An L: 1.2 km east, then 1.2 km north, at 10 m/s with a fix every 15 s.
    points = [offset(HERE, 0, 150 * i) for i in range(9)]
    points += [offset(HERE, 150 * i, 1_200) for i in range(1, 9)]
    fixes = [
        Fix("van", AT + timedelta(seconds=15 * i), lat, lon, AT)
        for i, (lat, lon) in enumerate(points)
    ]
    model = DetourModel(detour_rows(fixes), min_samples=1)
    corner_to_corner = haversine_m(*points[0], *points[-1])  # ~1.7 km, band 2
    assert 1.1 < model.factor(*HERE, corner_to_corner) <= math.sqrt(2) + 0.01
    # Short pairs are nearly all along one arm: barely any detour.
    assert model.factor(*HERE, 600.0) < 1.1


def test_grid_time_adds_up_the_cells_on_the_way() -> None:
    cells = cells_between(
        h3.latlng_to_cell(*HERE, PROFILE_RES), h3.latlng_to_cell(*THERE, PROFILE_RES)
    )
    slow_half = cells[: len(cells) // 2]
    rows = [ProfileRow(c, 4, 5.0 * 10, 10) for c in slow_half]
    rows += [ProfileRow(c, 4, 20.0 * 10, 10) for c in cells[len(cells) // 2 :]]
    profile = SpeedProfile(rows, shrink_samples=0.0)
    eta = grid_estimator(profile, detours(1.2, HERE)).estimate(*HERE, AT, [Stop("s", *THERE)])[0]
    per_cell = haversine_m(*HERE, *THERE) * 1.2 / len(cells)
    expected = per_cell * (len(slow_half) / 5.0 + (len(cells) - len(slow_half)) / 20.0)
    assert eta.travel_s == pytest.approx(expected)


def test_service_times_of_earlier_stops_are_added() -> None:
    second = offset(THERE, 1_000, 0)
    third = offset(second, 0, -1_000)
    stops = [Stop("a", *THERE, 300.0), Stop("b", *second, 120.0), Stop("c", *third, 60.0)]
    estimator = grid_estimator()
    etas = estimator.estimate(*HERE, AT, stops)
    starts = (HERE, THERE, second)
    legs = [estimator.estimate(*p, AT, [s])[0].travel_s for p, s in zip(starts, stops, strict=True)]
    assert [e.stop_id for e in etas] == ["a", "b", "c"]
    assert [e.service_s for e in etas] == [0.0, 300.0, 420.0]
    for k, eta in enumerate(etas):
        assert eta.travel_s == pytest.approx(sum(legs[: k + 1]))
        assert eta.p50_s == pytest.approx(eta.travel_s + eta.service_s)  # prior P50 ratio 1
        assert eta.arrival_p50 == AT + timedelta(seconds=eta.p50_s)


def test_later_legs_leave_after_the_earlier_stops_service() -> None:
    # Hour 4: 2 m/s everywhere on the way; hour 5: 20 m/s. The first leg (~1.26 km at
    # 2 m/s x 1.35 ~ 14 min) starts at 04:00, the second after a 50-minute service.
    cells = cells_between(
        h3.latlng_to_cell(*HERE, PROFILE_RES), h3.latlng_to_cell(*THERE, PROFILE_RES)
    )
    rows = [ProfileRow(c, h, v * 10, 10) for c in cells for h, v in ((4, 2.0), (5, 20.0))]
    profile = SpeedProfile(rows, shrink_samples=0.0)
    estimator = grid_estimator(profile)
    out, back = estimator.estimate(*HERE, AT, [Stop("out", *THERE, 3_000.0), Stop("back", *HERE)])
    assert back.travel_s - out.travel_s == pytest.approx(out.travel_s / 10, rel=0.01)


def test_p50_and_p90_before_any_residual() -> None:
    eta = grid_estimator().estimate(*HERE, AT, [Stop("s", *THERE, 60.0)])[0]
    assert eta.p50_s == pytest.approx(eta.travel_s)
    assert eta.p90_s == pytest.approx(eta.travel_s * PRIOR_P90_RATIO)
    assert eta.p50_s <= eta.p90_s


def test_residuals_move_the_quantiles() -> None:
    estimator = grid_estimator()
    stops = [Stop("near", *offset(HERE, 0, 400)), Stop("far", *THERE)]
    first = [estimator.estimate(*HERE, AT, [stop])[0] for stop in stops]
    assert first[1].travel_s > first[0].travel_s + 30
    # Each delivery took 1.2x the model's time plus a minute, plus 0 to 100 s more.
    for extra in range(0, 101, 10):
        for given in first * 2:
            actual = given.travel_s * 1.2 + 60.0 + extra
            arrived = AT + timedelta(seconds=actual)
            assert estimator.record_arrival(given, arrived) == pytest.approx(actual)
    for stop, before in zip(stops, first, strict=True):
        later = estimator.estimate(*HERE, AT, [stop])[0]
        assert later.travel_s == pytest.approx(before.travel_s)
        # Half the deliveries took up to 50 s more than the line, nine in ten 90 s.
        assert later.p50_s == pytest.approx(before.travel_s * 1.2 + 110.0, abs=0.5)
        assert later.p90_s == pytest.approx(before.travel_s * 1.2 + 150.0, abs=0.5)


def test_residuals_exclude_service_time_and_keep_short_predictions() -> None:
    estimator = grid_estimator()
    eta = estimator.estimate(*HERE, AT, [Stop("a", *THERE, 600.0), Stop("b", *HERE)])[1]
    arrived = AT + timedelta(seconds=eta.service_s + eta.travel_s * 1.25)
    assert estimator.record_arrival(eta, arrived) == pytest.approx(eta.travel_s * 1.25)
    # A vehicle nearly there still teaches the fixed time a stop costs.
    near = estimator.estimate(*HERE, AT, [Stop("c", *offset(HERE, 50, 0))])[0]
    assert near.travel_s < 30
    assert estimator.record_arrival(near, AT + timedelta(minutes=5)) == 300.0
    # An arrival before the prediction was given teaches nothing.
    assert estimator.record_arrival(near, AT - timedelta(seconds=1)) is None
    assert estimator.residuals.count(EtaMethod.GRID) == 2


def test_residuals_before_enough_arrivals_use_the_prior() -> None:
    residuals = Residuals(min_count=5)
    for _ in range(4):
        residuals.record(EtaMethod.ROAD, 100.0, 200.0)
    assert residuals.quantiles(EtaMethod.ROAD, 100.0) == (100.0, 100.0 * PRIOR_P90_RATIO)
    residuals.record(EtaMethod.ROAD, 100.0, 200.0)
    assert residuals.quantiles(EtaMethod.ROAD, 100.0) == pytest.approx((200.0, 200.0))
    assert residuals.quantiles(EtaMethod.GRID, 100.0) == (100.0, 100.0 * PRIOR_P90_RATIO)


def test_road_graph_when_both_ends_are_on_it() -> None:
    a, b = (1, *HERE), (2, *THERE)
    graph = RoadGraph.from_ways([Way([a, b], RoadClass.PRIMARY, 36 * KMH)])
    router = Router(graph, None, UTC_ZONE)
    estimator = EtaEstimator(SpeedProfile(), DetourModel(), UTC_ZONE, router=router)
    on_road = estimator.estimate(*offset(HERE, 10, 0), AT, [Stop("s", *THERE)])[0]
    route = router.route(offset(HERE, 10, 0), THERE, AT)
    assert route is not None
    assert on_road.method is EtaMethod.ROAD
    assert on_road.travel_s == pytest.approx(route.seconds)
    assert on_road.metres == pytest.approx(route.metres)
    # A stop far from the network: the grid (and the whole ETA says so).
    far = offset(THERE, 5_000, 0)
    etas = estimator.estimate(*HERE, AT, [Stop("s", *THERE), Stop("far", *far)])
    assert [e.method for e in etas] == [EtaMethod.ROAD, EtaMethod.GRID]


def test_a_heading_applies_to_the_first_leg_only() -> None:
    a, b = (1, *HERE), (2, *offset(HERE, 0, 90))
    c = (3, *offset(HERE, 0, 1_000))
    graph = RoadGraph.from_ways([Way([a, b, c], RoadClass.PRIMARY, 36 * KMH)])
    router = Router(graph, None, UTC_ZONE)
    estimator = EtaEstimator(SpeedProfile(), DetourModel(), UTC_ZONE, router=router)
    vehicle = offset(HERE, 0, 40)  # nearest node A behind, B 50 m ahead (east)
    stops = [Stop("c", *c[1:]), Stop("a", *HERE)]
    east, back = estimator.estimate(*vehicle, AT, stops, heading_deg=90.0)
    route = router.route(vehicle, c[1:], AT, heading_deg=90.0)
    plain = router.route(vehicle, c[1:], AT)
    assert route is not None and plain is not None
    assert route.seconds < plain.seconds
    assert east.travel_s == pytest.approx(route.seconds)
    second = router.route(c[1:], HERE, AT + timedelta(seconds=route.seconds))
    assert second is not None
    assert back.travel_s - east.travel_s == pytest.approx(second.seconds)


def test_road_and_grid_residuals_are_kept_apart() -> None:
    a, b = (1, *HERE), (2, *THERE)
    graph = RoadGraph.from_ways([Way([a, b], RoadClass.PRIMARY, 36 * KMH)])
    router = Router(graph, None, UTC_ZONE)
    estimator = EtaEstimator(SpeedProfile(), DetourModel(), UTC_ZONE, router=router)
    road = estimator.estimate(*HERE, AT, [Stop("s", *THERE)])[0]
    for _ in range(30):
        estimator.record_arrival(road, AT + timedelta(seconds=road.travel_s * 3))
    raw = road.travel_s
    assert estimator.residuals.quantiles(EtaMethod.ROAD, raw) == pytest.approx(
        (3 * raw, 3 * raw), rel=1e-3
    )
    assert estimator.residuals.quantiles(EtaMethod.GRID, raw) == (raw, raw * PRIOR_P90_RATIO)
