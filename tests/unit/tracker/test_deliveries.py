"""The delivery state machine: every transition, late risk raised and cleared, changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracker.deliveries import (
    Delivery,
    DeliveryMachine,
    DeliveryRules,
    DeliveryState,
    Eta,
    EtaThrottle,
    next_stop,
)
from tracker.events import EventKind
from tracker.positions import Fix
from tracker.shapes import Polygon

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
DEST = (41.1486, -8.6110)
RULES = DeliveryRules(approach_eta_s=300, approach_distance_m=1000, arrival_dwell_s=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def delivery(**changes: object) -> Delivery:
    values: dict[str, object] = {
        "id": "d1",
        "vehicle_id": "van",
        "dest_lat": DEST[0],
        "dest_lon": DEST[1],
        "drop_radius_m": 50.0,
        "window_start": at(0),
        "window_end": at(3600),
    }
    values.update(changes)
    return Delivery(**values)  # type: ignore[arg-type]


def fix(seconds: float, north_m: float = 0.0, device: str = "van") -> Fix:
    lat = DEST[0] + north_m / 111_195
    return Fix(device, at(seconds), lat, DEST[1], at(seconds))


def eta(p50_s: float, p90_s: float | None = None) -> Eta:
    return Eta(at(p50_s), at(p90_s if p90_s is not None else p50_s + 60), at(0))


def kinds(events: list) -> list[EventKind]:  # type: ignore[type-arg]
    return [e.kind for e in events]


def test_a_whole_delivery_walks_every_state_once() -> None:
    machine, d = DeliveryMachine(RULES), delivery()
    assert kinds(machine.on_fix(d, fix(0, 5000), eta(900), is_next=True)) == [EventKind.EN_ROUTE]
    assert kinds(machine.on_fix(d, fix(60, 4000), eta(900), is_next=True)) == []
    assert kinds(machine.on_fix(d, fix(600, 900), eta(700), is_next=True)) == [
        EventKind.APPROACHING
    ]
    assert machine.on_fix(d, fix(700, 10), eta(700), is_next=True) == []
    assert machine.on_fix(d, fix(720, 5), eta(700), is_next=True) == []
    events = machine.on_fix(d, fix(731, 0), eta(731), is_next=True)
    assert kinds(events) == [EventKind.ARRIVED]
    assert events[0].ts == at(731) and events[0].delivery_id == "d1"
    assert d.state is DeliveryState.ARRIVED
    done = machine.report(d, DeliveryState.DELIVERED, at(800), "left at the door")
    assert kinds(done) == [EventKind.DELIVERED]
    assert done[0].detail == "left at the door"
    assert machine.report(d, DeliveryState.FAILED, at(801)) == [], "final states are final"
    assert machine.on_fix(d, fix(900, 0), eta(900), is_next=True) == []


def test_not_the_next_stop_stays_scheduled() -> None:
    machine, d = DeliveryMachine(RULES), delivery()
    assert machine.on_fix(d, fix(0, 5000), eta(900), is_next=False) == []
    assert d.state is DeliveryState.SCHEDULED


def test_another_vehicles_fix_changes_nothing() -> None:
    machine, d = DeliveryMachine(RULES), delivery()
    assert machine.on_fix(d, fix(0, 0, device="other"), eta(0), is_next=True) == []


def test_approaching_by_eta_even_when_far() -> None:
    machine, d = DeliveryMachine(RULES), delivery(state=DeliveryState.EN_ROUTE)
    assert machine.on_fix(d, fix(0, 3000), eta(400), is_next=True) == []
    assert kinds(machine.on_fix(d, fix(10, 3000), eta(250), is_next=True)) == [
        EventKind.APPROACHING
    ]


def test_arrival_needs_the_dwell_inside_and_restarts_when_leaving() -> None:
    machine, d = DeliveryMachine(RULES), delivery(state=DeliveryState.APPROACHING)
    machine.on_fix(d, fix(0, 10), None, is_next=True)
    machine.on_fix(d, fix(20, 80), None, is_next=True)  # out of the 50 m zone
    assert machine.on_fix(d, fix(40, 10), None, is_next=True) == []
    assert machine.on_fix(d, fix(60, 10), None, is_next=True) == []
    assert kinds(machine.on_fix(d, fix(70, 10), None, is_next=True)) == [EventKind.ARRIVED]


def test_arriving_straight_from_en_route_passes_through_approaching() -> None:
    machine, d = DeliveryMachine(RULES), delivery(state=DeliveryState.EN_ROUTE)
    rules = DeliveryRules(approach_distance_m=0, approach_eta_s=0, arrival_dwell_s=0)
    machine = DeliveryMachine(rules)
    assert kinds(machine.on_fix(d, fix(0, 0), None, is_next=True)) == [
        EventKind.APPROACHING,
        EventKind.ARRIVED,
    ]


def test_polygon_drop_zone() -> None:
    square = Polygon(
        ((-8.612, 41.148), (-8.610, 41.148), (-8.610, 41.149), (-8.612, 41.149), (-8.612, 41.148))
    )
    d = delivery(zone=square, state=DeliveryState.APPROACHING)
    assert d.in_drop_zone(41.1485, -8.611)
    assert not d.in_drop_zone(DEST[0] + 0.01, DEST[1])


def test_late_risk_is_raised_once_and_cleared_once() -> None:
    machine, d = DeliveryMachine(RULES), delivery(state=DeliveryState.EN_ROUTE)
    raised = machine.on_fix(d, fix(0, 5000), eta(3700), is_next=True)
    assert kinds(raised) == [EventKind.LATE_RISK]
    assert "+1.7 min" in raised[0].detail
    assert machine.on_fix(d, fix(10, 5000), eta(3800), is_next=True) == []
    cleared = machine.on_fix(d, fix(20, 4000), eta(3500), is_next=True)
    assert kinds(cleared) == [EventKind.LATE_RISK_CLEARED]
    assert machine.on_fix(d, fix(30, 4000), eta(3400), is_next=True) == []


def test_reports_and_cancellation() -> None:
    machine = DeliveryMachine(RULES)
    failed = delivery(state=DeliveryState.EN_ROUTE)
    assert kinds(machine.report(failed, DeliveryState.FAILED, at(5), "nobody home")) == [
        EventKind.FAILED
    ]
    cancelled = delivery()
    assert kinds(machine.report(cancelled, DeliveryState.CANCELLED, at(5))) == [EventKind.CANCELLED]
    with pytest.raises(ValueError, match="delivered, failed or cancelled"):
        machine.report(delivery(), DeliveryState.ARRIVED, at(5))


def test_reassignment_restarts_the_approach() -> None:
    machine, d = DeliveryMachine(RULES), delivery(state=DeliveryState.APPROACHING)
    machine.on_fix(d, fix(0, 10), None, is_next=True)
    d.vehicle_id = "van-2"
    machine.reassigned(d)
    assert d.state is DeliveryState.SCHEDULED and d.inside_since is None
    assert machine.on_fix(d, fix(5, 10), None, is_next=True) == [], "the old van's fix"
    assert kinds(machine.on_fix(d, fix(6, 5000, device="van-2"), None, is_next=True)) == [
        EventKind.EN_ROUTE
    ]


def test_next_stop_by_sequence_then_window() -> None:
    a = delivery(id="a", sequence=2)
    b = delivery(id="b", sequence=1, window_end=at(7200))
    c = delivery(id="c", sequence=1, window_end=at(1800))
    done = delivery(id="z", sequence=0, state=DeliveryState.DELIVERED)
    assert next_stop([a, b, c, done]) is c
    assert next_stop([done]) is None


def test_event_ids_are_deterministic_and_name_the_delivery() -> None:
    first = DeliveryMachine(RULES).on_fix(delivery(), fix(0, 5000), None, is_next=True)
    again = DeliveryMachine(RULES).on_fix(delivery(), fix(0, 5000), None, is_next=True)
    assert first[0].id == again[0].id
    assert "|d1|en_route|" in first[0].id


def test_eta_throttle() -> None:
    throttle = EtaThrottle(min_shift_s=30, min_shift_ratio=0.10, min_interval_s=5)
    assert throttle.should_publish("d", at(0), at(1000))
    assert not throttle.should_publish("d", at(2), at(1200)), "too soon"
    assert not throttle.should_publish("d", at(10), at(1020)), "20 s is under both limits"
    assert throttle.should_publish("d", at(20), at(1040)), "40 s moves it"
    assert not throttle.should_publish("d", at(100), at(1050)), "10 s of 950 s left"
    assert throttle.should_publish("d", at(1000), at(1060)), "20 s of 60 s left is 33 %"
    throttle.forget("d")
    assert throttle.should_publish("d", at(1001), at(1060))
