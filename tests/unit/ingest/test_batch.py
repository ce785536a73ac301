"""ingest.batch: de-duplication by (device, fix time) inside one batch, conflicts refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ingest.batch import Batch, conflict
from ingest.validation import FixRules
from mqtt.codec import Codec, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from mqtt.topics import TopicScheme
from tracker.positions import Fix

T = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
T_MS = 1_795_770_000_000
TOPIC = "fleet/truck-7/telemetry"


@dataclass
class Delivery:
    topic: str
    payload: bytes
    acked: bool = False

    def ack(self) -> bool:
        self.acked = True
        return True


def fix(device_id: str = "truck-7", ts: datetime = T, **changes: object) -> Fix:
    values: dict[str, object] = {"lat": 52.52, "lon": 13.405, "received_at": T}
    values.update(changes)
    return Fix(device_id=device_id, ts=ts, **values)  # type: ignore[arg-type]


def test_empty_batch() -> None:
    batch = Batch()
    assert len(batch) == 0
    assert (batch.fixes, batch.rejects, batch.statuses, batch.deliveries) == ({}, [], [], [])
    assert not batch.counts


def test_fixes_are_keyed_by_device_and_fix_time() -> None:
    batch = Batch()
    d = Delivery(TOPIC, b"...")
    a, b, c = fix(), fix(ts=T + timedelta(seconds=1)), fix(device_id="van-3")
    batch.add(d, [a, b, c])
    assert batch.fixes == {
        ("truck-7", T): a,
        ("truck-7", T + timedelta(seconds=1)): b,
        ("van-3", T): c,
    }
    assert batch.sources == {key: d for key in batch.fixes}
    assert len(batch) == 1


def test_exact_duplicate_is_counted_not_stored_twice() -> None:
    batch = Batch()
    first = Delivery(TOPIC, b"first")
    again = Delivery(TOPIC, b"again")
    original = fix(speed=5.0)
    batch.add(first, [original])
    batch.add(again, [fix(speed=5.0, received_at=T + timedelta(seconds=30))])

    assert batch.fixes == {("truck-7", T): original}
    assert batch.fixes[("truck-7", T)].received_at == T  # the first one is kept
    assert batch.sources[("truck-7", T)] is first
    assert batch.counts["duplicates"] == 1
    assert batch.rejects == []
    assert batch.deliveries == [first, again]
    assert len(batch) == 2


def test_duplicate_inside_one_array_message() -> None:
    codec = Codec(TopicScheme(), FixRules(None))
    element = f'{{"ts": {T_MS}, "lat": 1, "lon": 2}}'
    payload = f"[{element}, {element}, {element}]".encode()
    delivery = Delivery(TOPIC, payload)
    batch = Batch()
    batch.add(delivery, codec.decode(TOPIC, payload, T))
    assert len(batch.fixes) == 1
    assert batch.counts["duplicates"] == 2
    assert batch.rejects == []


def test_conflicting_content_is_rejected_with_its_own_message() -> None:
    batch = Batch()
    first = Delivery(TOPIC, b'{"ts": 1, "lat": 52.52}')
    second = Delivery("fleet/truck-7/telemetry", b'[{"other": "message"}]')
    kept = fix(lat=52.52)
    later = T + timedelta(seconds=7)
    batch.add(first, [kept])
    batch.add(second, [fix(lat=48.0, received_at=later)])

    assert batch.fixes == {("truck-7", T): kept}
    assert batch.counts["duplicates"] == 0
    assert batch.rejects == [
        Rejected(
            topic="fleet/truck-7/telemetry",
            reason=Reason.CONFLICT,
            detail="truck-7 already reported a different fix at 2026-11-27T09:00:00+00:00",
            raw=b'[{"other": "message"}]',
            size=len(b'[{"other": "message"}]'),
            received_at=later,
            device_id="truck-7",
        )
    ]
    assert batch.deliveries == [first, second]


def test_conflict_then_duplicate_of_the_kept_fix() -> None:
    batch = Batch()
    d1, d2, d3 = (Delivery(TOPIC, bytes([i])) for i in range(3))
    batch.add(d1, [fix(seq=1)])
    batch.add(d2, [fix(seq=2)])
    batch.add(d3, [fix(seq=1)])
    assert batch.fixes[("truck-7", T)].seq == 1
    assert [r.reason for r in batch.rejects] == [Reason.CONFLICT]
    assert batch.rejects[0].raw == bytes([1])
    assert batch.counts["duplicates"] == 1


def test_conflict_helper() -> None:
    source = Delivery("acme/fleet/d/telemetry", b"x" * 10)
    reject = conflict(fix(device_id="d", received_at=T + timedelta(hours=1)), source)
    assert reject.reason is Reason.CONFLICT
    assert reject.topic == "acme/fleet/d/telemetry"
    assert reject.raw == b"x" * 10
    assert reject.size == 10
    assert reject.device_id == "d"
    assert reject.received_at == T + timedelta(hours=1)


def test_other_items_are_sorted_into_their_places() -> None:
    batch = Batch()
    rejected = Rejected(
        topic=TOPIC,
        reason=Reason.INVALID_JSON,
        detail="bad",
        raw=b"{",
        size=1,
        received_at=T,
        device_id="truck-7",
    )
    status = StatusReport("truck-7", "offline", T)
    d1 = Delivery(TOPIC, b"{")
    d2 = Delivery("fleet/truck-7/status", b"offline")
    d3 = Delivery("owntracks/a/b", b"{}")
    d4 = Delivery("owntracks/a/b/event", b"{}")
    batch.add(d1, [rejected])
    batch.add(d2, [status])
    batch.add(d3, [Ignored("owntracks_transition")])
    batch.add(d4, [Ignored("owntracks_subtopic")])
    batch.add(Delivery("owntracks/a/b", b"{}"), [Ignored("owntracks_transition")])

    assert batch.rejects == [rejected]
    assert batch.statuses == [status]
    assert batch.counts == {"ignored_owntracks_transition": 2, "ignored_owntracks_subtopic": 1}
    assert batch.fixes == {}
    assert batch.deliveries[:4] == [d1, d2, d3, d4]
    assert len(batch) == 5
    assert not any(d.acked for d in batch.deliveries)  # the batch never acknowledges


def test_deliveries_kept_in_arrival_order_including_empty_ones() -> None:
    batch = Batch()
    deliveries = [Delivery(TOPIC, str(i).encode()) for i in range(5)]
    for i, d in enumerate(deliveries):
        batch.add(d, [fix(ts=T + timedelta(seconds=i % 2))] if i != 2 else [])
    assert batch.deliveries == deliveries
    assert len(batch) == 5
    assert len(batch.fixes) == 2
    assert batch.counts["duplicates"] == 2


def test_decoded_messages_end_to_end() -> None:
    codec = Codec(TopicScheme(), FixRules(timedelta(days=7)))
    messages = [
        (TOPIC, json.dumps({"ts": T_MS, "lat": 1, "lon": 2}).encode()),
        (TOPIC, json.dumps({"ts": "2026-11-27T09:00:00Z", "lat": 1, "lon": 2}).encode()),
        (TOPIC, json.dumps({"ts": "2026-11-27T11:00:00+02:00", "lat": 1, "lon": 3}).encode()),
        ("fleet/truck-7/status", b"online"),
        (TOPIC, b"not json"),
    ]
    batch = Batch()
    for topic, payload in messages:
        batch.add(Delivery(topic, payload), codec.decode(topic, payload, T))
    assert list(batch.fixes) == [("truck-7", T)]
    assert batch.counts["duplicates"] == 1  # epoch ms and RFC 3339 Z are the same fix
    assert [r.reason for r in batch.rejects] == [Reason.CONFLICT, Reason.INVALID_JSON]
    assert batch.rejects[0].raw == messages[2][1]
    assert batch.statuses == [StatusReport("truck-7", "online", T)]
    assert len(batch) == 5
