"""How fast a multirotor drains its battery, what a trip will cost, and whether the battery
left covers it with a reserve. Pure.

Consumption, in percent of the battery per second, by flight phase:

    rate = hover + speed·v + speed_sq·v² + climb·max(c, 0) + descent·max(-c, 0)

v the horizontal speed and c the vertical speed (m/s, up-positive). A multirotor's power
is U-shaped in speed (induced power falls, parasitic power rises), hence the quadratic;
climbing buys potential energy, descending gives some back.

It is fitted by least squares on DJI flight logs, on the consumption measured by one of
two gauges. The coulomb counter (current over full charge, 10 Hz) resolves the phase
terms. The battery percentage is quantised to 1 %, which over a few minutes of flight
resolves the mean rate and little else: it is de-quantised at its steps and read over
windows of tens of seconds, and the phase terms are shrunk towards zero unless the data
insists (`RIDGE_WINDOWS`). Either way the residuals are reported on the percentage, the
figure the drone reports and the feasibility check reads.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
from numpy.typing import NDArray

from tracker.dji_logs import DjiSample
from tracker.live import haversine_m

Array = NDArray[np.float64]

WINDOW_S = 20.0  # battery-percentage windows: a 1 % step comes every 12-20 s in the logs
SAMPLE_GAP_S = 5.0  # a longer silence splits a flight: what it consumed is unknown
GROUND_ALT_M = 0.5  # airborne above this barometric height, for logs without a flying flag
MIN_FLIGHT_S = 30.0  # less flight than this cannot tell a rate from a 1 % step
RIDGE_WINDOWS = 1.0  # the prior "this phase term is zero" weighs as much as one window
# Operating points that scale the ridge: a phase term is judged by what it changes there.
TYPICAL_SPEED_MPS = 10.0
TYPICAL_VERTICAL_MPS = 3.0
# Floor on any predicted rate, as a fraction of the hover rate: the linear descent term
# must not extrapolate to free flight. The lowest seen in the logs: the Matrice 200
# descending at 2.4 m/s drew 53 % of its hover current.
MIN_RATE_FRACTION = 0.5
_SECONDS_PER_HOUR = 3600.0
_MAH_PER_AS = 1000.0 / _SECONDS_PER_HOUR  # ampere-seconds to milliampere-hours

# Trip profile defaults: what the DJI waypoint missions in the logs flew (vertical climb
# and descent at ~3 m/s), and a half-minute over the drop point to land or lower a parcel.
DEFAULT_CLIMB_MPS = 3.0
DEFAULT_DESCENT_MPS = 3.0
DEFAULT_HOVER_S = 30.0
# A trip that lands exactly on the reserve is feasible; float noise must not decide it.
FEASIBILITY_TOLERANCE_PCT = 1e-9


class Gauge(enum.StrEnum):
    CURRENT = "current"  # the battery current integrated over time (coulomb counter)
    PERCENT = "percent"  # the reported battery percentage, de-quantised


class DroneEnergyModel(msgspec.Struct, frozen=True):
    """Battery consumption by flight phase; see the module docstring for the formula."""

    hover_pct_s: float  # %/s, hovering in still air
    speed_pct_per_m: float  # (%/s) per (m/s) of horizontal speed
    speed_sq_pct_s_per_m2: float  # (%/s) per (m/s)^2 of horizontal speed
    climb_pct_per_m: float  # (%/s) per (m/s) up: % per metre climbed
    descent_pct_per_m: float  # (%/s) per (m/s) down: % per metre descended
    max_speed_mps: float  # the fastest horizontal speed in the data it was fitted on

    def __post_init__(self) -> None:
        # A drone that gains charge hovering is a failed fit, not a model to plan with.
        if not self.hover_pct_s > 0:
            raise ValueError(f"hover_pct_s must be positive, got {self.hover_pct_s}")
        if not self.max_speed_mps >= 0:
            raise ValueError(f"max_speed_mps must not be negative, got {self.max_speed_mps}")

    @property
    def coefficients(self) -> tuple[float, float, float, float, float]:
        return (
            self.hover_pct_s,
            self.speed_pct_per_m,
            self.speed_sq_pct_s_per_m2,
            self.climb_pct_per_m,
            self.descent_pct_per_m,
        )

    def rate_pct_s(self, speed_mps: float, climb_mps: float = 0.0) -> float:
        """Expected consumption in %/s at this horizontal and vertical speed."""
        horizontal = self._horizontal(speed_mps)
        if speed_mps > self.max_speed_mps:
            # Past the data the quadratic may bend down; flying faster never gets cheaper.
            horizontal = max(horizontal, self._horizontal(self.max_speed_mps))
        vertical = self.climb_pct_per_m * max(climb_mps, 0.0)
        vertical += self.descent_pct_per_m * max(-climb_mps, 0.0)
        return max(horizontal + vertical, MIN_RATE_FRACTION * self.hover_pct_s)

    def _horizontal(self, v: float) -> float:
        return self.hover_pct_s + self.speed_pct_per_m * v + self.speed_sq_pct_s_per_m2 * v * v


# Fitted on the DJI Phantom 4 Pro / Matrice 200 logs (dronedeploy/flight-log-parser
# testlog/, in ../shared/data/drones/dji_sf) on 2026-11-27 with the current gauge; see
# bench/drone_energy. Percent of each aircraft's own battery.
PHANTOM_4_PRO = DroneEnergyModel(
    hover_pct_s=0.052357,
    speed_pct_per_m=-0.0013423,
    speed_sq_pct_s_per_m2=0.00025522,
    climb_pct_per_m=0.0029382,
    descent_pct_per_m=-0.0027945,
    max_speed_mps=7.7162,
)
MATRICE_200 = DroneEnergyModel(
    hover_pct_s=0.076903,
    speed_pct_per_m=0.00070341,
    speed_sq_pct_s_per_m2=0.00040957,
    climb_pct_per_m=0.0056492,
    descent_pct_per_m=-0.011631,
    max_speed_mps=7.9624,
)
# The hungrier of the two: a feasibility check must err towards "not feasible".
DEFAULT_MODEL = MATRICE_200


class Evaluation(msgspec.Struct, frozen=True):
    """A model against a log's battery percentage, over windows and the whole flight."""

    samples: int  # airborne samples with a battery reading
    flight_s: float
    windows: int
    window_mae_pct: float  # predicted vs actual drop per window, mean absolute error
    window_rmse_pct: float
    predicted_drop_pct: float  # the whole airborne time
    actual_drop_pct: float


