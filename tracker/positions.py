"""A position fix: the one fact every stage of FleetPulse passes along."""

from __future__ import annotations

import enum
import re
from datetime import datetime

import msgspec

# Device ids come from topics and name deliveries in drivers' reports: one rule for both.
# Dots alone ("." or "..") would read as a path step in URLs and files: refused.
DEVICE_ID_PATTERN = re.compile(r"(?!\.+$)[A-Za-z0-9_.:-]{1,64}")


def is_valid_device_id(device_id: str) -> bool:
    return DEVICE_ID_PATTERN.fullmatch(device_id) is not None


class DeviceKind(enum.StrEnum):
    VEHICLE = "vehicle"
    DRONE = "drone"
    PHONE = "phone"


class Fix(msgspec.Struct, frozen=True, gc=False):
    """One position report of one device at one fix time (event time, UTC).

    `received_at` is arrival time at the ingester; ordering and de-duplication use `ts`.
    Units: metres, metres per second, degrees, percent.
    """

    device_id: str
    ts: datetime
    lat: float
    lon: float
    received_at: datetime
    alt: float | None = None
    rel_alt: float | None = None
    speed: float | None = None
    heading: float | None = None
    acc: float | None = None
    battery: float | None = None
    kind: DeviceKind | None = None
    seq: int | None = None

    @property
    def key(self) -> tuple[str, datetime]:
        """Identity of a fix: a device reports one position per fix time."""
        return (self.device_id, self.ts)

    def same_content(self, other: Fix) -> bool:
        """True when `other` reports the same fix (arrival time aside)."""
        return msgspec.structs.replace(other, received_at=self.received_at) == self
