"""What the ingester hands the tracker after each commit, and how devices map to
partitions. Shared by both sides; pure.

One stream entry carries every fix and status change of one committed batch that falls
in one partition, so a batch costs one XADD per partition instead of one per fix.
"""

from __future__ import annotations

import zlib
from datetime import datetime

import msgspec

from tracker.positions import Fix


class StatusChange(msgspec.Struct, frozen=True, gc=False):
    """A device reported itself online or offline (its last will), at arrival time."""

    device_id: str
    status: str
    ts: datetime


class Handoff(msgspec.Struct, frozen=True, gc=False):
    fixes: list[Fix]
    statuses: list[StatusChange] = []


def partition_of(device_id: str, partitions: int) -> int:
    """Stable across processes and restarts (unlike `hash()`), so every ingester and tracker
    agrees on which partition owns a device."""
    return zlib.crc32(device_id.encode()) % partitions


def stream_key(partition: int) -> str:
    return f"fleetpulse:fixes:{partition}"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Handoff)


def encode(handoff: Handoff) -> bytes:
    return _encoder.encode(handoff)


def decode(data: bytes) -> Handoff:
    return _decoder.decode(data)


def split(fixes: list[Fix], statuses: list[StatusChange], partitions: int) -> dict[int, Handoff]:
    """The batch's fixes and statuses grouped by partition, in their original order."""
    grouped: dict[int, tuple[list[Fix], list[StatusChange]]] = {}
    for fix in fixes:
        grouped.setdefault(partition_of(fix.device_id, partitions), ([], []))[0].append(fix)
    for status in statuses:
        grouped.setdefault(partition_of(status.device_id, partitions), ([], []))[1].append(status)
    return {p: Handoff(f, s) for p, (f, s) in grouped.items()}
