"""The end-to-end benchmark's pure parts: the world it builds is valid for the product
(fences our GeoJSON parser takes, fixes our codec decodes, plausible speeds), and its
small parsers and verdicts say what they should."""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from datetime import datetime

import pytest

from bench.e2e import fleet
from bench.e2e.bare_broker import Counter as PublishCounter
from bench.e2e.clients import EventTally
from bench.e2e.profile import summarize
from bench.e2e.publisher import DeviceFixes
from bench.e2e.results import Step
from bench.ingest import mqtt5
from mqtt.codec import Codec
from tracker.geojson import parse_feature
from tracker.positions import Fix
from tracker.shapes import haversine_m

from ..conftest import RECEIVED_MS


def _publish_parts(packet: bytes) -> tuple[int, str, bytes]:
    """(packet id, topic, payload) of one QoS 1 PUBLISH without properties."""
    length, start = mqtt5.read_varint(packet, 1) or (0, 0)
    assert start + length == len(packet)
    topic_length = struct.unpack_from("!H", packet, start)[0]
    topic = packet[start + 2 : start + 2 + topic_length].decode()
    packet_id = struct.unpack_from("!H", packet, start + 2 + topic_length)[0]
    assert packet[start + 4 + topic_length] == 0  # no properties
    return packet_id, topic, packet[start + 5 + topic_length :]


def test_every_fence_is_one_our_parser_takes_inside_the_area() -> None:
    features = fleet.fences(500, seed=3)
    parsed = [parse_feature(f) for f in features]
    assert len({f.id for f in parsed}) == 500
    south, north, west, east = fleet.AREA
    kinds = Counter(f["geometry"]["type"] for f in features)
    assert kinds["Point"] > 0 and kinds["Polygon"] > 0
    for feature in features:
        ring = (
            [feature["geometry"]["coordinates"]]
            if feature["geometry"]["type"] == "Point"
            else feature["geometry"]["coordinates"][0]
        )
        for lon, lat in ring:
            assert south - 0.01 < lat < north + 0.01 and west - 0.01 < lon < east + 0.01


def test_the_fleet_is_the_same_from_its_seed_and_its_vans_drive() -> None:
    first, again = fleet.devices(2000, 50, seed=5), fleet.devices(2000, 50, seed=5)
    assert first == again
    assert all(d.speed_mps >= fleet.VAN_SPEED_MPS[0] for d in first[:50])
    parked = sum(d.speed_mps == 0.0 for d in first[50:]) / 1950
    assert abs(parked - fleet.PARKED_SHARE) < 0.05


def test_a_device_moves_at_its_speed_and_a_parked_one_not_at_all() -> None:
    for device in fleet.devices(300, 10, seed=2):
        lat0, lon0, _ = device.at(100.0)
        lat1, lon1, _ = device.at(101.0)
        # At most its speed (a turn at the leg's end shortens the straight line).
        assert haversine_m(lat0, lon0, lat1, lon1) <= device.speed_mps + 0.01


def test_the_schedule_sends_moving_devices_more_often_and_spreads_them() -> None:
    share = fleet.devices(400, 20, seed=4)
    order = fleet.schedule(share)
    counts = Counter(order)
    for i, device in enumerate(share):
        assert counts[i] == (fleet.MOVING_WEIGHT if device.speed_mps else 1)
    moving = next(i for i, d in enumerate(share) if d.speed_mps)
    slots = [n for n, i in enumerate(order) if i == moving]
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) > len(order) / fleet.MOVING_WEIGHT / 2


def test_published_fixes_are_valid_contract_messages_one_per_device_and_ms(
    codec: Codec, received_at: datetime
) -> None:
    share = fleet.devices(30, 5, seed=1)
    source = DeviceFixes(share, epoch_s=RECEIVED_MS / 1000 - 60, offset=7)
    seen: set[tuple[str, datetime]] = set()
    for packet_id in range(1, 200):
        got_id, topic, payload = _publish_parts(source.next_packet(packet_id, RECEIVED_MS))
        assert got_id == packet_id
        (fix,) = codec.decode(topic, payload, received_at)
        assert isinstance(fix, Fix)
        assert fix.device_id.startswith("e2e-")
        assert (fix.device_id, fix.ts) not in seen  # each (device, fix time) once
        seen.add((fix.device_id, fix.ts))


