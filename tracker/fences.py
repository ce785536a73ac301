"""A geofence: a shape plus who it applies to and when."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tracker.positions import DeviceKind
from tracker.shapes import AltitudeBand, AnyShape

FENCE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True)
class Window:
    """Active from `start` to `end` (local time) on each of `days` (0 = Monday).

    The window is half-open, [start, end). An `end` at or before `start` runs past
    midnight into the next day, so 00:00-00:00 is the whole day.
    """

    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        object.__setattr__(self, "days", frozenset(self.days))
        if not self.days:
            raise ValueError("a window needs at least one day")
        bad = sorted(d for d in self.days if d not in range(7))
        if bad:
            raise ValueError(f"days must be 0 (Monday) to 6 (Sunday), got {bad}")
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None:
                raise ValueError(f"{name} is a local time of the schedule's zone, not aware")

    def active(self, weekday: int, clock: time) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= clock < self.end
        # Past midnight: today's part after start, or the part of yesterday's window.
        return (weekday in self.days and clock >= self.start) or (
            (weekday - 1) % 7 in self.days and clock < self.end
        )


@dataclass(frozen=True)
class Schedule:
    """Weekly active windows in an IANA time zone (daylight saving time included)."""

    tz: str
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "windows", tuple(self.windows))
        try:
            _zone(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.tz!r}") from None
        if not self.windows:
            raise ValueError("a schedule needs at least one window (or no schedule at all)")

    def active_at(self, ts: datetime) -> bool:
        local = ts.astimezone(_zone(self.tz))
        weekday = local.weekday()
        clock = local.time().replace(tzinfo=None)
        return any(w.active(weekday, clock) for w in self.windows)


@dataclass(frozen=True)
class Fence:
    """`kinds` and `groups` empty: the fence applies to every device. `schedule` None:
    always active. `dwell_s` None: no dwell events."""

    id: str
    name: str
    shape: AnyShape
    tags: frozenset[str] = frozenset()
    kinds: frozenset[DeviceKind] = frozenset()
    groups: frozenset[str] = frozenset()
    schedule: Schedule | None = None
    altitude: AltitudeBand | None = None
    dwell_s: float | None = None
    # Precomputed: most fences apply to everyone at all times, and `applies_to` is on the
    # hot path.
    _unrestricted: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not FENCE_ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"id {self.id!r} must match {FENCE_ID_PATTERN.pattern}")
        object.__setattr__(self, "tags", frozenset(self.tags))
        object.__setattr__(self, "kinds", frozenset(DeviceKind(k) for k in self.kinds))
        object.__setattr__(self, "groups", frozenset(self.groups))
        if self.dwell_s is not None and not (math.isfinite(self.dwell_s) and self.dwell_s >= 0):
            raise ValueError(
                f"dwell_s must be a non-negative number of seconds, not {self.dwell_s}"
            )
        object.__setattr__(
            self, "_unrestricted", not self.kinds and not self.groups and self.schedule is None
        )

    def applies_to(self, kind: DeviceKind | None, groups: frozenset[str], ts: datetime) -> bool:
        """Whether a device of `kind` in `groups` is subject to this fence at `ts`.

        A device of unknown kind is subject only to fences open to all kinds.
        """
        if self._unrestricted:
            return True
        if self.kinds and kind not in self.kinds:
            return False
        if self.groups and self.groups.isdisjoint(groups):
            return False
        return self.schedule is None or self.schedule.active_at(ts)
