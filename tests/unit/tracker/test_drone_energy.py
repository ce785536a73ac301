"""Drone battery model: rates, trips, feasibility, fits on synthetic and real flights."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.drone_energy import run as data
from tracker.dji_logs import DjiSample
from tracker.drone_energy import (
    DEFAULT_MODEL,
    MATRICE_200,
    MIN_RATE_FRACTION,
    PHANTOM_4_PRO,
    DroneEnergyModel,
    DroneTrip,
    EnergyFit,
    Gauge,
    evaluate,
    feasibility,
    fit,
)
from tracker.live import EARTH_RADIUS_M

M_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180  # along a meridian, on the tracker's sphere
HZ = 10
CAPACITY_MAH = 5000.0
TRUE = DroneEnergyModel(
    hover_pct_s=0.06,
    speed_pct_per_m=-0.002,
    speed_sq_pct_s_per_m2=0.0004,
    climb_pct_per_m=0.004,
    descent_pct_per_m=-0.006,
    max_speed_mps=8.0,
)
# (seconds, horizontal m/s, vertical m/s): a waypoint mission like the logs' ones.
MISSION = ((20, 0.0, 3.0), (120, 5.0, 0.0), (60, 8.0, 0.0), (20, 0.0, 0.0), (20, 0.0, -3.0))
MISSION_PCT = 20 * 0.072 + 120 * 0.06 + 60 * 0.0696 + 20 * 0.06 + 20 * 0.042  # 14.856 %


def _flight(
    model: DroneEnergyModel = TRUE,
    mission: tuple[tuple[int, float, float], ...] = MISSION,
    start_pct: float = 90.0,
    t0: float = 0.0,
    ground_s: int = 5,
    vertical_speed: bool = True,
) -> list[DjiSample]:
    """A flight at HZ with ground time before it, drawing exactly what `model` says; the
    percentage is reported quantised like DJI's (whole percent)."""
    samples: list[DjiSample] = []
    t, charge, alt = t0, start_pct, 0.0

    def add(speed: float, climb: float, flying: bool, amps: float) -> None:
        samples.append(
            DjiSample(
                t_s=round(t, 3),
                lat=37.77,
                lon=-122.41,
                rel_alt_m=alt,
                speed_mps=speed,
                climb_mps=climb if vertical_speed else None,
                battery_pct=float(round(charge)),
                flying=flying,
                discharge_a=amps,
            )
        )

    for _ in range(ground_s * HZ):
        add(0.0, 0.0, False, 100.0)  # absurd on purpose: ground time must not count
        t += 1 / HZ
    for seconds, speed, climb in mission:
        rate = model.rate_pct_s(speed, climb)
        for _ in range(seconds * HZ):
            add(speed, climb, True, rate / 100 * CAPACITY_MAH * 3.6)
            t += 1 / HZ
            charge -= rate / HZ
            alt += climb / HZ
    add(0.0, 0.0, True, 0.0)  # touchdown: closes the last interval
    return samples


def _north(metres: float) -> float:
    return metres / M_PER_DEGREE


def _trip(**changes: float) -> DroneTrip:
    values = {
        "lat": 0.0,
        "lon": 0.0,
        "alt_m": 10.0,
        "dest_lat": _north(1_000),
        "dest_lon": 0.0,
        "dest_alt_m": 20.0,
        "cruise_alt_m": 110.0,
        "cruise_speed_mps": 10.0,
        "climb_mps": 4.0,
        "descent_mps": 2.0,
        "hover_s": 15.0,
    }
    return DroneTrip(**{**values, **changes})


# --- the model ---------------------------------------------------------------------


def test_rate_by_phase() -> None:
    assert TRUE.rate_pct_s(0.0) == 0.06
    assert TRUE.rate_pct_s(5.0) == pytest.approx(0.06 - 0.01 + 0.01)
    assert TRUE.rate_pct_s(0.0, 3.0) == pytest.approx(0.06 + 0.012)
    assert TRUE.rate_pct_s(0.0, -3.0) == pytest.approx(0.06 - 0.018)


def test_a_steep_descent_is_floored_at_a_fraction_of_hover() -> None:
    assert TRUE.rate_pct_s(0.0, -20.0) == MIN_RATE_FRACTION * TRUE.hover_pct_s


