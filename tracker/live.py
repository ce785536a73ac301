"""Live state of devices: the latest fix by fix time, H3 cells, moving/stopped/offline,
and the device events that follow from silence (offline, telemetry gap). Pure.

The latest position never goes backwards: a late fix is stored by ingest but does not
move the live state. Silence is judged on arrival (wall-clock) time, since a device's
own clock says nothing about when we stopped hearing from it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import h3.api.basic_int as h3
import msgspec

from tracker.events import Event, EventKind
from tracker.handoff import StatusChange
from tracker.positions import DeviceKind, Fix

EARTH_RADIUS_M = 6_371_008.8


class Status(enum.StrEnum):
    MOVING = "moving"
    STOPPED = "stopped"
    OFFLINE = "offline"


@dataclass(frozen=True)
class LiveRules:
    offline_after: timedelta
    gap_after: timedelta
    stopped_speed_mps: float
    fine_res: int = 9
    coarse_res: int = 6


class LiveDevice(msgspec.Struct, gc=False):
    """What dispatch sees of one device; also the checkpointed state."""

    device_id: str
    ts: datetime
    lat: float
    lon: float
    received_at: datetime
    cell: int
    coarse_cell: int
    status: Status
    speed: float | None = None
    heading: float | None = None
    alt: float | None = None
    rel_alt: float | None = None
    battery: float | None = None
    kind: DeviceKind | None = None
    # Set once a silence has been reported, so it is reported once.
    gap_reported: bool = False


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class LiveTracker:
    def __init__(self, rules: LiveRules, devices: dict[str, LiveDevice] | None = None) -> None:
        self.rules = rules
        self.devices: dict[str, LiveDevice] = devices or {}
        self.late = 0

    def update(self, fix: Fix) -> tuple[LiveDevice | None, list[Event]]:
        """Apply a fix; returns the device's new state when it changed, and any event
        (back online). A fix not newer than the latest changes nothing."""
        previous = self.devices.get(fix.device_id)
        if previous is not None and fix.ts <= previous.ts:
            # Not newer: the position stays, but the device was heard from.
            self.late += fix.ts < previous.ts
            previous.received_at = max(previous.received_at, fix.received_at)
            return None, []
        speed = fix.speed
        if speed is None and previous is not None:
            seconds = (fix.ts - previous.ts).total_seconds()
            speed = haversine_m(previous.lat, previous.lon, fix.lat, fix.lon) / seconds
        status = Status.MOVING if (speed or 0.0) >= self.rules.stopped_speed_mps else Status.STOPPED
        events = []
        if previous is not None and previous.status is Status.OFFLINE:
            events.append(Event(fix.device_id, EventKind.ONLINE, fix.ts, lat=fix.lat, lon=fix.lon))
        device = LiveDevice(
            device_id=fix.device_id,
            ts=fix.ts,
            lat=fix.lat,
            lon=fix.lon,
            received_at=fix.received_at,
            cell=h3.latlng_to_cell(fix.lat, fix.lon, self.rules.fine_res),
            coarse_cell=h3.latlng_to_cell(fix.lat, fix.lon, self.rules.coarse_res),
            status=status,
            speed=speed,
            heading=fix.heading,
            alt=fix.alt,
            rel_alt=fix.rel_alt,
            battery=fix.battery,
            kind=fix.kind or (previous.kind if previous else None),
        )
        self.devices[fix.device_id] = device
        return device, events

    def status_change(self, change: StatusChange) -> tuple[LiveDevice | None, list[Event]]:
        """A last will (offline) takes effect at once; `online` waits for a fix."""
        device = self.devices.get(change.device_id)
        if change.status != "offline" or device is None or device.status is Status.OFFLINE:
            return None, []
        if change.ts < device.received_at:
            return None, []  # an old will: the device has been heard from since
        return self._offline(device, change.ts, "last will")

    def tick(self, now: datetime) -> tuple[list[LiveDevice], list[Event]]:
        """Devices silent past the thresholds at wall-clock `now`."""
        changed: list[LiveDevice] = []
        events: list[Event] = []
        # Most devices were heard from within the shorter threshold: one comparison each.
        heard_since = now - min(self.rules.offline_after, self.rules.gap_after)
        for device in self.devices.values():
            if device.received_at > heard_since or device.status is Status.OFFLINE:
                continue
            silent = now - device.received_at
            if silent >= self.rules.offline_after:
                state, offline = self._offline(
                    device, device.ts + self.rules.offline_after, "no fix"
                )
                changed.extend([state] if state else [])
                events.extend(offline)
            elif (
                silent >= self.rules.gap_after
                and device.status is Status.MOVING
                and not device.gap_reported
            ):
                device.gap_reported = True
                events.append(
                    Event(
                        device.device_id,
                        EventKind.TELEMETRY_GAP,
                        device.ts + self.rules.gap_after,
                        lat=device.lat,
                        lon=device.lon,
                        detail=f"moving at {device.speed or 0:.1f} m/s, then silent",
                    )
                )
        return changed, events

    def _offline(
        self, device: LiveDevice, at: datetime, why: str
    ) -> tuple[LiveDevice | None, list[Event]]:
        device.status = Status.OFFLINE
        event = Event(
            device.device_id, EventKind.OFFLINE, at, lat=device.lat, lon=device.lon, detail=why
        )
        return device, [event]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, LiveDevice])


def snapshot(devices: dict[str, LiveDevice]) -> bytes:
    return _encoder.encode(devices)


def restore(data: bytes) -> dict[str, LiveDevice]:
    return _decoder.decode(data)
