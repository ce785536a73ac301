"""tracker.geofencing: enter/exit/dwell/cross/altitude_breach by fix time, hysteresis,
the outlier filter, late and duplicate fixes, the reorder window, checkpoints."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import TypedDict

import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tracker.events import Event, EventKind
from tracker.fence_index import FenceIndex
from tracker.fences import Fence, Schedule, Window
from tracker.geofencing import GeofenceEngine, GeofenceRules
from tracker.positions import DeviceKind, Fix
from tracker.shapes import AltitudeBand, Circle, Datum, Polygon, destination

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # a Friday
LAT, LON = 41.15, -8.61
NO_WINDOW = GeofenceRules(reorder_window_s=0.0)

ENTER, EXIT, DWELL, CROSS, BREACH = (
    EventKind.ENTER,
    EventKind.EXIT,
    EventKind.DWELL,
    EventKind.CROSS,
    EventKind.ALTITUDE_BREACH,
)


def box(west: float, south: float, east: float, north: float) -> tuple[tuple[float, float], ...]:
    return ((west, south), (east, south), (east, north), (west, north), (west, south))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fix(
    seconds: float,
    lat: float = LAT,
    lon: float = LON,
    device: str = "van",
    kind: DeviceKind | None = DeviceKind.VEHICLE,
    alt: float | None = None,
    rel_alt: float | None = None,
) -> Fix:
    ts = at(seconds)
    return Fix(
        device_id=device,
        ts=ts,
        lat=lat,
        lon=lon,
        received_at=ts,
        alt=alt,
        rel_alt=rel_alt,
        kind=kind,
    )


class Where(TypedDict):
    lat: float
    lon: float


def away(metres: float, bearing: float = 90.0, lat: float = LAT, lon: float = LON) -> Where:
    """lat/lon keyword arguments of the point `metres` from (lat, lon) along `bearing`."""
    plon, plat = destination(lat, lon, bearing, metres)
    return {"lat": plat, "lon": plon}


def engine(*fences: Fence, rules: GeofenceRules = NO_WINDOW) -> GeofenceEngine:
    return GeofenceEngine(FenceIndex(fences), rules)


def run(
    eng: GeofenceEngine, fixes: Iterable[Fix], groups: frozenset[str] = frozenset()
) -> list[Event]:
    events: list[Event] = []
    for f in fixes:
        events.extend(eng.offer(f, groups))
    return events


def brief(events: Iterable[Event]) -> list[tuple[str, str | None, float]]:
    return [(e.kind.value, e.fence_id, (e.ts - T0).total_seconds()) for e in events]


CIRCLE = Fence("circle", "circle", Circle(LAT, LON, 100.0))
SQUARE = Fence("square", "square", Polygon(box(-8.62, 41.14, -8.60, 41.16)))


# --- enter / exit -----------------------------------------------------------------------


def test_enter_at_first_fix_inside_and_exit_after() -> None:
    eng = engine(CIRCLE)
    events = run(eng, [fix(0), fix(10), fix(20, **away(150)), fix(30, **away(160))])
    assert brief(events) == [("enter", "circle", 0), ("exit", "circle", 20)]
    enter = events[0]
    assert (enter.device_id, enter.lat, enter.lon) == ("van", LAT, LON)
    assert eng.inside_fences("van") == frozenset()
    assert eng.counts["evaluated"] == 4


def test_no_events_while_outside_and_enter_from_outside() -> None:
    eng = engine(CIRCLE)
    events = run(eng, [fix(0, **away(500)), fix(10, **away(300)), fix(20, **away(50))])
    assert brief(events) == [("enter", "circle", 20)]
    assert eng.inside_fences("van") == {"circle"}


def test_a_point_on_the_polygon_boundary_is_inside() -> None:
    eng = engine(SQUARE)
    events = run(eng, [fix(0, lat=41.13, lon=-8.61), fix(10, lat=41.14, lon=-8.61)])
    assert brief(events) == [("enter", "square", 10)]


def test_event_ids_are_deterministic() -> None:
    track = [fix(0, **away(500)), fix(10), fix(20, **away(500))]
    first = [e.id for e in run(engine(CIRCLE), track)]
    again = [e.id for e in run(engine(CIRCLE), track)]
    assert first == again
    assert len(set(first)) == 2


def test_devices_are_independent() -> None:
    eng = engine(CIRCLE)
    events = run(eng, [fix(0, device="a"), fix(0, device="b", **away(500)), fix(5, device="a")])
    assert [(e.device_id, e.kind.value) for e in events] == [("a", "enter")]


# --- dwell ------------------------------------------------------------------------------

DWELLING = Fence("depot", "depot", Circle(LAT, LON, 100.0), dwell_s=60)


def test_dwell_by_fix_time_once_per_visit() -> None:
    eng = engine(DWELLING)
    events = run(
        eng,
        [
            fix(0, **away(10)),
            fix(30),
            fix(59),
            fix(61),  # past the deadline: dwell at 0 + 60
            fix(200),
            fix(210, **away(500)),
            fix(300),  # a new visit
            fix(370),
        ],
    )
    assert brief(events) == [
        ("enter", "depot", 0),
        ("dwell", "depot", 60),
        ("exit", "depot", 210),
        ("enter", "depot", 300),
        ("dwell", "depot", 360),
    ]
    dwell = events[1]
    # The dwell carries the position of the fix that started the visit.
    assert (dwell.lat, dwell.lon) == (away(10)["lat"], away(10)["lon"])


def test_dwell_fires_when_the_exit_comes_after_the_deadline() -> None:
    events = run(engine(DWELLING), [fix(0), fix(50), fix(70, **away(500))])
    assert brief(events) == [("enter", "depot", 0), ("dwell", "depot", 60), ("exit", "depot", 70)]


def test_no_dwell_when_the_visit_is_shorter() -> None:
    events = run(engine(DWELLING), [fix(0), fix(50), fix(60, **away(500)), fix(200)])
    assert brief(events) == [("enter", "depot", 0), ("exit", "depot", 60), ("enter", "depot", 200)]


def test_dwell_zero_fires_with_the_enter() -> None:
    fence = Fence("zero", "zero", Circle(LAT, LON, 100.0), dwell_s=0)
    assert brief(run(engine(fence), [fix(0)])) == [("enter", "zero", 0), ("dwell", "zero", 0)]


def test_dwell_by_tick_for_a_silent_device() -> None:
    rules = GeofenceRules(reorder_window_s=5.0)
    eng = engine(DWELLING, rules=rules)
    assert brief(run(eng, [fix(0), fix(10)])) == [("enter", "depot", 0)]
    assert eng.tick(at(14)) == []
    assert eng.tick(at(15)) == []  # 10 released by silence: inside, nothing new
    assert eng.counts["evaluated"] == 2
    assert eng.tick(at(62)) == []  # deadline 60, plus the reorder window
    assert brief(eng.tick(at(65))) == [("dwell", "depot", 60)]
    assert eng.tick(at(500)) == []  # once per visit
    assert run(eng, [fix(600)]) == []  # still the same visit


def test_tick_dwell_waits_for_held_fixes_before_the_deadline() -> None:
    eng = engine(DWELLING, rules=GeofenceRules(reorder_window_s=5.0))
    events = run(eng, [fix(0), fix(58, **away(500)), fix(59, **away(500))])
    assert brief(events) == [("enter", "depot", 0)]  # 58 and 59 still held
    assert eng.tick(at(62)) == []
    # 58 is a window old: released, its exit ends the visit before the deadline (60).
    assert brief(eng.tick(at(63))) == [("exit", "depot", 58)]
    assert eng.tick(at(1000)) == []


def test_offline_cancels_a_pending_dwell() -> None:
    eng = engine(DWELLING)
    run(eng, [fix(0)])
    assert eng.device_offline("van", at(30)) == []
    assert eng.tick(at(1000)) == []
    assert run(eng, [fix(1010)]) == []  # back, still inside: that visit's dwell is gone


def test_offline_after_the_deadline_fires_the_dwell_at_the_deadline() -> None:
    eng = engine(DWELLING)
    run(eng, [fix(0)])
    assert brief(eng.device_offline("van", at(61))) == [("dwell", "depot", 60)]
    assert eng.tick(at(1000)) == []
    assert eng.device_offline("nobody", at(0)) == []


# --- cross ------------------------------------------------------------------------------

SMALL = Fence("small", "small", Circle(LAT, LON, 20.0))


def test_cross_when_both_fixes_are_outside() -> None:
    eng = engine(SMALL)
    events = run(eng, [fix(0, **away(300, 270)), fix(15, **away(300, 90))])
    assert brief(events) == [("cross", "small", 15)]
    assert (events[0].lat, events[0].lon) == (away(300, 90)["lat"], away(300, 90)["lon"])


def test_no_cross_when_the_segment_passes_by_or_an_end_is_inside() -> None:
    north = away(50, 0)
    passing = [
        fix(0, **away(300, 270, lat=north["lat"], lon=north["lon"])),
        fix(15, **away(300, 90, lat=north["lat"], lon=north["lon"])),
    ]
    assert run(engine(SMALL), passing) == []
    into = [fix(0, **away(300, 270)), fix(15), fix(30, **away(300, 90))]
    assert [e.kind for e in run(engine(SMALL), into)] == [ENTER, EXIT]


def test_cross_of_a_polygon_and_not_through_its_hole() -> None:
    ring = Fence(
        "ring",
        "ring",
        Polygon(box(-8.62, 41.14, -8.60, 41.16), (box(-8.615, 41.145, -8.605, 41.155),)),
    )
    assert brief(run(engine(ring), [fix(0, lat=41.13), fix(10, lat=41.17)])) == [
        ("cross", "ring", 10)
    ]
    assert run(engine(ring), [fix(0, lat=41.148), fix(10, lat=41.152)]) == []


# --- hysteresis -------------------------------------------------------------------------


def test_margin_delays_enter_and_exit() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(margin_m=10.0, reorder_window_s=0.0))
    events = run(
        eng,
        [
            fix(0, **away(200)),
            fix(10, **away(95)),  # 5 m inside: not enough
            fix(20, **away(85)),  # 15 m inside: enter
            fix(30, **away(105)),  # 5 m outside: not enough
            fix(40, **away(95)),
            fix(50, **away(115)),  # 15 m outside: exit
        ],
    )
    assert brief(events) == [("enter", "circle", 20), ("exit", "circle", 50)]


def test_margin_against_a_polygon_edge() -> None:
    eng = engine(SQUARE, rules=GeofenceRules(margin_m=10.0, reorder_window_s=0.0))
    edge = {"lat": 41.14, "lon": -8.61}  # on the south edge
    events = run(
        eng,
        [
            fix(0, **away(100, 180, **edge)),
            fix(10, **away(5, 0, **edge)),  # 5 m inside
            fix(20, **away(15, 0, **edge)),  # 15 m inside: enter
            fix(30, **away(8, 180, **edge)),  # 8 m outside
            fix(40, **away(12, 180, **edge)),  # 12 m outside: exit
        ],
    )
    assert brief(events) == [("enter", "square", 20), ("exit", "square", 40)]


def test_margin_on_the_first_fix() -> None:
    rules = GeofenceRules(margin_m=10.0, reorder_window_s=0.0)
    assert run(engine(CIRCLE, rules=rules), [fix(0, **away(95))]) == []
    assert brief(run(engine(CIRCLE, rules=rules), [fix(0, **away(80))])) == [("enter", "circle", 0)]


def test_confirm_fixes_switch_after_a_run_at_its_first_fix() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(confirm_fixes=3, reorder_window_s=0.0))
    out = away(300)
    events = run(
        eng,
        [
            fix(0, **out),
            fix(10),
            fix(20),
            fix(30, **out),  # the run of 2 is broken
            fix(40, **away(5)),
            fix(50),
            fix(60),  # a run of 3: enter at 40
            fix(70, **out),
            fix(80),  # jitter: no exit
            fix(90, **out),
            fix(100, **out),
            fix(110, **out),  # exit at 90
        ],
    )
    assert brief(events) == [("enter", "circle", 40), ("exit", "circle", 90)]
    assert (events[0].lat, events[0].lon) == (away(5)["lat"], away(5)["lon"])


def test_jitter_across_the_edge_is_absorbed_by_either_setting() -> None:
    track = [fix(i * 10, **away(97 if i % 2 else 103)) for i in range(20)]
    plain = run(engine(CIRCLE), track)
    assert len(plain) == 19  # enter/exit at every fix but the first without hysteresis
    margin = GeofenceRules(margin_m=5.0, reorder_window_s=0.0)
    assert run(engine(CIRCLE, rules=margin), track) == []
    confirm = GeofenceRules(confirm_fixes=2, reorder_window_s=0.0)
    assert run(engine(CIRCLE, rules=confirm), track) == []


# --- outliers, late and duplicate fixes, the reorder window -------------------------------


def test_outlier_is_skipped_and_counted() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(max_speed_mps=50.0, reorder_window_s=0.0))
    far = away(10_000)  # 10 km in 15 s: 667 m/s
    events = run(eng, [fix(0, **away(500)), fix(15, **far), fix(30, **away(400)), fix(45)])
    assert brief(events) == [("enter", "circle", 45)]
    assert eng.counts["outliers"] == 1
    assert eng.counts["evaluated"] == 3


def test_outlier_jump_into_a_fence_makes_no_events() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(max_speed_mps=50.0, reorder_window_s=0.0))
    start = away(20_000)
    assert run(eng, [fix(0, **start), fix(15), fix(30, **start)]) == []
    assert eng.counts["outliers"] == 1


def test_a_bad_anchor_is_replaced_after_a_run_of_outliers() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(max_speed_mps=50.0, reorder_window_s=0.0))
    # The first fix is the glitch; the device really is inside the circle.
    events = run(eng, [fix(0, **away(50_000)), *(fix(10 * i) for i in range(1, 8))])
    assert eng.counts["outliers"] == 5
    assert eng.counts["outlier_resets"] == 1
    assert brief(events) == [("enter", "circle", 60)]


def test_late_and_duplicate_fixes_make_no_events() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(reorder_window_s=5.0))
    assert run(eng, [fix(10, **away(500)), fix(20, **away(500))]) == []  # 10 released
    assert run(eng, [fix(5)]) == []  # older than the last evaluated fix: late
    assert eng.counts["late"] == 1
    assert run(eng, [fix(10)]) == []  # the same time as an evaluated fix
    assert run(eng, [fix(20)]) == []  # the same time as a held fix
    assert eng.counts["duplicates"] == 2
    assert eng.flush() == []
    assert eng.counts["evaluated"] == 2


def test_out_of_order_within_the_window_is_reordered() -> None:
    fixes = [fix(0, **away(500)), fix(3), fix(6, **away(500)), fix(9)]
    in_order = engine(CIRCLE, rules=GeofenceRules(reorder_window_s=5.0))
    expected = run(in_order, fixes) + in_order.flush()
    eng = engine(CIRCLE, rules=GeofenceRules(reorder_window_s=5.0))
    got = run(eng, [fixes[1], fixes[0], fixes[3], fixes[2]]) + eng.flush()
    assert got == expected
    assert brief(got) == [("enter", "circle", 3), ("exit", "circle", 6), ("enter", "circle", 9)]
    assert eng.counts["late"] == 0


def test_window_releases_by_newest_fix_time_and_by_tick() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(reorder_window_s=5.0))
    assert run(eng, [fix(0)]) == []  # held
    assert run(eng, [fix(4)]) == []  # 4 - 0 < 5: still held
    assert brief(run(eng, [fix(5)])) == [("enter", "circle", 0)]  # 5 - 0 >= 5
    assert eng.tick(at(8)) == []
    assert eng.counts["evaluated"] == 1  # 4 and 5 held until the clock is 5 s past them
    assert eng.tick(at(9)) == []  # 4 released: inside, no event
    assert eng.counts["evaluated"] == 2
    assert eng.tick(at(10)) == []
    assert eng.counts["evaluated"] == 3


def test_a_device_reporting_more_often_than_the_window_waits_only_the_window() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(reorder_window_s=5.0))
    fixes = [fix(0, **away(500)), fix(4), fix(8)]  # every 4 s, entering at 4
    assert run(eng, fixes) == []  # 8 - 4 < 5: the fix at 8 does not release the one at 4
    assert brief(eng.tick(at(9))) == [("enter", "circle", 4)]


def test_a_device_flushing_an_hour_of_buffer_gets_its_events_in_order() -> None:
    eng = engine(CIRCLE, rules=GeofenceRules(reorder_window_s=5.0))
    run(eng, [fix(0, **away(500))])
    buffered = [fix(60 * i, **away(500 if i % 2 else 0)) for i in range(1, 62)]
    events = run(eng, buffered) + eng.flush()
    assert [e.kind for e in events] == [ENTER, EXIT] * 30
    assert events == sorted(events, key=lambda e: e.ts)
    assert eng.counts["late"] == 0


# --- altitude ---------------------------------------------------------------------------

BAND = Fence(
    "airspace",
    "airspace",
    Circle(LAT, LON, 500.0),
    kinds=frozenset({DeviceKind.DRONE}),
    altitude=AltitudeBand(None, 120.0, Datum.TAKEOFF),
)


def drone(seconds: float, rel_alt: float | None, **where: float) -> Fix:
    return fix(seconds, device="drone", kind=DeviceKind.DRONE, rel_alt=rel_alt, **where)


def test_altitude_band_enter_exit_and_breach_once_per_episode() -> None:
    eng = engine(BAND)
    events = run(
        eng,
        [
            drone(0, 50.0),
            drone(10, 130.0),  # above the ceiling: outside the fence, a breach
            drone(20, 140.0),  # the same episode
            drone(30, None),  # no altitude: judged in 2D (inside), no breach
            drone(40, 100.0),  # back in the band
            drone(50, 125.0),  # a new episode
            drone(60, 125.0, **away(900)),  # outside in 2D: no breach
        ],
    )
    assert brief(events) == [
        ("enter", "airspace", 0),
        ("altitude_breach", "airspace", 10),
        ("exit", "airspace", 10),
        ("enter", "airspace", 30),
        ("altitude_breach", "airspace", 50),
        ("exit", "airspace", 50),
    ]
    assert "takeoff 130.0 m outside [-, 120]" in events[1].detail


def test_amsl_band_uses_alt_and_the_floor() -> None:
    fence = Fence("low", "low", Circle(LAT, LON, 500.0), altitude=AltitudeBand(100.0, 200.0))
    events = run(engine(fence), [fix(0, alt=90.0), fix(10, alt=100.0), fix(20, alt=150.0)])
    assert brief(events) == [("altitude_breach", "low", 0), ("enter", "low", 10)]


def test_a_drone_flying_over_a_fence_is_no_cross_unless_through_the_band() -> None:
    west, east = away(800, 270), away(800, 90)
    over = [drone(0, 200.0, **west), drone(20, 200.0, **east)]
    assert run(engine(BAND), over) == []
    through = [drone(0, 20.0, **west), drone(20, 200.0, **east)]
    assert brief(run(engine(BAND), through)) == [("cross", "airspace", 20)]


def test_a_drone_climbing_straight_through_the_band_crosses_it() -> None:
    band = Fence(
        "corridor",
        "corridor",
        Circle(LAT, LON, 500.0),
        kinds=frozenset({DeviceKind.DRONE}),
        altitude=AltitudeBand(50.0, 120.0, Datum.TAKEOFF),
    )
    climb = [drone(0, 20.0), drone(20, 200.0)]  # below the band, then above, not moving
    assert brief(run(engine(band), climb)) == [
        ("altitude_breach", "corridor", 0),
        ("cross", "corridor", 20),
    ]
    hover = [drone(0, 20.0), drone(20, 30.0)]
    assert brief(run(engine(band), hover)) == [("altitude_breach", "corridor", 0)]


def test_a_parked_device_outside_crosses_nothing() -> None:
    parked = [fix(t, **away(150)) for t in (0, 10, 20)]
    assert run(engine(CIRCLE), parked) == []


# --- who and when a fence applies to ------------------------------------------------------


def test_kinds_and_groups_select_the_devices() -> None:
    assert run(engine(BAND), [fix(0, rel_alt=50.0)]) == []  # a vehicle: not for it
    grouped = Fence("g", "g", Circle(LAT, LON, 100.0), groups=frozenset({"north"}))
    assert run(engine(grouped), [fix(0)], groups=frozenset({"south"})) == []
    assert [e.kind for e in run(engine(grouped), [fix(0)], frozenset({"north", "x"}))] == [ENTER]


def test_schedule_ignores_fixes_outside_its_windows() -> None:
    # Active on Fridays 09:00-10:00 Lisbon time (UTC in winter); T0 is Friday 09:00 UTC.
    schedule = Schedule("Europe/Lisbon", (Window(frozenset({4}), time(9), time(10)),))
    fence = Fence("hours", "hours", Circle(LAT, LON, 100.0), schedule=schedule)
    eng = engine(fence)
    events = run(
        eng,
        [
            fix(0),  # 09:00: active, enter
            fix(3600, **away(500)),  # 10:00: inactive, ignored (no exit)
            fix(3600 * 24 * 7 - 60, **away(500)),  # next Friday 08:59: ignored
            fix(3600 * 24 * 7 + 60, **away(500)),  # 09:01: active, exit
        ],
    )
    assert brief(events) == [("enter", "hours", 0), ("exit", "hours", 3600 * 24 * 7 + 60)]


def test_schedule_windows_half_open_overnight_and_in_local_time() -> None:
    lisbon = Schedule(
        "Europe/Lisbon",
        (
            Window(frozenset({0, 1, 2, 3, 4}), time(8), time(18, 30)),
            Window(frozenset({5}), time(22), time(6)),  # Saturday night into Sunday
        ),
    )
    # 2026-07-06 is a Monday; Lisbon is UTC+1 in summer.
    monday = datetime(2026, 7, 6, tzinfo=UTC)
    assert not lisbon.active_at(monday + timedelta(hours=6, minutes=59))  # 07:59 local
    assert lisbon.active_at(monday + timedelta(hours=7))  # 08:00 local: start included
    assert lisbon.active_at(monday + timedelta(hours=17, minutes=29))
    assert not lisbon.active_at(monday + timedelta(hours=17, minutes=30))  # end excluded
    saturday = monday + timedelta(days=5)
    assert not lisbon.active_at(saturday + timedelta(hours=20))  # 21:00 local
    assert lisbon.active_at(saturday + timedelta(hours=21))  # 22:00 local
    assert lisbon.active_at(saturday + timedelta(hours=28))  # Sunday 05:00 local
    assert not lisbon.active_at(saturday + timedelta(hours=29))  # Sunday 06:00 local
    whole_day = Schedule("UTC", (Window(frozenset({6}), time(0), time(0)),))
    assert whole_day.active_at(monday - timedelta(hours=1))  # Sunday 23:00
    assert not whole_day.active_at(monday)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Schedule("Nowhere/Atlantis", (Window(frozenset({1}), time(1), time(2)),)), "zone"),
        (lambda: Schedule("UTC", ()), "at least one window"),
        (lambda: Window(frozenset(), time(1), time(2)), "at least one day"),
        (lambda: Window(frozenset({7}), time(1), time(2)), "0 \\(Monday\\) to 6"),
        (lambda: Fence("bad id", "x", Circle(LAT, LON, 1.0)), "must match"),
        (lambda: Fence("x", "x", Circle(LAT, LON, 1.0), dwell_s=-1.0), "dwell_s"),
    ],
)
def test_fence_and_schedule_validation(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_a_device_of_unknown_kind_only_meets_fences_for_all_kinds() -> None:
    assert not BAND.applies_to(None, frozenset(), T0)
    assert CIRCLE.applies_to(None, frozenset(), T0)
    assert BAND.applies_to(DeviceKind.DRONE, frozenset(), T0)


# --- fences and devices coming and going --------------------------------------------------


def test_a_removed_fence_gives_no_exit() -> None:
    eng = engine(CIRCLE, SQUARE)
    run(eng, [fix(0)])
    assert eng.remove_fence("circle") is CIRCLE
    assert run(eng, [fix(10, lat=41.17)]) == [
        e for e in run(engine(SQUARE), [fix(0), fix(10, lat=41.17)]) if e.ts == at(10)
    ]


def test_a_fence_removed_from_the_index_directly_is_forgotten_quietly() -> None:
    eng = engine(CIRCLE)
    run(eng, [fix(0)])
    eng.index.remove("circle")
    assert run(eng, [fix(10, **away(500))]) == []
    assert eng.inside_fences("van") == frozenset()


def test_remove_device_state_starts_the_device_afresh() -> None:
    eng = engine(CIRCLE)
    run(eng, [fix(0)])
    eng.remove_device_state("van")
    assert [e.kind for e in run(eng, [fix(10)])] == [ENTER]


# --- checkpoints ----------------------------------------------------------------------


def test_snapshot_and_restore_resume_without_repeating_or_missing() -> None:
    rules = GeofenceRules(confirm_fixes=2, reorder_window_s=5.0)
    track = [fix(t, **(away(500) if (t // 40) % 2 else away(10))) for t in range(0, 400, 4)] + [
        fix(t, device="other") for t in range(0, 400, 7)
    ]
    track.sort(key=lambda f: f.ts)
    whole = run(engine(DWELLING, SQUARE, rules=rules), track)
    whole += engine(DWELLING, SQUARE, rules=rules).flush()  # nothing held by a fresh one

    first = engine(DWELLING, SQUARE, rules=rules)
    part = run(first, track[:77])
    data = first.snapshot()
    second = GeofenceEngine.restore(FenceIndex([DWELLING, SQUARE]), rules, data)
    part += run(second, track[77:])
    uninterrupted = engine(DWELLING, SQUARE, rules=rules)
    expected = run(uninterrupted, track) + uninterrupted.flush()
    assert part + second.flush() == expected
    assert len(expected) > 10


def test_restore_rejects_another_version() -> None:
    import msgspec

    data = msgspec.msgpack.encode({"version": 99, "devices": {}})
    with pytest.raises(ValueError, match="version"):
        GeofenceEngine.restore(FenceIndex(), None, data)


def test_rules_are_validated() -> None:
    for bad in (
        {"margin_m": -1.0},
        {"confirm_fixes": 0},
        {"max_speed_mps": 0.0},
        {"reorder_window_s": -1.0},
    ):
        with pytest.raises(ValueError):
            GeofenceRules(**bad)


# --- properties -------------------------------------------------------------------------


@st.composite
def polygon_and_track(draw: st.DrawFn) -> tuple[shapely.Polygon, list[tuple[float, float]]]:
    lat = draw(st.floats(-60, 60))
    lon = draw(st.floats(-170, 170))
    radius = draw(st.floats(50.0, 5_000.0))
    n = draw(st.integers(3, 10))
    angles = sorted(draw(st.lists(st.floats(0, 359), min_size=n, max_size=n, unique=True)))
    radii = draw(st.lists(st.floats(0.2, 1.0), min_size=n, max_size=n))
    ring = [destination(lat, lon, a, radius * r) for a, r in zip(angles, radii, strict=True)]
    holes: list[list[tuple[float, float]]] = []
    if draw(st.booleans()):
        holes.append([destination(lat, lon, a, radius * 0.1) for a in (0, 90, 180, 270)])
    polygon = shapely.Polygon(ring, holes)
    assume(polygon.is_valid and polygon.area > 0)
    # A random walk through the polygon's neighbourhood, with some fixes exactly on its
    # vertices (on the boundary: inside).
    steps = draw(st.lists(st.tuples(st.floats(0, 360), st.floats(0, radius)), max_size=40))
    track = [destination(lat, lon, 0, radius * 1.5)]
    for bearing, metres in steps:
        track.append(destination(track[-1][1], track[-1][0], bearing, metres))
    for i in draw(st.lists(st.integers(0, len(ring) - 1), max_size=3)):
        track.insert(draw(st.integers(0, len(track))), ring[i])
    if holes and draw(st.booleans()) is True:
        track.insert(draw(st.integers(0, len(track))), (lon, lat))  # in the hole
    return polygon, track


def as_fence(polygon: shapely.Polygon, dwell_s: float | None = None) -> Fence:
    holes = tuple(tuple(r.coords) for r in polygon.interiors)
    return Fence("p", "p", Polygon(tuple(polygon.exterior.coords), holes), dwell_s=dwell_s)


@settings(max_examples=40, deadline=None)
@given(case=polygon_and_track())
def test_engine_inside_equals_shapely_covers_for_every_fix(
    case: tuple[shapely.Polygon, list[tuple[float, float]]],
) -> None:
    polygon, track = case
    fence = as_fence(polygon)
    eng = engine(fence, Fence("tiny", "tiny", Circle(-33.9, 18.4, 3.0)))
    was = False
    for i, (lon, lat) in enumerate(track):
        events = eng.offer(fix(i * 10, lat=lat, lon=lon))
        now = bool(shapely.covers(polygon, shapely.Point(lon, lat)))
        assert ("p" in eng.inside_fences("van")) is now
        kinds = [e.kind for e in events if e.kind in (ENTER, EXIT)]
        assert kinds == ([] if now == was else [ENTER if now else EXIT])
        was = now


@settings(max_examples=25, deadline=None)
@given(case=polygon_and_track(), seed=st.integers(0, 2**32 - 1), dwell=st.booleans())
def test_shuffling_within_the_reorder_window_does_not_change_events(
    case: tuple[shapely.Polygon, list[tuple[float, float]]], seed: int, dwell: bool
) -> None:
    polygon, track = case
    fence = as_fence(polygon, dwell_s=25.0 if dwell else None)
    rules = GeofenceRules(reorder_window_s=30.0)
    fixes = [fix(i * 10, lat=lat, lon=lon) for i, (lon, lat) in enumerate(track)]
    in_order = engine(fence, rules=rules)
    expected = run(in_order, fixes) + in_order.flush()

    # Each fix arrives before the newest fix time seen exceeds its own by the window:
    # swap neighbours at random within 2 fixes (20 s < 30 s).
    rng = random.Random(seed)
    shuffled = list(fixes)
    for i in range(len(shuffled) - 1):
        j = min(len(shuffled) - 1, i + rng.randint(0, 2))
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    newest = datetime.min.replace(tzinfo=UTC)
    for f in shuffled:
        assume(newest - f.ts < timedelta(seconds=30))
        newest = max(newest, f.ts)

    eng = engine(fence, rules=rules)
    got = run(eng, shuffled) + eng.flush()
    assert got == expected
    assert eng.counts["late"] == 0
