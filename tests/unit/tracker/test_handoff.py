"""The hand-off format and the device → partition mapping shared by ingest and tracker."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from tracker.handoff import Handoff, StatusChange, decode, encode, partition_of, split, stream_key
from tracker.positions import DeviceKind, Fix

T = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def fix(device: str) -> Fix:
    return Fix(device, T, 41.1, -8.6, T, speed=2.5, kind=DeviceKind.VEHICLE, seq=7)


def test_partition_is_stable_and_in_range() -> None:
    assert partition_of("van-17", 16) == zlib.crc32(b"van-17") % 16
    assert {partition_of(f"d{i}", 8) for i in range(1000)} == set(range(8))


def test_split_groups_by_partition_keeping_order() -> None:
    fixes = [fix(f"d{i}") for i in range(50)]
    statuses = [StatusChange("d3", "offline", T)]
    parts = split(fixes, statuses, 4)
    assert sum(len(h.fixes) for h in parts.values()) == 50
    for partition, handoff in parts.items():
        assert all(partition_of(f.device_id, 4) == partition for f in handoff.fixes)
        ids = [f.device_id for f in handoff.fixes]
        assert ids == [f.device_id for f in fixes if partition_of(f.device_id, 4) == partition]
    assert parts[partition_of("d3", 4)].statuses == statuses
    assert split([], [], 4) == {}


def test_encoding_round_trip() -> None:
    handoff = Handoff([fix("a"), fix("b")], [StatusChange("a", "online", T)])
    assert decode(encode(handoff)) == handoff
    assert stream_key(3) == "fleetpulse:fixes:3"