def test_beyond_the_fitted_speeds_flying_faster_never_gets_cheaper() -> None:
    bends_down = msgspec.structs.replace(
        TRUE, speed_pct_per_m=0.001, speed_sq_pct_s_per_m2=-0.0001
    )  # 0.0616 %/s at 8 m/s, the fastest fitted; the formula says 0.0576 at 12
    at_edge = bends_down.rate_pct_s(bends_down.max_speed_mps)
    assert at_edge == pytest.approx(0.0616)
    assert bends_down.rate_pct_s(12.0) == at_edge
    assert TRUE.rate_pct_s(12.0) > TRUE.rate_pct_s(TRUE.max_speed_mps)


def test_models_serialise_and_refuse_nonsense() -> None:
    assert msgspec.json.decode(msgspec.json.encode(TRUE), type=DroneEnergyModel) == TRUE
    text = msgspec.json.encode(msgspec.structs.replace(TRUE, hover_pct_s=1.0)).replace(
        b'"hover_pct_s":1.0', b'"hover_pct_s":-0.01'
    )
    with pytest.raises(msgspec.ValidationError, match="hover_pct_s must be positive"):
        msgspec.json.decode(text, type=DroneEnergyModel)


@pytest.mark.parametrize("metres", [200, 2_000, 10_000])
@pytest.mark.parametrize("speed", [3.0, 8.0, 15.0])
def test_the_default_is_the_hungrier_airframe(metres: float, speed: float) -> None:
    # Per trip: the Matrice 200 descends on less than the Phantom, but nothing else.
    trip = _trip(dest_lat=_north(metres), cruise_speed_mps=speed)
    assert DEFAULT_MODEL is MATRICE_200
    assert trip.expected_consumption_pct() > trip.expected_consumption_pct(PHANTOM_4_PRO)


# --- trips ---------------------------------------------------------------------------


def test_trip_timing_is_climb_cruise_descent_and_hover() -> None:
    trip = _trip()
    assert trip.horizontal_m == pytest.approx(1_000)
    assert (trip.climb_m, trip.descent_m) == (100.0, 90.0)
    assert trip.distance_3d_m == pytest.approx(100 + 1_000 + 90)
    durations = [p.duration_s for p in trip.phases()]
    assert durations == pytest.approx([100 / 4, 1_000 / 10, 90 / 2, 15])
    assert trip.duration_s == pytest.approx(185)


def test_a_drone_above_its_cruise_altitude_stays_up() -> None:
    trip = _trip(alt_m=150.0)
    assert (trip.climb_m, trip.descent_m) == (0.0, 130.0)


def test_consumption_adds_the_phases() -> None:
    trip = _trip()
    expected = (
        TRUE.rate_pct_s(0, 4) * 25
        + TRUE.rate_pct_s(10, 0) * 100
        + TRUE.rate_pct_s(0, -2) * 45
        + TRUE.rate_pct_s(0, 0) * 15
    )
    assert trip.expected_consumption_pct(TRUE) == pytest.approx(expected)