class EnergyFit(msgspec.Struct, frozen=True):
    model: DroneEnergyModel
    gauge: Gauge
    residuals: Evaluation  # the model against the samples it was fitted on


@dataclass(frozen=True)
class _Segment:
    """One stretch of airborne samples without a gap; per-interval arrays run from each
    sample to the next."""

    t: Array  # sample times, s
    battery: Array  # reported percentage per sample
    dt: Array  # interval lengths, s
    speed: Array  # horizontal speed over each interval, m/s
    climb: Array  # vertical speed over each interval, m/s, up-positive
    discharge: Array  # battery current over each interval, A (NaN where unknown)

    @property
    def features(self) -> Array:
        """Per interval, what each model coefficient multiplies: [1, v, v², c+, c-]·dt."""
        up, down = np.maximum(self.climb, 0.0), np.maximum(-self.climb, 0.0)
        columns = (np.ones_like(self.speed), self.speed, self.speed**2, up, down)
        return np.stack(columns, axis=1) * self.dt[:, None]

    def level(self, at: Array) -> Array:
        """The battery percentage de-quantised: the reported value only changes when the
        charge crosses a step, so the charge is known at each step (half a percent above
        the new value) and between steps is taken to fall linearly. The ends, where no
        step is seen, use the reported value."""
        knots_t, knots_v = [float(self.t[0])], [float(self.battery[0])]
        level = self.battery[0]
        for t, value in zip(self.t[1:], self.battery[1:], strict=True):
            if value < level:  # a rise would be a gauge recalibrating, not a charge
                level = value
                knots_t.append(float(t))
                knots_v.append(float(value) + 0.5)
        knots_t.append(float(self.t[-1]))
        knots_v.append(float(level))
        return np.interp(at, knots_t, knots_v)

    def windows(self, window_s: float) -> list[tuple[int, int]]:
        """Sample index pairs splitting the segment into near-equal windows."""
        count = max(1, round((self.t[-1] - self.t[0]) / window_s))
        edges = np.searchsorted(self.t, np.linspace(self.t[0], self.t[-1], count + 1))
        bounds = sorted({int(i) for i in np.clip(edges, 0, len(self.t) - 1)})
        return list(itertools.pairwise(bounds))


