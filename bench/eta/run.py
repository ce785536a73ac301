"""Learn on some taxis' trips, predict the others' remaining time at 25/50/75 % of each
trip, and time one ETA update on a replay of every fix.

The residuals that set P50 and P90 are primed the way a tracker primes them from its
stored settled ETAs: with ETAs given for the training taxis' own trips, each predicted by
a model learned without that taxi (the training taxis in `PRIME_PARTS` groups, each
predicted by the others' profile), so that they are as wrong as live ETAs are. Test
arrivals are then recorded in time order. A second calibration that only ever sees
arrivals earlier than the prediction (training and test trips in one time line) is
reported beside it, for the reader who wants no later knowledge at all."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import h3.api.basic_int as h3

from bench.eta.trips import (
    MIN_TRIP_S,
    MIN_TRIP_STRAIGHT_M,
    Trip,
    exclusion,
    load_trips,
    roads_path,
    split_taxis,
)
from bench.geofence import porto
from bench.geofence.run import describe
from tracker.eta import DetourModel, EtaEstimator, EtaMethod, Stop, StopEta
from tracker.eta_residuals import REFIT_EVERY, Residuals
from tracker.live import haversine_m
from tracker.positions import Fix
from tracker.roads import RoadGraph, bearing_deg, load_roads
from tracker.routing import LIMIT_PRIOR_SAMPLES, Router, RoutingRules
from tracker.speed_profiles import (
    HOUR_FACTOR_SAMPLES,
    PROFILE_RES,
    Level,
    SegmentRules,
    SegmentStats,
    SpeedProfile,
    hour_of_week,
    profile_rows,
    runs,
)

FLEET_ZONE = ZoneInfo("Europe/Lisbon")  # the trips' local time; profiles use it
FRACTIONS = (0.25, 0.5, 0.75)  # of each test trip's fixes, where ETAs are compared
FOLDS = 2  # taxis in two halves: learn on one, test on the other, then swap
QUICK_FOLDS = 1
RECENT_WINDOW_S = 60.0  # the "recent speed" baseline: the last minute's fixes
MIN_RECENT_SPEED_MPS = 1.0  # a stopped vehicle's recent speed says nothing: fleet mean
TARGET_REDUCTION = 0.30  # MAE at least 30 % below the better baseline
TIMING_TRIPS = 200  # test trips replayed fix by fix for the update time
QUICK_TIMING_TRIPS = 40
EXTRA_STOPS = 2  # the "few stops" timing: this trip's end plus two other trips' ends
PRIME_PARTS = 2  # training taxis cross-predicted in this many groups to prime residuals
PRIME_SEED = 4  # shuffles the training taxis into those groups
# The trips report no heading: it is taken from the previous fix, when the vehicle moved
# at least this far in the 15 s between them (less is GPS noise or a queue).
MIN_HEADING_MOVE_M = 20.0
_NS_PER_US = 1_000

ROAD, GRID = "road graph ETA (P50)", "H3 grid ETA (P50)"
ROAD_RAW, GRID_RAW = "road graph, raw model", "H3 grid, raw model"
ROAD_CAUSAL = "road graph, earlier arrivals"  # P50 from residuals of earlier arrivals only
FLEET, RECENT = "baseline: fleet mean speed", "baseline: recent speed"
BASELINES = (FLEET, RECENT)
METHODS = (ROAD, GRID, ROAD_CAUSAL, ROAD_RAW, GRID_RAW, FLEET, RECENT)


@dataclass(frozen=True)
class Prediction:
    fraction: float
    actual_s: float
    predicted_s: float
    p90_s: float | None = None
    on_graph: bool = False  # both ends snapped to the road graph (the road ETA applied)


@dataclass
class Accuracy:
    method: str
    subset: str  # "all" test predictions, or "on_graph" (both ends on the extract)
    n: int
    mae_s: float
    median_s: float
    p90_s: float
    bias_s: float  # mean of predicted - actual: negative = optimistic
    coverage: float | None  # share of actual times within the P90
    mae_by_fraction: dict[str, float]
    vs_best_baseline: float | None = None  # 1 - MAE / better baseline MAE


@dataclass
class Timing:
    case: str
    updates: int
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    searches: int  # road graph searches started (the cold part of an update)
    evicted: int  # searches pushed out of the router's cache (redone when needed again)


@dataclass
class Run:
    machine: dict[str, Any]
    config: dict[str, Any]
    accuracy: list[Accuracy] = field(default_factory=list)
    fallback: dict[str, Any] = field(default_factory=dict)
    timing: list[Timing] = field(default_factory=list)
    target_met: dict[str, bool] = field(default_factory=dict)


def fleet_mean_speed(fixes: Iterable[Fix]) -> float:
    """Distance over time of every real segment (time-weighted, unlike the profile)."""
    metres = seconds = 0.0
    for run in runs(fixes, SegmentRules(), SegmentStats()):
        for a, b in itertools.pairwise(run):
            metres += haversine_m(a.lat, a.lon, b.lat, b.lon)
            seconds += (b.ts - a.ts).total_seconds()
    return metres / seconds


def recent_speed(fixes: Sequence[Fix], i: int, fallback: float) -> float:
    metres = seconds = 0.0
    j = i
    while j > 0 and seconds < RECENT_WINDOW_S:
        a, b = fixes[j - 1], fixes[j]
        metres += haversine_m(a.lat, a.lon, b.lat, b.lon)
        seconds += (b.ts - a.ts).total_seconds()
        j -= 1
    speed = metres / seconds if seconds else 0.0
    return speed if speed >= MIN_RECENT_SPEED_MPS else fallback


def heading_at(fixes: Sequence[Fix], i: int) -> float | None:
    if i == 0:
        return None
    a, b = fixes[i - 1], fixes[i]
    if haversine_m(a.lat, a.lon, b.lat, b.lon) < MIN_HEADING_MOVE_M:
        return None
    return bearing_deg(a.lat, a.lon, b.lat, b.lon)


@dataclass(frozen=True)
class Model:
    """Switches of the model, at the values the tracker runs with; `bench.eta.validate`
    turns them to measure what each is worth."""

    heading: bool = True  # start the road route ahead of a moving vehicle
    hour_factor_samples: float = HOUR_FACTOR_SAMPLES
    limit_prior_samples: float = LIMIT_PRIOR_SAMPLES


@dataclass
class _Fold:
    profile: SpeedProfile
    detours: DetourModel
    fleet_speed: float
    road: EtaEstimator
    grid: EtaEstimator
    router: Router
    model: Model

    def heading(self, fixes: Sequence[Fix], i: int) -> float | None:
        return heading_at(fixes, i) if self.model.heading else None


def learn(train: list[Fix], graph: RoadGraph, model: Model | None = None) -> _Fold:
    model = model or Model()
    rows, stats = profile_rows(train, FLEET_ZONE)
    profile = SpeedProfile(rows, stats, hour_factor_samples=model.hour_factor_samples)
    detours = DetourModel.learn(train)
    rules = RoutingRules(limit_prior_samples=model.limit_prior_samples)
    router = Router(graph, profile, FLEET_ZONE, rules)
    return _Fold(
        profile,
        detours,
        fleet_mean_speed(train),
        EtaEstimator(profile, detours, FLEET_ZONE, router=router),
        EtaEstimator(profile, detours, FLEET_ZONE),
        router,
        model,
    )


@dataclass(frozen=True)
class Given:
    """An ETA given during priming and the arrival that settled it."""

    road: StopEta
    grid: StopEta
    arrived_at: Any


def valid_trips(trips: Iterable[Trip], taxis: set[str]) -> list[Trip]:
    return [t for t in trips if t.taxi in taxis and exclusion(t) is None]


def _given(fold: _Fold, trip: Trip) -> list[Given]:
    end = trip.fixes[-1]
    stop = [Stop(trip.trip_id, end.lat, end.lon)]
    given = []
    for q in FRACTIONS:
        i = round(q * (len(trip.fixes) - 1))
        here, heading = trip.fixes[i], fold.heading(trip.fixes, i)
        road = fold.road.estimate(here.lat, here.lon, here.ts, stop, heading)[0]
        grid = fold.grid.estimate(here.lat, here.lon, here.ts, stop, heading)[0]
        given.append(Given(road, grid, end.ts))
    return given


def prime(
    fold: _Fold, trips: list[Trip], fixes: list[Fix], train_taxis: set[str], graph: RoadGraph
) -> list[Given]:
    """Cross-predict the training taxis' trips (each by a model learned without its taxi)
    and record them as arrivals, oldest first: the residuals a deployment would have
    stored. Returns what was given, for the causal calibration's time line."""
    taxis = sorted(train_taxis)
    random.Random(PRIME_SEED).shuffle(taxis)
    given: list[Given] = []
    for part in range(PRIME_PARTS):
        held = set(taxis[part::PRIME_PARTS])
        other = learn([f for f in fixes if f.device_id in train_taxis - held], graph, fold.model)
        for trip in valid_trips(trips, held):
            given.extend(_given(other, trip))
    given.sort(key=lambda g: g.arrived_at)
    for g in given:
        fold.road.record_arrival(g.road, g.arrived_at)
        fold.grid.record_arrival(g.grid, g.arrived_at)
    return given