@pytest.mark.parametrize(
    "changes", [{"cruise_speed_mps": 0.0}, {"climb_mps": -1.0}, {"hover_s": -1.0}]
)
def test_a_trip_refuses_impossible_profiles(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        _trip(**changes)


@given(
    near=st.floats(0, 50_000),
    extra=st.floats(1, 50_000),
    speed=st.floats(1, 25),
    model=st.sampled_from([DEFAULT_MODEL, PHANTOM_4_PRO, MATRICE_200, TRUE]),
)
def test_consumption_grows_with_distance(
    near: float, extra: float, speed: float, model: DroneEnergyModel
) -> None:
    short = _trip(dest_lat=_north(near), cruise_speed_mps=speed)
    long = _trip(dest_lat=_north(near + extra), cruise_speed_mps=speed)
    assert long.expected_consumption_pct(model) > short.expected_consumption_pct(model)
    assert long.duration_s > short.duration_s


# --- feasibility ---------------------------------------------------------------------


def test_feasible_exactly_at_the_reserve_and_not_below() -> None:
    trip = _trip(dest_lat=_north(3_000))
    expected = trip.expected_consumption_pct()
    at_reserve = feasibility(trip, battery_pct=20.0 + expected, reserve_pct=20.0)
    assert at_reserve.feasible
    assert at_reserve.margin_pct == pytest.approx(0.0, abs=1e-9)
    assert at_reserve.expected_pct == expected
    short = feasibility(trip, battery_pct=20.0 + expected - 0.1, reserve_pct=20.0)
    assert not short.feasible
    assert short.margin_pct == pytest.approx(-0.1)
    assert short.detail.startswith("short by 0.1%: 3,000 m in ")
    assert "reserve 20.0%" in short.detail


def test_feasibility_uses_the_model_it_is_given() -> None:
    trip = _trip(dest_lat=_north(3_000))
    battery = 20.0 + trip.expected_consumption_pct(PHANTOM_4_PRO)
    assert feasibility(trip, battery, 20.0, PHANTOM_4_PRO).feasible
    assert not feasibility(trip, battery, 20.0).feasible  # the default is hungrier


@pytest.mark.parametrize(("battery", "reserve"), [(101.0, 20.0), (50.0, -1.0), (math.nan, 5.0)])
def test_feasibility_refuses_impossible_percentages(battery: float, reserve: float) -> None:
    with pytest.raises(ValueError, match=r"within \[0, 100\]"):
        feasibility(_trip(), battery, reserve)


# --- fits on synthetic flights ---------------------------------------------------------


def _assert_rates_match(model: DroneEnergyModel, rel: float) -> None:
    """The rates at the mission's operating points and between them. (The coefficients
    themselves drift a little: three speeds barely pin a quadratic, and the ridge
    leans on that slack.)"""
    points = [(v, c) for _, v, c in MISSION] + [(2.0, 0.0), (6.5, 0.0)]
    assert [model.rate_pct_s(v, c) for v, c in points] == pytest.approx(
        [TRUE.rate_pct_s(v, c) for v, c in points], rel=rel
    )


def test_the_coulomb_counter_recovers_the_model() -> None:
    fitted = fit(_flight(), capacity_mah=CAPACITY_MAH)
    assert fitted.gauge is Gauge.CURRENT
    _assert_rates_match(fitted.model, rel=0.02)
    assert fitted.model.max_speed_mps == 8.0
    assert fitted.residuals.samples == 2_401  # 240 s at 10 Hz and the touchdown
    assert fitted.residuals.flight_s == pytest.approx(240)


def test_without_vertical_speed_the_climb_comes_from_the_altitude() -> None:
    fitted = fit(_flight(vertical_speed=False), capacity_mah=CAPACITY_MAH)
    _assert_rates_match(fitted.model, rel=0.02)


def test_the_percentage_gauge_recovers_the_consumption() -> None:
    flight = _flight()
    fitted = fit(flight)  # no capacity: the percentage is the gauge
    assert fitted.gauge is Gauge.PERCENT
    residuals = fitted.residuals
    assert residuals.actual_drop_pct == 90 - 75  # 14.856 % drawn, reported whole
    assert residuals.predicted_drop_pct == pytest.approx(MISSION_PCT, abs=0.3)
    assert residuals.window_mae_pct < 0.2
    assert fitted.model.hover_pct_s == pytest.approx(TRUE.hover_pct_s, rel=0.15)


def test_without_a_logged_current_the_percentage_is_the_gauge() -> None:
    flight = [msgspec.structs.replace(s, discharge_a=None) for s in _flight()]
    assert fit(flight, capacity_mah=CAPACITY_MAH).gauge is Gauge.PERCENT


def test_ground_time_and_the_gap_between_flights_are_left_out() -> None:
    # Two flights, the battery swapped for a full one in between.
    first = _flight()
    second = _flight(start_pct=100.0, t0=first[-1].t_s + 60)
    both = fit([*first, *second], capacity_mah=CAPACITY_MAH)
    _assert_rates_match(both.model, rel=0.02)
    # The percentage: each flight's own drop, nothing across the swap.
    assert both.residuals.actual_drop_pct == (90 - 75) + (100 - 85)
    assert evaluate(TRUE, [*first, *second]).predicted_drop_pct == pytest.approx(2 * MISSION_PCT)


def test_the_percentage_is_dequantised_at_its_steps() -> None:
    # The true model against the reported whole percent: read at face value, a window
    # is off by up to 1 %; read at its steps (half a percent above the new value, the
    # charge falling linearly between steps) it is off by a few hundredths.
    assert evaluate(TRUE, _flight()).window_mae_pct < 0.05


def test_a_percentage_that_bounces_back_up_is_ignored() -> None:
    # DJI's percentage can tick up for a moment when the load drops (see the Matrice
    # 200 log around 115 s); charge does not come back, so the step is not a step.
    flight = _flight()
    bounced = [
        msgspec.structs.replace(s, battery_pct=s.battery_pct + 1)
        if 50 <= s.t_s < 52 and s.battery_pct is not None
        else s
        for s in flight
    ]
    assert bounced != flight
    assert evaluate(TRUE, bounced) == evaluate(TRUE, flight)


def test_a_telemetry_gap_splits_the_flight() -> None:
    # 60 s without samples mid-cruise: neither speed nor draw is known over them.
    gapped = [s for s in _flight() if not 100 <= s.t_s - 5 < 160]
    result = evaluate(TRUE, gapped)
    assert result.flight_s == pytest.approx(240 - 60 - 0.1)
    missed = 40 * TRUE.rate_pct_s(5.0) + 20 * TRUE.rate_pct_s(8.0) + 0.1 * TRUE.rate_pct_s(5.0)
    assert result.predicted_drop_pct == pytest.approx(MISSION_PCT - missed)


def test_too_short_a_flight_is_refused() -> None:
    with pytest.raises(ValueError, match="a fit needs 30"):
        fit(_flight(mission=((20, 5.0, 0.0),)))


def test_fits_serialise() -> None:
    fitted = fit(_flight(), capacity_mah=CAPACITY_MAH)
    assert msgspec.json.decode(msgspec.json.encode(fitted), type=EnergyFit) == fitted


# --- the real logs -------------------------------------------------------------------

real = pytest.mark.skipif(data.missing() is not None, reason=str(data.missing()))
# The airframes differ: the Matrice 200 draws ~45 % more of its battery per second than
# the Phantom 4 Pro, so a model fitted on one predicts the other's whole-flight drop
# within a factor of 1.6 and no better (bench/drone_energy: 0.68 and 1.54). A mistake in
# units (mA for A, a capacity off by 1000) is far outside it.
CROSS_AIRFRAME_FACTOR = 1.6
# Within one log the two gauges must agree: the percentage is reported whole (+-1) and
# DJI's gauge is not exactly the logged current's integral (bench: 12.1 vs 13, 13.0 vs 12).
SAME_LOG_PCT = 1.5


@real
@pytest.mark.parametrize("gauge", list(Gauge))
def test_a_model_from_one_log_predicts_the_other(gauge: Gauge) -> None:
    logs = data.load_logs()
    for source, target in ((logs[0], logs[1]), (logs[1], logs[0])):
        capacity = source.capacity_mah if gauge is Gauge.CURRENT else None
        fitted = fit(source.samples, capacity_mah=capacity)
        assert fitted.gauge is gauge
        result = evaluate(fitted.model, target.samples)
        ratio = result.predicted_drop_pct / result.actual_drop_pct
        assert 1 / CROSS_AIRFRAME_FACTOR <= ratio <= CROSS_AIRFRAME_FACTOR, (
            source.aircraft,
            result,
        )
        assert result.window_mae_pct < 1.0


@real
def test_on_each_log_the_coulomb_counter_agrees_with_the_percentage() -> None:
    for log in data.load_logs():
        residuals = fit(log.samples, capacity_mah=log.capacity_mah).residuals
        error = residuals.predicted_drop_pct - residuals.actual_drop_pct
        assert abs(error) <= SAME_LOG_PCT, (log.aircraft, residuals)
        assert residuals.window_mae_pct < 0.3


@real
def test_the_constants_in_code_are_what_the_logs_give() -> None:
    phantom, matrice = data.load_logs()
    for log, constant in ((phantom, PHANTOM_4_PRO), (matrice, MATRICE_200)):
        fitted = fit(log.samples, capacity_mah=log.capacity_mah).model
        assert msgspec.structs.astuple(fitted) == pytest.approx(
            msgspec.structs.astuple(constant), rel=1e-4
        )
