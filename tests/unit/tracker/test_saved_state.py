"""tracker.saved_state: a partition's checkpoint compressed, and older ones still read."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from tracker import live as live_state
from tracker import saved_state
from tracker.live import LiveDevice, Status


def _devices(n: int) -> dict[str, LiveDevice]:
    at = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    return {
        f"van-{i:05d}": LiveDevice(
            f"van-{i:05d}", at, 41.1 + i * 1e-5, -8.6, at, 617733123456789, 603123456, Status.MOVING
        )
        for i in range(n)
    }


def test_round_trip_and_compressed() -> None:
    live = live_state.snapshot(_devices(2_000))
    geofence = b"\x92\x01\x80" * 1_000
    data = saved_state.encode(live, geofence)
    decoded = saved_state.decode(data)
    assert (decoded.live, decoded.geofence) == (live, geofence)
    # Field names and timestamps repeat in every device: zstd takes most of it away.
    assert len(data) < (len(live) + len(geofence)) / 3


def test_a_checkpoint_written_before_compression_is_read() -> None:
    plain = msgspec.msgpack.encode(saved_state.SavedState(b"live", b"fences"))
    assert saved_state.decode(plain) == saved_state.SavedState(b"live", b"fences")