def fit(
    samples: Sequence[DjiSample],
    *,
    capacity_mah: float | None = None,
    window_s: float = WINDOW_S,
) -> EnergyFit:
    """Fit a model on one log's samples (ground time excluded).

    With the battery's full charge (`DjiLog.capacity_mah`) and a logged current, the
    coulomb counter measures consumption; otherwise the battery percentage does.
    """
    segments = _segments(samples)
    flight_s = sum(float(s.t[-1] - s.t[0]) for s in segments)
    if flight_s < MIN_FLIGHT_S:
        raise ValueError(f"{flight_s:.0f} s of airborne samples; a fit needs {MIN_FLIGHT_S:.0f}")
    has_current = all(not np.isnan(s.discharge).any() for s in segments)
    gauge = Gauge.CURRENT if capacity_mah is not None and has_current else Gauge.PERCENT
    if gauge is Gauge.CURRENT:
        assert capacity_mah is not None
        rows, drops = _current_rows(segments, capacity_mah)
    else:
        rows, drops = _percent_rows(segments, window_s)
    span = float(rows[:, 0].mean())  # the rows' mean duration, s
    hover, speed, speed_sq, climb, descent = (float(c) for c in _solve(rows, drops, span))
    model = DroneEnergyModel(
        hover_pct_s=hover,
        speed_pct_per_m=speed,
        speed_sq_pct_s_per_m2=speed_sq,
        climb_pct_per_m=climb,
        descent_pct_per_m=descent,
        max_speed_mps=max(float(s.speed.max()) for s in segments),
    )
    return EnergyFit(model, gauge, evaluate(model, samples, window_s))


def evaluate(
    model: DroneEnergyModel, samples: Sequence[DjiSample], window_s: float = WINDOW_S
) -> Evaluation:
    """Predicted against actual battery-percentage drop over the airborne samples."""
    segments = _segments(samples)
    errors: list[float] = []
    predicted_total = actual_total = 0.0
    for segment in segments:
        rates = [model.rate_pct_s(v, c) for v, c in zip(segment.speed, segment.climb, strict=True)]
        used = np.asarray(rates) * segment.dt
        for start, end in segment.windows(window_s):
            actual = segment.level(segment.t[[start, end]])
            errors.append(float(used[start:end].sum() - (actual[0] - actual[1])))
        predicted_total += float(used.sum())
        actual_total += float(segment.battery[0] - segment.battery[-1])
    residuals = np.asarray(errors)
    return Evaluation(
        samples=sum(len(s.t) for s in segments),
        flight_s=sum(float(s.t[-1] - s.t[0]) for s in segments),
        windows=len(errors),
        window_mae_pct=float(np.abs(residuals).mean()) if errors else math.nan,
        window_rmse_pct=float(np.sqrt((residuals**2).mean())) if errors else math.nan,
        predicted_drop_pct=predicted_total,
        actual_drop_pct=actual_total,
    )