def evaluate(
    fold: _Fold,
    test: list[Trip],
    primed: list[Given],
    out: dict[str, list[Prediction]],
    levels: Counter[Level],
    road_fallbacks: Counter[str],
) -> None:
    """Predictions in time order; a test trip's residuals are recorded when it arrives.
    The causal calibration also records the priming arrivals, at their arrival time
    only, so each of its P50s uses trips that had already ended."""
    causal = Residuals()
    events: list[tuple[Any, int, int, int]] = []  # (time, kind: 0 arrive 1 predict, trip, i)
    for t, trip in enumerate(test):
        n = len(trip.fixes)
        events.append((trip.fixes[-1].ts, 0, t, n - 1))
        events.extend((trip.fixes[round(q * (n - 1))].ts, 1, t, k) for k, q in enumerate(FRACTIONS))
    events.extend((g.arrived_at, 0, -1 - i, 0) for i, g in enumerate(primed))
    events.sort()
    pending: dict[int, list[tuple[EtaEstimator, StopEta]]] = {}
    for ts, kind, t, k in events:
        if t < 0:  # a priming arrival: only the causal calibration learns it now
            _settle(causal, primed[-1 - t].road, primed[-1 - t].arrived_at)
            continue
        trip = test[t]
        end = trip.fixes[-1]
        if kind == 0:
            for estimator, eta in pending.pop(t, []):
                estimator.record_arrival(eta, end.ts)
                if estimator is fold.road:
                    _settle(causal, eta, end.ts)
            continue
        q = FRACTIONS[k]
        i = round(q * (len(trip.fixes) - 1))
        here = trip.fixes[i]
        actual = (end.ts - ts).total_seconds()
        stop = [Stop(trip.trip_id, end.lat, end.lon)]
        heading = fold.heading(trip.fixes, i)
        road = fold.road.estimate(here.lat, here.lon, ts, stop, heading)[0]
        grid = fold.grid.estimate(here.lat, here.lon, ts, stop, heading)[0]
        pending.setdefault(t, []).extend(((fold.road, road), (fold.grid, grid)))
        road_fallbacks[road.method] += 1
        cell = h3.latlng_to_cell(here.lat, here.lon, PROFILE_RES)
        levels[fold.profile.lookup(cell, hour_of_week(ts, FLEET_ZONE)).level] += 1
        straight = haversine_m(here.lat, here.lon, end.lat, end.lon)
        recent = recent_speed(trip.fixes, i, fold.fleet_speed)
        causal_p50, causal_p90 = causal.quantiles(road.method, road.travel_s)
        for name, predicted, p90 in (
            (ROAD, road.p50_s, road.p90_s),
            (GRID, grid.p50_s, grid.p90_s),
            (ROAD_CAUSAL, causal_p50, causal_p90),
            (ROAD_RAW, road.travel_s, None),
            (GRID_RAW, grid.travel_s, None),
            (FLEET, straight / fold.fleet_speed, None),
            (RECENT, straight / recent, None),
        ):
            out[name].append(Prediction(q, actual, predicted, p90, road.method == "road"))


