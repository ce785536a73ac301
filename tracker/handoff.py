"""What the ingester hands the tracker after each commit, and how devices map to
partitions. Shared by both sides; pure.

One stream entry carries every fix and status change of one committed batch that falls
in one partition, so a batch costs one XADD per partition instead of one per fix.
"""

from __future__ import annotations

import zlib
from datetime import datetime

import msgspec

from tracker.events import Event
from tracker.positions import Fix


class StatusChange(msgspec.Struct, frozen=True, gc=False):
    """A device reported itself online or offline (its last will), at arrival time."""

    device_id: str
    status: str
    ts: datetime


class DeliveryReport(msgspec.Struct, frozen=True, gc=False):
    """A driver's outcome of a delivery, reported from the vehicle's own device."""

    device_id: str
    delivery_id: str
    outcome: str  # "delivered" | "failed"
    ts: datetime
    detail: str = ""


class Handoff(msgspec.Struct, frozen=True, gc=False):
    fixes: list[Fix]
    statuses: list[StatusChange] = []
    # Events ingest stored itself (delivery outcomes): the tracker publishes them.
    events: list[Event] = []


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


def split(
    fixes: list[Fix],
    statuses: list[StatusChange],
    partitions: int,
    events: list[Event] | None = None,
) -> dict[int, Handoff]:
    """The batch's fixes, statuses and events grouped by partition, in their order."""
    grouped: dict[int, Handoff] = {}

    def part(device_id: str) -> Handoff:
        number = partition_of(device_id, partitions)
        if number not in grouped:
            grouped[number] = Handoff([], [], [])
        return grouped[number]

    for fix in fixes:
        part(fix.device_id).fixes.append(fix)
    for status in statuses:
        part(status.device_id).statuses.append(status)
    for event in events or []:
        part(event.device_id).events.append(event)
    return grouped