def _airborne(sample: DjiSample) -> bool:
    if sample.battery_pct is None:
        return False
    if sample.flying is not None:
        return sample.flying
    return sample.rel_alt_m > GROUND_ALT_M


def _segments(samples: Sequence[DjiSample]) -> list[_Segment]:
    runs: list[list[DjiSample]] = []
    previous: DjiSample | None = None
    for sample in samples:
        if not _airborne(sample):
            previous = None
            continue
        if previous is None or sample.t_s - previous.t_s > SAMPLE_GAP_S:
            runs.append([])
        runs[-1].append(sample)
        previous = sample
    return [_segment(run) for run in runs if len(run) >= 2]


def _segment(run: list[DjiSample]) -> _Segment:
    t = np.array([s.t_s for s in run])
    alt = np.array([s.rel_alt_m for s in run])
    dt = np.diff(t)
    # Logs without a vertical speed: the barometric height's change over the interval.
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = np.where(dt > 0, np.diff(alt) / dt, 0.0)
    logged = [s.climb_mps for s in run[:-1]]
    climb = np.array([d if c is None else c for c, d in zip(logged, derived, strict=True)])
    discharge = [math.nan if s.discharge_a is None else s.discharge_a for s in run[:-1]]
    return _Segment(
        t=t,
        battery=np.array([s.battery_pct for s in run], dtype=np.float64),
        dt=dt,
        speed=np.array([s.speed_mps for s in run[:-1]]),
        climb=climb,
        discharge=np.array(discharge),
    )


def _current_rows(segments: list[_Segment], capacity_mah: float) -> tuple[Array, Array]:
    """One row per interval: the charge drawn over it, in percent of a full battery."""
    rows = np.concatenate([s.features for s in segments])
    drawn_as = np.concatenate([s.discharge * s.dt for s in segments])
    return rows, drawn_as * _MAH_PER_AS / capacity_mah * 100.0


def _percent_rows(segments: list[_Segment], window_s: float) -> tuple[Array, Array]:
    """One row per window: the de-quantised percentage's drop across it."""
    rows: list[Array] = []
    drops: list[float] = []
    for segment in segments:
        features = segment.features
        for start, end in segment.windows(window_s):
            level = segment.level(segment.t[[start, end]])
            rows.append(features[start:end].sum(axis=0))
            drops.append(float(level[0] - level[1]))
    return np.array(rows), np.array(drops)


def _solve(rows: Array, drops: Array, span_s: float) -> Array:
    """Least squares with a ridge on the phase terms: RIDGE_WINDOWS pseudo-rows of the
    rows' mean duration, each saying that a phase term changes nothing at its typical
    operating point. Negligible against thousands of coulomb-counter rows, decisive
    against a dozen percentage windows that cannot tell the phases apart."""
    scales = (
        0.0,
        TYPICAL_SPEED_MPS,
        TYPICAL_SPEED_MPS**2,
        TYPICAL_VERTICAL_MPS,
        TYPICAL_VERTICAL_MPS,
    )
    prior = np.diag(np.asarray(scales) * span_s * math.sqrt(RIDGE_WINDOWS))
    a = np.vstack([rows, prior])
    b = np.concatenate([drops, np.zeros(len(scales))])
    solution: Array = np.linalg.lstsq(a, b, rcond=None)[0]
    return solution


class FlightPhase(enum.StrEnum):
    CLIMB = "climb"
    CRUISE = "cruise"
    DESCENT = "descent"
    HOVER = "hover"


class Phase(msgspec.Struct, frozen=True):
    kind: FlightPhase
    duration_s: float
    speed_mps: float  # horizontal
    climb_mps: float  # vertical, up-positive