def _settle(residuals: Residuals, eta: StopEta, arrived_at: Any) -> None:
    actual = (arrived_at - eta.computed_at).total_seconds() - eta.service_s
    if actual > 0:
        residuals.record(eta.method, eta.travel_s, actual)


def accuracy(method: str, subset: str, predictions: list[Prediction]) -> Accuracy:
    errors = [abs(p.predicted_s - p.actual_s) for p in predictions]
    with_p90 = [p for p in predictions if p.p90_s is not None]
    coverage = (
        sum(p.actual_s <= p.p90_s for p in with_p90 if p.p90_s is not None) / len(with_p90)
        if with_p90
        else None
    )
    return Accuracy(
        method,
        subset,
        len(predictions),
        statistics.fmean(errors),
        statistics.median(errors),
        statistics.quantiles(errors, n=10)[-1],
        statistics.fmean(p.predicted_s - p.actual_s for p in predictions),
        coverage,
        {
            f"{q:.0%}": statistics.fmean(
                abs(p.predicted_s - p.actual_s) for p in predictions if p.fraction == q
            )
            for q in FRACTIONS
        },
    )


def _time_updates(
    case: str, estimator: EtaEstimator, trips: list[Trip], extra_stops: int
) -> Timing:
    """Every fix of every trip, in fix-time order across trips, as a live tracker sees
    them: one `estimate` per fix to the trip's end (and `extra_stops` further stops)."""
    router = estimator.router
    ends = [Stop(t.trip_id, t.fixes[-1].lat, t.fixes[-1].lon, 120.0) for t in trips]
    stops = [
        [ends[(t + s) % len(trips)] for s in range(extra_stops + 1)] for t in range(len(trips))
    ]
    updates = sorted(
        (fix.ts, t, i) for t, trip in enumerate(trips) for i, fix in enumerate(trip.fixes)
    )
    samples: list[float] = []
    clock = time.perf_counter_ns
    for ts, t, i in updates:
        fix = trips[t].fixes[i]
        heading = heading_at(trips[t].fixes, i)
        started = clock()
        estimator.estimate(fix.lat, fix.lon, ts, stops[t], heading)
        samples.append((clock() - started) / _NS_PER_US)
    centiles = statistics.quantiles(samples, n=100)
    return Timing(
        case,
        len(samples),
        statistics.median(samples),
        centiles[98],
        statistics.fmean(samples),
        max(samples),
        router.searches_started if router else 0,
        router.searches_evicted if router else 0,
    )


