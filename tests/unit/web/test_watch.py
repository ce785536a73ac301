"""What `fleetpulse watch` prints for each message, its summary, and its URL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleetpulse.errors import FleetPulseError
from web.watch import View, dispatch_url

EVENT = {
    "id": "van-1|depot|enter|1795770000000000",
    "device_id": "van-1",
    "kind": "enter",
    "ts": "2026-11-27T09:00:00Z",
    "fence_id": "depot",
    "lat": 38.7,
    "lon": -9.1,
    "alt": None,
    "detail": "",
    "delivery_id": None,
}


def state(device: str, status: str) -> dict[str, object]:
    return {"device_id": device, "status": status, "lat": 1.0, "lon": 2.0}


def test_urls_from_the_web_apps_address() -> None:
    assert dispatch_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/ws/dispatch"
    assert (
        dispatch_url("https://fleet.example/", kinds="enter,exit", since=None)
        == "wss://fleet.example/ws/dispatch?kinds=enter%2Cexit"
    )
    assert dispatch_url("ws://h:1/ws/dispatch", since="a|b") == "ws://h:1/ws/dispatch?since=a%7Cb"
    with pytest.raises(FleetPulseError, match="--url"):
        dispatch_url("127.0.0.1:8080")


def test_events_print_once_even_when_a_resume_repeats_them() -> None:
    view = View()
    [line] = view.apply({"type": "event", "event": EVENT})
    assert line == "09:00:00  enter              van-1 fence=depot  [" + EVENT["id"] + "]"
    assert view.apply({"type": "event", "event": EVENT}) == []
    assert view.last_event_id == EVENT["id"]


def test_a_snapshot_lists_new_alerts_and_positions_feed_the_summary() -> None:
    view = View()
    lines = view.apply(
        {
            "type": "snapshot",
            "devices": [state("van-1", "moving"), state("van-2", "stopped")],
            "alerts": [EVENT],
        }
    )
    assert lines[0] == "snapshot: 2 devices, 1 unacknowledged alerts"
    assert lines[1].startswith("alert 09:00:00  enter")
    assert view.apply({"type": "event", "event": EVENT}) == []  # already listed
    assert view.apply({"type": "positions", "devices": [state("van-3", "moving")]}) == []
    now = datetime(2026, 11, 27, 9, 0, 5, tzinfo=UTC)
    assert view.summary(now, 2.0) == (
        "-- 09:00:05  3 devices: 2 moving, 1 stopped; 1 position updates in 2 s"
    )
    assert view.summary(now, 2.0).endswith("0 position updates in 2 s")


def test_acks_etas_resumes_and_errors_are_printed() -> None:
    view = View()
    [ack] = view.apply(
        {
            "type": "ack",
            "event_id": EVENT["id"],
            "acked_by": "alice",
            "acked_at": "2026-11-27T09:01:00+00:00",
            "note": "called",
        }
    )
    assert ack == f"09:01:00  acknowledged {EVENT['id']} by alice: called"
    [eta] = view.apply(
        {
            "type": "eta",
            "eta": {
                "delivery_id": "d-1",
                "vehicle_id": "van-1",
                "state": "en_route",
                "late_risk": True,
                "p50": "2026-11-27T09:30:00Z",
                "p90": "2026-11-27T09:40:00Z",
                "computed_at": "2026-11-27T09:02:00Z",
                "method": "profile",
            },
        }
    )
    assert eta == "09:02:00  eta d-1 by van-1: p50 09:30:00, p90 09:40:00 (en_route)  LATE RISK"
    assert view.apply({"type": "resumed", "missed": 3}) == ["resumed: 3 missed events sent again"]
    assert view.apply({"type": "error", "detail": "nope"}) == ["server: nope"]
    assert view.apply({"type": "pong"}) == []
