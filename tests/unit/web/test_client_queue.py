"""A dispatch client's outbox: positions merge per device when it is full, events never
drop, a client that stays full is too slow, and a held outbox releases behind a
snapshot without repeating what the snapshot carries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from web.client_queue import HARD_LIMIT_FACTOR, Counts, Frame, Outbox, Position, Positions

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def position(device: str, second: int, lat: float = 38.7) -> Position:
    ts = T0 + timedelta(seconds=second)
    body = {"device_id": device, "ts": ts.isoformat(), "lat": lat, "lon": -9.1}
    return Position(device, ts, lat, -9.1, json.dumps(body).encode())


def batch(*states: Position) -> Positions:
    return Positions({s.device_id: s for s in states})


def event(event_id: str) -> Frame:
    return Frame(json.dumps({"type": "event", "event": {"id": event_id}}).encode(), event_id)


def drain(outbox: Outbox, now: float = 0.0) -> list[dict[str, object]]:
    out = []
    while (data := outbox.take(now)) is not None:
        out.append(json.loads(data))
    return out


def devices_seen(messages: list[dict[str, object]]) -> list[tuple[str, str]]:
    """(device, ts) of every state sent, in order."""
    seen = []
    for message in messages:
        if message["type"] == "positions":
            for state in message["devices"]:  # type: ignore[attr-defined]
                seen.append((state["device_id"], state["ts"]))
    return seen


def test_a_positions_message_renders_as_the_protocol_says() -> None:
    outbox = Outbox(4, 10.0)
    outbox.put_positions(batch(position("a", 1), position("b", 1)), 0.0)
    [message] = drain(outbox)
    assert message["type"] == "positions"
    assert [d["device_id"] for d in message["devices"]] == ["a", "b"]  # type: ignore[attr-defined]


def test_below_capacity_every_message_is_kept_in_order() -> None:
    outbox = Outbox(10, 10.0)
    outbox.put_positions(batch(position("a", 1)), 0.0)
    outbox.put(event("e1"), 0.0)
    outbox.put_positions(batch(position("a", 2)), 0.0)
    messages = drain(outbox)
    assert [m["type"] for m in messages] == ["positions", "event", "positions"]
    assert outbox.counts.positions_coalesced == 0


def test_when_full_positions_merge_into_the_last_waiting_one_newest_state_per_device() -> None:
    counts = Counts()
    outbox = Outbox(2, 10.0, counts)
    outbox.put_positions(batch(position("a", 1)), 0.0)
    outbox.put_positions(batch(position("a", 2), position("b", 2)), 0.0)
    outbox.put_positions(batch(position("a", 3)), 0.0)  # full: merged into the second
    outbox.put_positions(batch(position("c", 3)), 0.0)
    assert len(outbox) == 2
    assert counts.positions_coalesced == 2
    assert counts.states_superseded == 1  # a@2 replaced by a@3 before it was sent
    assert devices_seen(drain(outbox)) == [
        ("a", (T0 + timedelta(seconds=1)).isoformat()),
        ("a", (T0 + timedelta(seconds=3)).isoformat()),
        ("b", (T0 + timedelta(seconds=2)).isoformat()),
        ("c", (T0 + timedelta(seconds=3)).isoformat()),
    ]


def test_a_merge_never_moves_a_device_back_in_time() -> None:
    outbox = Outbox(1, 10.0)
    outbox.put_positions(batch(position("a", 5)), 0.0)
    outbox.put_positions(batch(position("a", 4)), 0.0)
    assert devices_seen(drain(outbox)) == [("a", (T0 + timedelta(seconds=5)).isoformat())]
    assert outbox.counts.states_superseded == 1


def test_merging_does_not_change_the_batch_other_clients_share() -> None:
    shared = batch(position("a", 1))
    slow, fast = Outbox(1, 10.0), Outbox(1, 10.0)
    slow.put_positions(shared, 0.0)
    fast.put_positions(shared, 0.0)
    slow.put_positions(batch(position("b", 2)), 0.0)
    assert devices_seen(drain(fast)) == [("a", (T0 + timedelta(seconds=1)).isoformat())]
    assert [d for d, _ in devices_seen(drain(slow))] == ["a", "b"]


def test_events_are_never_dropped_even_past_capacity() -> None:
    outbox = Outbox(2, 10.0)
    for i in range(15):
        outbox.put(event(f"e{i}"), 0.0)
        outbox.put_positions(batch(position("a", i)), 0.0)
    messages = drain(outbox)
    events = [m["event"]["id"] for m in messages if m["type"] == "event"]  # type: ignore[index]
    assert events == [f"e{i}" for i in range(15)]
    assert devices_seen(messages)[-1] == ("a", (T0 + timedelta(seconds=14)).isoformat())


def test_a_client_full_for_slow_after_is_too_slow_and_reading_resets_the_clock() -> None:
    outbox = Outbox(2, 5.0)
    outbox.put_positions(batch(position("a", 1)), 0.0)
    assert not outbox.too_slow(100.0)  # not full
    outbox.put_positions(batch(position("b", 1)), 1.0)  # full from t=1
    assert not outbox.too_slow(5.9)
    assert outbox.too_slow(6.0)
    outbox.take(6.0)  # it read one: no longer full
    assert not outbox.too_slow(6.0)
    outbox.put_positions(batch(position("c", 1)), 7.0)  # full again from t=7
    assert not outbox.too_slow(11.9)
    assert outbox.too_slow(12.0)


def test_passing_the_hard_limit_is_too_slow_at_once() -> None:
    outbox = Outbox(2, 1000.0)
    for i in range(2 * HARD_LIMIT_FACTOR):
        outbox.put(event(f"e{i}"), 0.0)
    assert not outbox.overflowing
    outbox.put(event("one-more"), 0.0)
    assert outbox.overflowing
    assert outbox.too_slow(0.0)


def test_a_held_outbox_sends_nothing_new_and_is_never_timed_as_slow() -> None:
    outbox = Outbox(2, 1.0, held=True)
    for i in range(5):
        outbox.put(event(f"e{i}"), 0.0)
    assert outbox.take(0.0) is None
    assert not outbox.too_slow(100.0)


def test_release_puts_the_snapshot_first_and_drops_what_it_already_carries() -> None:
    counts = Counts()
    outbox = Outbox(10, 10.0, counts, held=True)
    outbox.put(event("e1"), 0.0)  # also in the snapshot's alerts
    outbox.put_positions(batch(position("a", 1), position("b", 9)), 0.0)
    outbox.put(event("e2"), 0.0)
    snapshot = Frame(b'{"type":"snapshot"}')
    outbox.release(
        [snapshot],
        1.0,
        newer_than={"a": T0 + timedelta(seconds=5), "b": T0 + timedelta(seconds=5)},
        skip_ids={"e1"},
    )
    messages = drain(outbox)
    assert [m["type"] for m in messages] == ["snapshot", "positions", "event"]
    assert devices_seen(messages) == [("b", (T0 + timedelta(seconds=9)).isoformat())]
    assert messages[2]["event"] == {"id": "e2"}
    assert counts.duplicates_dropped == 1
    assert counts.states_superseded == 1


def test_after_release_duplicates_are_dropped_for_the_overlap_window_only() -> None:
    outbox = Outbox(10, 10.0, held=True)
    outbox.release([event("replayed")], 0.0, skip_ids={"replayed"}, skip_for_s=5.0)
    outbox.put(event("replayed"), 4.9)  # committed before the replay, published after
    outbox.put(event("fresh"), 4.9)
    outbox.put(event("replayed"), 5.0)  # the window is over: an id is no longer assumed
    ids = [m["event"]["id"] for m in drain(outbox)]  # type: ignore[index]
    assert ids == ["replayed", "fresh", "replayed"]
    assert outbox.counts.duplicates_dropped == 1


def test_a_refilter_keeps_old_deltas_before_the_new_snapshot() -> None:
    outbox = Outbox(10, 10.0)
    outbox.put_positions(batch(position("a", 1)), 0.0)
    outbox.hold()
    outbox.put_positions(batch(position("a", 2)), 0.0)
    assert devices_seen([json.loads(outbox.take(0.0) or b"")]) == [
        ("a", (T0 + timedelta(seconds=1)).isoformat())
    ]
    outbox.release([Frame(b'{"type":"snapshot"}')], 0.0, newer_than={})
    # New positions merge behind the snapshot, never into a message before it.
    outbox.put_positions(batch(position("b", 3)), 0.0)
    messages = drain(outbox)
    assert [m["type"] for m in messages] == ["snapshot", "positions", "positions"]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(0, 1.0)
