"""What the fault tests send, and what must come out of it.

Each device shuttles between a point outside a circular fence and the fence's centre, a
few fixes at each, in fix-time order. A plain point-in-circle replay of that path gives
the exact set of enter and exit events (ids are deterministic), and each device's last
fix is its expected live state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tracker.events import Event, EventKind

FENCE_ID = "depot"
CENTRE = (41.1486, -8.6110)  # Avenida dos Aliados, Porto
RADIUS_M = 300.0
# ~670 m north of the centre: well outside the circle, and the straight way back in.
OUTSIDE = (CENTRE[0] + 0.006, CENTRE[1])
FENCE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [CENTRE[1], CENTRE[0]]},
    "properties": {"id": FENCE_ID, "name": "Depot", "radius_m": RADIUS_M},
}
# Fixes per stay on one side: out, out, out, in, in, in, out, ...
STAY = 3
# Between a device's fixes: ~22 m/s from one side to the other, a plausible van.
STEP_MS = 30_000

Message = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Workload:
    devices: int
    fixes_per_device: int
    t0_ms: int

    @classmethod
    def recent(cls, devices: int, fixes_per_device: int) -> Workload:
        """Fix times that end a little before now (fresh enough for every rule)."""
        t0 = int(time.time() * 1000) - fixes_per_device * STEP_MS - 60_000
        return cls(devices, fixes_per_device, t0)

    def device(self, i: int) -> str:
        return f"van-{i:03d}"

    @property
    def device_ids(self) -> list[str]:
        return [self.device(i) for i in range(self.devices)]

    @staticmethod
    def inside(k: int) -> bool:
        return (k // STAY) % 2 == 1

    def ts_ms(self, k: int) -> int:
        return self.t0_ms + k * STEP_MS

    def position(self, k: int) -> tuple[float, float]:
        return CENTRE if self.inside(k) else OUTSIDE

    def messages(self) -> list[Message]:
        """Round by round: every device's k-th fix before anyone's (k+1)-th."""
        out: list[Message] = []
        for k in range(self.fixes_per_device):
            lat, lon = self.position(k)
            for device in self.device_ids:
                out.append(
                    (f"fleet/{device}/telemetry", {"ts": self.ts_ms(k), "lat": lat, "lon": lon})
                )
        return out

    def keys(self) -> set[tuple[str, int]]:
        """(device, fix time in ms) of every fix sent."""
        return {(d, self.ts_ms(k)) for d in self.device_ids for k in range(self.fixes_per_device)}

    def expected_event_ids(self) -> set[str]:
        ids: set[str] = set()
        for device in self.device_ids:
            for k in range(1, self.fixes_per_device):
                if self.inside(k) == self.inside(k - 1):
                    continue
                lat, lon = self.position(k)
                kind = EventKind.ENTER if self.inside(k) else EventKind.EXIT
                ids.add(Event(device, kind, _time(self.ts_ms(k)), FENCE_ID, lat, lon).id)
        return ids

    def latest(self) -> dict[str, tuple[datetime, float, float]]:
        """Each device's live state as it must end: its last fix."""
        last = self.fixes_per_device - 1
        lat, lon = self.position(last)
        return {d: (_time(self.ts_ms(last)), lat, lon) for d in self.device_ids}


def _time(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