def test_the_bare_subscriber_acknowledges_each_publish_across_reads() -> None:
    topic = mqtt5.publish_topic_prefix("fleet/a/telemetry")
    stream = mqtt5.publish_qos1(topic, 7, b"{}") + mqtt5.publish_qos1(topic, 300, b"{}")
    counter = PublishCounter()
    acks = counter.feed(stream[:5]) + counter.feed(stream[5:])
    assert counter.received == 2
    assert acks == b"\x40\x02\x00\x07" + b"\x40\x02\x01\x2c"


def test_a_profile_ranks_leaves_and_our_frames_without_the_entry_points() -> None:
    raw = "\n".join(
        [
            'process 1:"python";main (fleetpulse/cli.py:1);a (tracker/live.py:75) 60',
            'process 1:"python";main (fleetpulse/cli.py:1);b (paho/mqtt/client.py:9) 30',
            'process 1:"python";main (fleetpulse/cli.py:1);c (asyncio/events.py:3) 10',
        ]
    )
    profile = summarize("tracker-0", raw)
    assert profile.samples == 100
    assert profile.self_pct[0] == ("a (tracker/live.py:75)", 60.0)
    # paho's mqtt/ is not ours; main holds every sample and says nothing.
    assert profile.inclusive_pct == [("a (tracker/live.py:75)", 60.0)]


def _step(**changes: object) -> Step:
    values: dict[str, object] = {
        "target_per_s": 5000.0,
        "window_s": 30.0,
        "published": 150_000,
        "offered_per_s": 5000.0,
        "committed_per_s": 4990.0,
        "commit_p50_ms": 100.0,
        "commit_p99_ms": 300.0,
        "handed_on_per_s": 80.0,
        "tracked_per_s": 80.0,
        "tracker_lag_entries": 0,
        "tracker_p99_ms": 40.0,
        "events_per_s": 100.0,
        "streams": [],
        "event_classes": [],
        "dispatch_clients": 3,
        "positions_per_client_s": 4995.0,
        "ws_closed": {},
        "cpu_pct": {},
        "peak_rss_mib": {},
        "background": {},
        "drain_s": 0.5,
    }
    values.update(changes)
    step = Step(**values)  # type: ignore[arg-type]
    step.judge()
    return step


def test_a_step_names_each_stage_that_did_not_keep_up() -> None:
    assert _step().kept_up
    assert _step(committed_per_s=4000.0).limits == ["ingest"]
    assert _step(tracked_per_s=60.0).limits == ["tracker"]
    assert _step(positions_per_client_s=3000.0).limits == ["websocket"]
    # Positions follow what was stored: a slow ingester is not the web app's fault.
    assert _step(committed_per_s=3000.0, positions_per_client_s=2990.0).limits == ["ingest"]
    assert _step(drain_s=None).limits == ["drain"]


def test_events_are_timed_by_class_and_an_eta_seen_between_windows_is_not_news() -> None:
    tally = EventTally()
    tally.start_at, tally.end_at = 100.0, 200.0
    seen: dict[str, datetime] = {}
    view = '{"type":"track","delivery":{"eta":{"computed_at":"1970-01-01T00:00:50Z"}}}'
    tally.record(view, 60.0, seen)  # before the window: remembered, not counted
    tally.record(view, 150.0, seen)  # the same ETA again, inside: no latency
    assert "track" not in tally.latency
    assert tally.deliveries["track"] == 1
    for kind, ts in (("enter", "00:02:00"), ("arrived", "00:02:29")):
        frame = f'{{"type":"event","event":{{"kind":"{kind}","ts":"1970-01-01T{ts}Z"}}}}'
        tally.record(frame, 150.0, seen)
    assert tally.deliveries["fence_events"] == tally.deliveries["other_events"] == 1
    assert tally.latency["fence_events"].percentile(0.5) == pytest.approx(30_000, rel=0.03)
    assert tally.latency["other_events"].percentile(0.5) == pytest.approx(1_000, rel=0.03)
