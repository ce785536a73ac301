"""The customer's view: exact position only when close, a coarse cell before, nothing of
other stops, nothing at all once the delivery is final."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import h3
import msgspec
import pytest

from tracker.deliveries import Delivery, DeliveryState
from tracker.live import LiveDevice, Status
from tracker.reveal import EtaFacts, RevealRules, customer_view, is_revealed
from tracker.shapes import Circle, Polygon

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
DEST = (41.1486, -8.6110)
VAN = (41.171234, -8.600987)  # about 2.5 km north-east of the destination
RULES = RevealRules(eta=timedelta(minutes=10), stops=1, coarse_res=6)


def delivery(**changes: object) -> Delivery:
    values: dict[str, object] = {
        "id": "p-17",
        "vehicle_id": "van-17",
        "dest_lat": DEST[0],
        "dest_lon": DEST[1],
        "window_start": NOW,
        "window_end": NOW + timedelta(hours=2),
        "state": DeliveryState.EN_ROUTE,
    }
    values.update(changes)
    return Delivery(**values)  # type: ignore[arg-type]


def van(lat: float = VAN[0], lon: float = VAN[1]) -> LiveDevice:
    return LiveDevice(
        "van-17", NOW - timedelta(seconds=3), lat, lon, NOW, 0, 0, Status.MOVING, 8.5, 270.0
    )


def eta_in(minutes: float) -> EtaFacts:
    p50 = NOW + timedelta(minutes=minutes)
    return EtaFacts(p50, p50 + timedelta(minutes=6), NOW - timedelta(seconds=5))


def view(d: Delivery | None = None, eta: EtaFacts | None = None, stops_before: int = 3):  # type: ignore[no-untyped-def]
    return customer_view(d or delivery(), eta, van(), stops_before, RULES, NOW, "Europe/Lisbon")


def test_far_away_shows_only_the_coarse_cell_the_vehicle_is_in() -> None:
    seen = view(eta=eta_in(40), stops_before=3)
    assert not seen.revealed
    assert seen.position is None
    assert seen.area is not None
    assert seen.area.resolution == 6
    assert seen.area.cell == h3.latlng_to_cell(VAN[0], VAN[1], 6)
    # The ring is closed, in [lon, lat] order, and around the vehicle.
    ring = seen.area.boundary
    assert ring[0] == ring[-1] and len(ring) >= 7
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert min(lats) < VAN[0] < max(lats) and min(lons) < VAN[1] < max(lons)
    # ... and the exact coordinates appear nowhere in what is sent.
    encoded = msgspec.json.encode(seen)
    assert str(VAN[0]).encode() not in encoded and str(VAN[1]).encode() not in encoded


def test_eta_under_the_threshold_reveals_the_exact_position() -> None:
    seen = view(eta=eta_in(9.9), stops_before=3)
    assert seen.revealed and seen.area is None
    assert seen.position is not None
    assert (seen.position.lat, seen.position.lon) == VAN
    assert seen.position.speed == 8.5 and seen.position.heading == 270.0
    assert seen.position.ts == NOW - timedelta(seconds=3)


def test_eta_at_the_threshold_is_not_yet_under_it() -> None:
    assert not view(eta=eta_in(10), stops_before=3).revealed


@pytest.mark.parametrize(("stops_before", "revealed"), [(0, True), (1, True), (2, False)])
def test_few_enough_stops_before_this_one_reveal_without_an_eta(
    stops_before: int, revealed: bool
) -> None:
    seen = view(eta=None, stops_before=stops_before)
    assert seen.revealed is revealed
    assert (seen.position is not None) is revealed
    assert (seen.area is not None) is (not revealed)


def test_a_zero_stop_threshold_reveals_only_the_next_stop() -> None:
    rules = RevealRules(eta=timedelta(minutes=10), stops=0, coarse_res=7)
    assert is_revealed(delivery(), None, 0, rules, NOW)
    assert not is_revealed(delivery(), None, 1, rules, NOW)


def test_the_window_eta_and_late_risk_show_whatever_the_reveal() -> None:
    seen = view(d=delivery(late_risk=True), eta=eta_in(130), stops_before=5)
    assert not seen.revealed
    assert seen.late_risk
    assert seen.window.start == NOW and seen.window.end == NOW + timedelta(hours=2)
    assert seen.eta is not None
    assert seen.eta.p50 == NOW + timedelta(minutes=130)
    assert seen.eta.p90 == NOW + timedelta(minutes=136)
    assert seen.stops_before == 5
    assert seen.timezone == "Europe/Lisbon"
    assert seen.state is DeliveryState.EN_ROUTE


def test_arrived_shows_the_vehicle_but_no_eta() -> None:
    seen = view(d=delivery(state=DeliveryState.ARRIVED), eta=eta_in(-1), stops_before=0)
    assert seen.revealed and seen.position is not None
    assert seen.eta is None


@pytest.mark.parametrize(
    "state", [DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.CANCELLED]
)
def test_once_final_nothing_of_the_vehicle_shows(state: DeliveryState) -> None:
    seen = view(d=delivery(state=state, late_risk=True), eta=eta_in(1), stops_before=0)
    assert seen.state is state
    assert not seen.revealed
    assert seen.position is None and seen.area is None
    assert seen.eta is None and seen.stops_before is None
    assert not seen.late_risk


def test_no_live_state_yet_shows_neither_position_nor_area() -> None:
    seen = customer_view(delivery(), eta_in(5), None, 0, RULES, NOW, "UTC")
    assert seen.revealed
    assert seen.position is None and seen.area is None


def test_the_destination_is_the_customers_own_point_or_drawn_zone() -> None:
    assert view().destination.radius_m == 50.0
    assert (view().destination.lat, view().destination.lon) == DEST
    ring = ((-8.612, 41.148), (-8.610, 41.148), (-8.610, 41.149), (-8.612, 41.148))
    zoned = view(d=delivery(zone=Polygon(ring)))
    assert zoned.destination.radius_m is None
    assert zoned.destination.zone == [[list(ring)]]
    circled = view(d=delivery(zone=Circle(41.15, -8.61, 30.0)))
    assert (circled.destination.lat, circled.destination.radius_m) == (41.15, 30.0)


def test_the_view_names_only_this_delivery() -> None:
    encoded = msgspec.json.encode(view(eta=eta_in(5), stops_before=2))
    decoded = msgspec.json.decode(encoded)
    assert decoded["delivery_id"] == "p-17"
    assert b"van-17" not in encoded  # not even which vehicle carries it
    assert set(decoded) == {
        "delivery_id",
        "state",
        "late_risk",
        "window",
        "timezone",
        "eta",
        "stops_before",
        "destination",
        "revealed",
        "position",
        "area",
    }
