"""Playing recordings back over MQTT at a speed factor, fix times kept or shifted to now.

With the times kept, a fix goes out with the time it was recorded at; the ingester takes
old fixes only up to FLEETPULSE_MAX_FIX_AGE (0 takes any age). Shifted to now, every fix
time moves by one offset, chosen so that no fix is stamped later than the moment it is
sent (the ingester refuses fixes from the future) and the recording's end (speed >= 1)
or start (slow motion) is stamped with the moment it is sent: at speed 1 every fix
carries the moment it goes out, as from a live device.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from fleetpulse.simulation.messages import Outgoing, epoch_ms, status, telemetry
from fleetpulse.simulation.publisher import Publisher
from fleetpulse.simulation.recordings import Record, RecordedFix


@dataclass(frozen=True)
class Timeline:
    """When each recorded record is sent, and with which fix time."""

    first_ms: int
    last_ms: int
    speed: float  # recorded seconds per replayed second; inf: as fast as possible
    shift_ms: int  # added to every recorded time

    @classmethod
    def plan(
        cls, first_ms: int, last_ms: int, speed: float, shift_to_now: bool, now: datetime
    ) -> Timeline:
        if not speed > 0 or math.isnan(speed):
            raise ValueError(f"the speed factor must be positive, got {speed}")
        shift = 0
        if shift_to_now:
            now_ms = epoch_ms(now)
            if speed <= 1:
                shift = now_ms - first_ms  # slow motion: the start is now, the rest later
            else:
                shift = now_ms + round((last_ms - first_ms) / speed) - last_ms
        return cls(first_ms, last_ms, speed, shift)

    def send_after_s(self, ts_ms: int) -> float:
        """Seconds after the replay's start at which a record is sent."""
        return (ts_ms - self.first_ms) / 1000 / self.speed

    def fix_time_ms(self, ts_ms: int) -> int:
        return ts_ms + self.shift_ms

    @property
    def duration_s(self) -> float:
        return self.send_after_s(self.last_ms)


def message(record: Record, timeline: Timeline) -> Outgoing:
    """The record as its device sends it, with its fix time on the timeline."""
    if isinstance(record, RecordedFix):
        fix = msgspec.structs.replace(record.fix, ts=timeline.fix_time_ms(record.ts_ms))
        return telemetry(record.device_id, fix)
    return status(record.device_id, record.online)


async def stopped_within(stop: asyncio.Event | None, delay_s: float) -> bool:
    """Wait `delay_s` seconds, or less when `stop` is set; True when it is set."""
    if delay_s > 0:
        if stop is None:
            await asyncio.sleep(delay_s)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
    return stop is not None and stop.is_set()


@dataclass(frozen=True)
class ReplayReport:
    records: int  # handed to the publisher (its own counts say what the broker took)
    fixes: int
    devices: int
    timelines: list[Timeline]


async def play(
    recordings: Sequence[Sequence[Record]],
    publisher: Publisher,
    speed: float = 1.0,
    shift_to_now: bool = False,
    stop: asyncio.Event | None = None,
) -> ReplayReport:
    """Play recordings together, each from the replay's start on its own timeline (two
    flights logged on different days fly side by side), paced by `speed`."""
    now = datetime.now(UTC)
    timelines = [
        Timeline.plan(r[0].ts_ms, r[-1].ts_ms, speed, shift_to_now, now) for r in recordings if r
    ]
    played = [r for r in recordings if r]
    schedule = heapq.merge(
        *(
            ((t.send_after_s(r.ts_ms), i, r) for r in rs)
            for i, (t, rs) in enumerate(zip(timelines, played, strict=True))
        ),
        key=lambda item: (item[0], item[1]),
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = fixes = 0
    devices: set[str] = set()
    for after_s, index, record in schedule:
        if await stopped_within(stop, start + after_s - loop.time()):
            break
        out = message(record, timelines[index])
        await publisher.send(out)
        sent += 1
        fixes += out.fixes
        devices.add(record.device_id)
    return ReplayReport(sent, fixes, len(devices), timelines)