class DroneTrip(msgspec.Struct, frozen=True, kw_only=True):
    """From a position and altitude to a destination and altitude: climb vertically to
    the cruise altitude, cruise in a straight line, descend vertically, hover over the
    drop point (as the DJI waypoint missions in the logs fly). Altitudes in one datum,
    metres (above mean sea level, or all above the take-off point); no wind."""

    lat: float
    lon: float
    alt_m: float
    dest_lat: float
    dest_lon: float
    dest_alt_m: float
    cruise_alt_m: float
    cruise_speed_mps: float
    climb_mps: float = DEFAULT_CLIMB_MPS
    descent_mps: float = DEFAULT_DESCENT_MPS
    hover_s: float = DEFAULT_HOVER_S

    def __post_init__(self) -> None:
        for name in ("cruise_speed_mps", "climb_mps", "descent_mps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.hover_s >= 0:
            raise ValueError(f"hover_s must not be negative, got {self.hover_s}")

    @property
    def horizontal_m(self) -> float:
        return haversine_m(self.lat, self.lon, self.dest_lat, self.dest_lon)

    @property
    def cruise_level_m(self) -> float:
        """Never below either end: a drone above its cruise altitude stays up."""
        return max(self.cruise_alt_m, self.alt_m, self.dest_alt_m)

    @property
    def climb_m(self) -> float:
        return self.cruise_level_m - self.alt_m

    @property
    def descent_m(self) -> float:
        return self.cruise_level_m - self.dest_alt_m

    @property
    def distance_3d_m(self) -> float:
        """The path flown: up, across, down."""
        return self.climb_m + self.horizontal_m + self.descent_m

    def phases(self) -> tuple[Phase, ...]:
        return (
            Phase(FlightPhase.CLIMB, self.climb_m / self.climb_mps, 0.0, self.climb_mps),
            Phase(
                FlightPhase.CRUISE,
                self.horizontal_m / self.cruise_speed_mps,
                self.cruise_speed_mps,
                0.0,
            ),
            Phase(FlightPhase.DESCENT, self.descent_m / self.descent_mps, 0.0, -self.descent_mps),
            Phase(FlightPhase.HOVER, self.hover_s, 0.0, 0.0),
        )

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases())

    def expected_consumption_pct(self, model: DroneEnergyModel = DEFAULT_MODEL) -> float:
        return sum(_phase_pct(p, model) for p in self.phases())


def _phase_pct(phase: Phase, model: DroneEnergyModel) -> float:
    return model.rate_pct_s(phase.speed_mps, phase.climb_mps) * phase.duration_s


class Feasibility(msgspec.Struct, frozen=True):
    feasible: bool
    margin_pct: float  # battery left above the reserve on arrival; negative when short
    expected_pct: float  # the trip's expected consumption
    detail: str


def feasibility(
    trip: DroneTrip,
    battery_pct: float,
    reserve_pct: float,
    model: DroneEnergyModel = DEFAULT_MODEL,
) -> Feasibility:
    """Whether `battery_pct` covers the trip and still leaves `reserve_pct` on arrival.
    Landing exactly on the reserve is feasible."""
    for name, value in (("battery_pct", battery_pct), ("reserve_pct", reserve_pct)):
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{name} must be within [0, 100], got {value}")
    parts = {p.kind: _phase_pct(p, model) for p in trip.phases()}
    expected = sum(parts.values())
    margin = battery_pct - reserve_pct - expected
    feasible = margin >= -FEASIBILITY_TOLERANCE_PCT
    breakdown = ", ".join(f"{kind} {pct:.1f}" for kind, pct in parts.items())
    verdict = "feasible" if feasible else f"short by {-margin:.1f}%"
    detail = (
        f"{verdict}: {trip.horizontal_m:,.0f} m in {trip.duration_s:,.0f} s needs "
        f"{expected:.1f}% ({breakdown}); battery {battery_pct:.1f}%, reserve {reserve_pct:.1f}%"
    )
    return Feasibility(feasible, margin, expected, detail)