def run(quick: bool, log: Callable[[str], None]) -> Run:
    started = time.perf_counter()
    trips = load_trips()
    fixes = porto.load_fixes()
    load_started = time.perf_counter()
    graph = load_roads(roads_path())
    load_s = time.perf_counter() - load_started
    log(f"road graph: {graph.node_count:,} nodes, {graph.edge_count:,} edges in {load_s:.2f} s")
    folds = QUICK_FOLDS if quick else FOLDS
    groups = split_taxis(trips, FOLDS)
    excluded: Counter[str] = Counter()
    predictions: dict[str, list[Prediction]] = {m: [] for m in METHODS}
    levels: Counter[Level] = Counter()
    road_methods: Counter[str] = Counter()
    grid_levels: Counter[Level] = Counter()
    edge_share: list[float] = []
    profile_stats = SegmentStats()
    test_trips: list[Trip] = []
    first: _Fold | None = None
    calibration: list[dict[str, Any]] = []
    for k in range(folds):
        test_taxis = groups[k]
        train_taxis = {t.taxi for t in trips} - test_taxis
        fold = learn([f for f in fixes if f.device_id in train_taxis], graph)
        first = first or fold
        profile_stats = profile_stats.add(fold.profile.stats)
        test = []
        for trip in trips:
            if trip.taxi in test_taxis:
                reason = exclusion(trip)
                excluded[reason or "tested"] += 1
                if reason is None:
                    test.append(trip)
        primed = prime(fold, trips, fixes, train_taxis, graph)
        calibration.append(_lines(fold))
        log(
            f"fold {k + 1}/{folds}: {len(test)} test trips, {fold.profile.samples:,} samples,"
            f" {len(primed)} priming ETAs; residual lines {calibration[-1]}"
        )
        evaluate(fold, test, primed, predictions, levels, road_methods)
        grid_levels.update(fold.grid.grid_levels)
        hours = {hour_of_week(t.fixes[0].ts, FLEET_ZONE) for t in test}
        edges = [fold.router.edge_times(h) for h in sorted(hours)]
        edge_share.extend(e.from_profile / graph.edge_count for e in edges)
        test_trips.extend(test)
    assert first is not None
    result = Run(machine=describe(), config={})
    for subset in ("all", "on_graph"):
        rows = [
            accuracy(m, subset, [p for p in predictions[m] if subset == "all" or p.on_graph])
            for m in METHODS
        ]
        best = min(a.mae_s for a in rows if a.method in BASELINES)
        for a in rows:
            a.vs_best_baseline = 1 - a.mae_s / best
        result.accuracy.extend(rows)
        if subset == "all":
            result.target_met = {
                a.method: a.mae_s <= (1 - TARGET_REDUCTION) * best
                for a in rows
                if a.method in (ROAD, GRID)
            }
    result.fallback = {
        "test_positions": _shares(levels),
        "grid_cells": _shares(grid_levels),
        "road_edges_from_profile": statistics.fmean(edge_share),
        "road_estimates_on_grid": road_methods["grid"] / max(1, sum(road_methods.values())),
    }
    log("timing one ETA update on a replay of every fix ...")
    timed = test_trips[: QUICK_TIMING_TRIPS if quick else TIMING_TRIPS]

    def estimator(on_graph: bool) -> EtaEstimator:
        """Fresh caches for each case: the first fix of each trip pays for its search.
        The residuals are the fold's, so the P50/P90 lines are the fitted ones."""
        router = Router(graph, first.profile, FLEET_ZONE) if on_graph else None
        residuals = (first.road if on_graph else first.grid).residuals
        return EtaEstimator(
            first.profile, first.detours, FLEET_ZONE, router=router, residuals=residuals
        )

    result.timing = [
        _time_updates(f"{name}, {stops + 1} stop(s)", estimator(on_graph), timed, stops)
        for name, on_graph in (("road graph", True), ("H3 grid", False))
        for stops in (0, EXTRA_STOPS)
    ]
    result.config = {
        "quick": quick,
        "trips": len(trips),
        "taxis": len({t.taxi for t in trips}),
        "folds_run": folds,
        "test_trips": excluded["tested"],
        "excluded": {r: n for r, n in excluded.items() if r != "tested"},
        "exclusion_rules": {
            "gps_outlier_mps": SegmentRules().max_speed_mps,
            "min_trip_s": MIN_TRIP_S,
            "min_trip_straight_m": MIN_TRIP_STRAIGHT_M,
        },
        "fractions": list(FRACTIONS),
        "zone": str(FLEET_ZONE),
        "segments_used": profile_stats.used,
        "segments_excluded": {
            "too_fast": profile_stats.too_fast,
            "too_short": profile_stats.too_short,
            "too_long": profile_stats.too_long,
        },
        "graph": {
            "nodes": graph.node_count,
            "edges": graph.edge_count,
            "junctions": first.router.chains.junction_count,
            "chains": first.router.chains.chain_count,
            "load_s": load_s,
        },
        "fleet_mean_speed_mps": first.fleet_speed,
        "prime_parts": PRIME_PARTS,
        "residual_lines_after_priming": calibration,
        "timing_trips": len(timed),
        "residual_fit_ms": _fit_ms(first.road.residuals),
        "seconds": time.perf_counter() - started,
    }
    return result


def _fit_ms(residuals: Residuals) -> float:
    """Milliseconds to refit the road method's P50 and P90 lines on a full window."""
    residuals.refit_every = 0
    started = time.perf_counter()
    residuals.lines(EtaMethod.ROAD)
    elapsed = time.perf_counter() - started
    residuals.refit_every = REFIT_EVERY
    return elapsed * 1_000


def _lines(fold: _Fold) -> dict[str, Any]:
    """The P50/P90 lines (slope, intercept s) each method's residuals give now."""
    return {
        f"{name} {method}": {
            q: [round(v, 3) for v in line]
            for q, line in zip(("p50", "p90"), estimator.residuals.lines(method), strict=True)
        }
        for name, estimator in (("road", fold.road), ("grid", fold.grid))
        for method in EtaMethod
        if estimator.residuals.count(method)
    }


def _shares(counts: Counter[Level]) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {level.value: counts[level] / total for level in Level if counts[level]}
