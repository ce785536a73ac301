"""Live state: newest fix wins, status from speed, offline and telemetry gaps by silence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import h3

from tracker.events import EventKind
from tracker.handoff import StatusChange
from tracker.live import LiveRules, LiveTracker, Status, haversine_m, restore, snapshot
from tracker.positions import DeviceKind, Fix

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RULES = LiveRules(
    offline_after=timedelta(minutes=5),
    gap_after=timedelta(minutes=2),
    stopped_speed_mps=0.5,
    fine_res=9,
    coarse_res=6,
)


def fix(seconds: float, lat: float = 41.15, lon: float = -8.61, **extra: object) -> Fix:
    ts = T0 + timedelta(seconds=seconds)
    return Fix(device_id="van", ts=ts, lat=lat, lon=lon, received_at=ts, **extra)  # type: ignore[arg-type]


def test_latest_position_never_goes_back_in_time() -> None:
    tracker = LiveTracker(RULES)
    assert tracker.update(fix(10, lat=41.2))[0] is not None
    state, events = tracker.update(fix(5, lat=41.1))
    assert state is None and events == []
    assert tracker.devices["van"].lat == 41.2
    assert tracker.late == 1
    assert tracker.update(fix(10, lat=41.3))[0] is None, "same fix time changes nothing"
    assert tracker.late == 1


def test_cells_and_fields_are_kept() -> None:
    tracker = LiveTracker(RULES)
    state, _ = tracker.update(fix(0, speed=7.0, heading=90.0, battery=55.0, kind=DeviceKind.DRONE))
    assert state is not None
    assert state.cell == h3.str_to_int(h3.latlng_to_cell(41.15, -8.61, 9))
    assert state.coarse_cell == h3.str_to_int(h3.latlng_to_cell(41.15, -8.61, 6))
    assert (state.speed, state.heading, state.battery, state.kind) == (7.0, 90.0, 55.0, "drone")
    assert state.status is Status.MOVING
    later, _ = tracker.update(fix(1, speed=0.1))
    assert later is not None and later.status is Status.STOPPED
    assert later.kind is DeviceKind.DRONE, "kind remembered when a fix omits it"


def test_speed_is_derived_from_positions_when_not_reported() -> None:
    tracker = LiveTracker(RULES)
    tracker.update(fix(0, lat=41.15))
    state, _ = tracker.update(fix(10, lat=41.1501))
    expected = haversine_m(41.15, -8.61, 41.1501, -8.61) / 10
    assert state is not None and state.speed is not None
    assert abs(state.speed - expected) < 1e-9
    assert state.status is Status.MOVING


def test_silence_gives_one_gap_then_offline_then_online_again() -> None:
    tracker = LiveTracker(RULES)
    tracker.update(fix(0, speed=10.0))
    assert tracker.tick(T0 + timedelta(seconds=119)) == ([], [])
    _, gap = tracker.tick(T0 + timedelta(seconds=121))
    assert [e.kind for e in gap] == [EventKind.TELEMETRY_GAP]
    assert gap[0].ts == T0 + timedelta(minutes=2)
    assert tracker.tick(T0 + timedelta(seconds=200)) == ([], []), "reported once"
    changed, offline = tracker.tick(T0 + timedelta(minutes=5, seconds=1))
    assert [e.kind for e in offline] == [EventKind.OFFLINE]
    assert offline[0].ts == T0 + timedelta(minutes=5)
    assert changed[0].status is Status.OFFLINE
    state, online = tracker.update(fix(400))
    assert [e.kind for e in online] == [EventKind.ONLINE]
    assert state is not None and state.status is Status.STOPPED, "same place: not moving"


def test_a_stopped_device_has_no_gap() -> None:
    tracker = LiveTracker(RULES)
    tracker.update(fix(0, speed=0.0))
    assert tracker.tick(T0 + timedelta(minutes=3)) == ([], [])


def test_last_will_marks_offline_at_once_and_once() -> None:
    tracker = LiveTracker(RULES)
    tracker.update(fix(0))
    will = StatusChange("van", "offline", T0 + timedelta(seconds=30))
    state, events = tracker.status_change(will)
    assert state is not None and state.status is Status.OFFLINE
    assert [(e.kind, e.ts, e.detail) for e in events] == [(EventKind.OFFLINE, will.ts, "last will")]
    assert tracker.status_change(will) == (None, [])
    assert tracker.status_change(StatusChange("ghost", "offline", T0)) == (None, [])


def test_snapshot_round_trip() -> None:
    tracker = LiveTracker(RULES)
    tracker.update(fix(0, speed=3.0, kind=DeviceKind.VEHICLE))
    assert restore(snapshot(tracker.devices)) == tracker.devices


def test_a_last_will_older_than_the_latest_arrival_is_ignored() -> None:
    tracker = LiveTracker(RULES)
    tracker.update(fix(60))  # arrived at T0 + 60 s
    stale = StatusChange("van", "offline", T0 + timedelta(seconds=30))
    assert tracker.status_change(stale) == (None, [])
    assert tracker.devices["van"].status is not Status.OFFLINE
