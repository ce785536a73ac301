"""Which vehicle follows which delivery as rows are reloaded."""

from __future__ import annotations

from tests.unit.tracker.test_deliveries import delivery
from tracker.deliveries import DeliveryMachine, DeliveryState
from tracker.delivery_tracking import DeliveryTracking


def held(tracking: DeliveryTracking) -> dict[str, set[str]]:
    return {vehicle: set(own) for vehicle, own in tracking.by_vehicle.items() if own}


def test_a_reassigned_delivery_moves_to_its_new_vehicle() -> None:
    tracking = DeliveryTracking(DeliveryMachine())
    assert tracking.load([delivery(id="d1"), delivery(id="d2")]) == {"van"}
    assert tracking.load([delivery(id="d1", vehicle_id="van-2")]) == {"van-2"}
    assert held(tracking) == {"van": {"d2"}, "van-2": {"d1"}}


def test_an_unchanged_row_touches_no_vehicle() -> None:
    tracking = DeliveryTracking(DeliveryMachine())
    tracking.load([delivery(id="d1")])
    assert tracking.load([delivery(id="d1")]) == set()


def test_a_delivery_no_longer_active_is_forgotten() -> None:
    tracking = DeliveryTracking(DeliveryMachine())
    tracking.load([delivery(id="d1"), delivery(id="d2")])
    assert tracking.load([delivery(id="d1", state=DeliveryState.DELIVERED)]) == {"van"}
    assert held(tracking) == {"van": {"d2"}}
    assert tracking.load([delivery(id="d1", state=DeliveryState.DELIVERED)]) == set()


def test_dropped_deliveries_are_forgotten_wherever_they_were() -> None:
    tracking = DeliveryTracking(DeliveryMachine())
    tracking.load([delivery(id="d1"), delivery(id="d2", vehicle_id="van-2")])
    tracking.drop(["d2", "unknown"])
    assert held(tracking) == {"van": {"d1"}}
    tracking.load([delivery(id="d2", vehicle_id="van-2")])
    assert held(tracking) == {"van": {"d1"}, "van-2": {"d2"}}
