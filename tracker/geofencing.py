"""Geofence events from fixes, by event time (semantics: DESIGN.md "Geofence event semantics").

The processing order for one device, each stage counted when it drops a fix:

1. reorder window: fixes are held per device and released in fix-time order once the
   device's newest fix time is `reorder_window_s` past them (or by `tick` / `flush`);
   a fix older than the last evaluated one is `late`, one at the same time a `duplicate`;
2. outlier filter: a fix implying more than `max_speed_mps` from the last accepted fix is
   skipped (`outliers`);
3. evaluation (`evaluated`): the H3 index names the fences near the fix; each fence that
   applies (kind, group, schedule) moves through its per-device state machine with
   hysteresis (`margin_m`, `confirm_fixes`), emitting enter / exit / dwell /
   altitude_breach; fences the segment from the last accepted fix passes through while
   the device is outside at both ends emit cross.

Everything is a pure function of the fixes offered and the times given to `tick`: no
clock, no I/O. State is a msgspec structure, so `snapshot` / `restore` checkpoint it.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from tracker.events import Event, EventKind
from tracker.fence_index import FenceIndex
from tracker.fences import Fence
from tracker.positions import DeviceKind, Fix
from tracker.shapes import haversine_m

# Counter names (`GeofenceEngine.counts`).
LATE = "late"
DUPLICATES = "duplicates"
OUTLIERS = "outliers"
OUTLIER_RESETS = "outlier_resets"
EVALUATED = "evaluated"

# After this many consecutive fixes rejected as outliers, the next one is accepted and
# becomes the anchor: by then the anchor itself was the bad fix.
MAX_OUTLIER_RUN = 5
SNAPSHOT_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_US_PER_S = 1_000_000
# Order of simultaneous events of one fence.
_RANK = {
    EventKind.ENTER: 0,
    EventKind.DWELL: 1,
    EventKind.ALTITUDE_BREACH: 2,
    EventKind.CROSS: 3,
    EventKind.EXIT: 4,
}


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // _ONE_US


def _time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class GeofenceRules:
    """Hysteresis (`margin_m`, `confirm_fixes`) and the outlier filter (`max_speed_mps`)
    are off at 0.0, 1 and None; then enter/exit equal a plain point-in-polygon replay."""

    margin_m: float = 0.0
    confirm_fixes: int = 1
    max_speed_mps: float | None = None
    reorder_window_s: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin_m) and self.margin_m >= 0.0):
            raise ValueError(f"margin_m must be a non-negative number, not {self.margin_m}")
        if self.confirm_fixes < 1:
            raise ValueError(f"confirm_fixes must be at least 1, not {self.confirm_fixes}")
        if self.max_speed_mps is not None and not self.max_speed_mps > 0.0:
            raise ValueError(f"max_speed_mps must be positive or None, not {self.max_speed_mps}")
        if not (math.isfinite(self.reorder_window_s) and self.reorder_window_s >= 0.0):
            raise ValueError(
                f"reorder_window_s must be a non-negative number, not {self.reorder_window_s}"
            )


class _Dwell(enum.IntEnum):
    NONE = 0  # not inside, or the fence has no dwell time
    PENDING = 1
    FIRED = 2
    CANCELLED = 3  # the device went offline during the visit


class _FenceState(msgspec.Struct):
    """One device against one fence. Absent from the device's map when at rest outside."""

    inside: bool = False
    # The run of consecutive fixes observed in the other state (hysteresis), and its
    # first fix, which gives the event its time and position.
    run: int = 0
    run_ts: int = 0
    run_lat: float = 0.0
    run_lon: float = 0.0
    run_alt: float | None = None
    # The current visit: since when (microseconds), from which fix, dwell progress.
    since: int = 0
    visit_lat: float = 0.0
    visit_lon: float = 0.0
    visit_alt: float | None = None
    dwell: _Dwell = _Dwell.NONE
    breach: bool = False

    def at_rest(self) -> bool:
        return not self.inside and self.run == 0 and not self.breach


class _Anchor(msgspec.Struct, array_like=True):
    """The last accepted fix: the outlier filter's reference and the start of a segment."""

    ts: int
    lat: float
    lon: float
    alt: float | None
    rel_alt: float | None


class _Held(msgspec.Struct, array_like=True):
    ts: int
    fix: Fix
    groups: frozenset[str]


class _Device(msgspec.Struct):
    last_ts: int | None = None  # last evaluated fix time, microseconds
    newest: int | None = None  # newest fix time offered
    anchor: _Anchor | None = None
    outlier_run: int = 0
    kind: DeviceKind | None = None
    groups: frozenset[str] = frozenset()
    held: list[_Held] = msgspec.field(default_factory=list)
    fences: dict[str, _FenceState] = msgspec.field(default_factory=dict)


class _Snapshot(msgspec.Struct):
    version: int
    devices: dict[str, _Device]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Snapshot)


class _Observation:
    """One fix seen against one fence."""

    __slots__ = ("excess", "height", "inside", "inside_2d")

    def __init__(self, fence: Fence, inside_2d: bool, alt: float | None, rel_alt: float | None):
        band = fence.altitude
        self.inside_2d = inside_2d
        self.height = None if band is None else band.height(alt, rel_alt)
        # Metres outside the altitude band (negative: clearance inside); None: no band or
        # no altitude, judged in 2D only.
        self.excess = None if band is None or self.height is None else band.excess_m(self.height)
        self.inside = inside_2d and (self.excess is None or self.excess <= 0.0)


class GeofenceEngine:
    """Per-device geofence state machines over a `FenceIndex`. Not thread-safe."""

    def __init__(self, index: FenceIndex, rules: GeofenceRules | None = None) -> None:
        self.index = index
        self.rules = rules if rules is not None else GeofenceRules()
        self.counts: Counter[str] = Counter()
        self._window_us = round(self.rules.reorder_window_s * _US_PER_S)
        self._devices: dict[str, _Device] = {}
        # Devices holding fixes, in the order they started to (a dict: deterministic),
        # with their first held fix's time: `tick` looks at every one each second.
        self._holding: dict[str, int] = {}
        # Dwell timers for `tick`: (due, device, fence, visit start); checked when popped.
        self._timers: list[tuple[int, str, str, int]] = []

    # --- public surface ---------------------------------------------------------------

    def offer(self, fix: Fix, groups: frozenset[str] = frozenset()) -> list[Event]:
        """Take one fix of a device in `groups`; returns the events it released."""
        ts = _micros(fix.ts)
        device = self._devices.get(fix.device_id)
        if device is None:
            device = self._devices[fix.device_id] = _Device()
        if device.last_ts is not None and ts <= device.last_ts:
            self.counts[LATE if ts < device.last_ts else DUPLICATES] += 1
            return []
        if self._window_us == 0:
            return self._evaluate(fix.device_id, device, ts, fix, groups)
        held = device.held
        at = len(held)
        while at > 0 and held[at - 1].ts > ts:
            at -= 1
        if at > 0 and held[at - 1].ts == ts:
            self.counts[DUPLICATES] += 1
            return []
        held.insert(at, _Held(ts, fix, groups))
        self._holding[fix.device_id] = held[0].ts
        if device.newest is None or ts > device.newest:
            device.newest = ts
        return self._release(fix.device_id, device, device.newest - self._window_us)

    def tick(self, now: datetime) -> list[Event]:
        """Release the held fixes a reorder window old at `now`, and fire the dwell of
        devices that stayed inside (silently) until the deadline plus the window.

        Without this a fix would wait for a fix a window newer: for a device reporting a
        little more often than the window, one more report interval (bench/e2e at
        10,000 fixes/s, vans every 4.75 s: geofence events 9.9 s after their fix
        instead of 5.6 s)."""
        now_us = _micros(now)
        upto = now_us - self._window_us
        events: list[Event] = []
        due = [device_id for device_id, first in self._holding.items() if first <= upto]
        for device_id in due:
            events.extend(self._release(device_id, self._devices[device_id], upto))
        events.extend(self._fire_timers(now_us))
        return events

    def flush(self) -> list[Event]:
        """Evaluate every held fix now (end of a replay, shutdown)."""
        events: list[Event] = []
        for device_id in list(self._holding):
            events.extend(self._release(device_id, self._devices[device_id], None))
        return events

    def device_offline(self, device_id: str, ts: datetime) -> list[Event]:
        """The device went offline at `ts`: its held fixes are evaluated, the dwells due by
        `ts` fire (it was inside until then), and the visit's later dwells are cancelled."""
        device = self._devices.get(device_id)
        if device is None:
            return []
        events = self._release(device_id, device, None)
        offline_us = _micros(ts)
        for fence_id, state in device.fences.items():
            if not state.inside or state.dwell is not _Dwell.PENDING:
                continue
            fence = self.index.get(fence_id)
            deadline = None if fence is None else self._deadline(fence, state)
            undecided = state.run > 0 and deadline is not None and state.run_ts <= deadline
            if deadline is not None and deadline <= offline_us and not undecided:
                events.append(self._dwell_event(device_id, fence_id, state, deadline))
                state.dwell = _Dwell.FIRED
            else:
                state.dwell = _Dwell.CANCELLED
        return events

    def remove_device_state(self, device_id: str) -> None:
        """Forget a device: its state and held fixes (its timers lapse when popped)."""
        self._devices.pop(device_id, None)
        self._holding.pop(device_id, None)

    def remove_fence(self, fence_id: str) -> Fence | None:
        """Drop a fence from the index and every device's state: no exit follows."""
        for device in self._devices.values():
            device.fences.pop(fence_id, None)
        return self.index.remove(fence_id)

    def inside_fences(self, device_id: str) -> frozenset[str]:
        """Ids of the fences the device is inside (as of its last evaluated fix)."""
        device = self._devices.get(device_id)
        if device is None:
            return frozenset()
        return frozenset(f for f, s in device.fences.items() if s.inside)

    def snapshot(self) -> bytes:
        """Every device's state, held fixes included, for a checkpoint."""
        return _encoder.encode(_Snapshot(SNAPSHOT_VERSION, self._devices))

    @classmethod
    def restore(cls, index: FenceIndex, rules: GeofenceRules | None, data: bytes) -> GeofenceEngine:
        """An engine that resumes from `snapshot()`'s bytes."""
        snapshot = _decoder.decode(data)
        if snapshot.version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snapshot.version}, expected {SNAPSHOT_VERSION}")
        engine = cls(index, rules)
        engine._devices = snapshot.devices
        for device_id, device in snapshot.devices.items():
            if device.held:
                engine._holding[device_id] = device.held[0].ts
            for fence_id, state in device.fences.items():
                if state.inside and state.dwell is _Dwell.PENDING:
                    engine._arm(device_id, fence_id, state)
        return engine

    # --- the pipeline -----------------------------------------------------------------

    def _release(self, device_id: str, device: _Device, upto: int | None) -> list[Event]:
        """Evaluate the held fixes with fix time <= `upto` (None: all of them)."""
        held = device.held
        count = len(held) if upto is None else 0
        if upto is not None:
            while count < len(held) and held[count].ts <= upto:
                count += 1
        if count == 0:
            return []
        released = held[:count]
        del held[:count]
        if held:
            self._holding[device_id] = held[0].ts
        else:
            self._holding.pop(device_id, None)
        events: list[Event] = []
        for item in released:
            events.extend(self._evaluate(device_id, device, item.ts, item.fix, item.groups))
        return events

    def _outlier(self, device: _Device, ts: int, fix: Fix) -> bool:
        limit = self.rules.max_speed_mps
        anchor = device.anchor
        if limit is None or anchor is None:
            return False
        seconds = (ts - anchor.ts) / _US_PER_S
        if haversine_m(anchor.lat, anchor.lon, fix.lat, fix.lon) <= limit * seconds:
            device.outlier_run = 0
            return False
        device.outlier_run += 1
        if device.outlier_run > MAX_OUTLIER_RUN:
            self.counts[OUTLIER_RESETS] += 1
            device.outlier_run = 0
            device.anchor = None  # no segment from a discredited fix
            return False
        self.counts[OUTLIERS] += 1
        return True

    def _evaluate(
        self, device_id: str, device: _Device, ts: int, fix: Fix, groups: frozenset[str]
    ) -> list[Event]:
        device.last_ts = ts
        if self._outlier(device, ts, fix):
            return []
        self.counts[EVALUATED] += 1
        if fix.kind is not None:
            device.kind = fix.kind
        device.groups = groups
        previous = device.anchor
        device.anchor = _Anchor(ts, fix.lat, fix.lon, fix.alt, fix.rel_alt)
        events: list[Event] = []
        # Whether the fix is inside each candidate fence in 2D (a fence not listed: it is
        # not), and the fences the device is inside of, now or before this fix: cross
        # needs outside at both ends.
        flat: dict[str, bool] = {}
        not_outside: set[str] = set()
        states = device.fences
        kind = device.kind
        for fence, certain in self.index.candidates(fix.lat, fix.lon):
            if not fence.applies_to(kind, groups, fix.ts):
                flat[fence.id] = False  # ignored at this fix: its state stays as it is
                continue
            inside_2d = flat[fence.id] = certain or fence.shape.contains(fix.lat, fix.lon)
            state = states.get(fence.id)
            if state is None and not inside_2d:
                continue  # outside at rest, and still outside
            if self._step(device_id, device, fence, state, inside_2d, ts, fix, events):
                not_outside.add(fence.id)
        for fence_id in [f for f in states if f not in flat]:
            known = self.index.get(fence_id)
            if known is None:  # removed: forget it, without an exit
                del states[fence_id]
            elif known.applies_to(kind, groups, fix.ts) and self._step(
                device_id, device, known, states[fence_id], False, ts, fix, events
            ):
                not_outside.add(fence_id)
        if previous is not None:
            self._crosses(device_id, device, previous, fix, flat, not_outside, events)
        if len(events) > 1:
            events.sort(key=lambda e: (e.ts, e.fence_id or "", _RANK.get(e.kind, 9)))
        return events

    def _step(
        self,
        device_id: str,
        device: _Device,
        fence: Fence,
        state: _FenceState | None,
        inside_2d: bool,
        ts: int,
        fix: Fix,
        events: list[Event],
    ) -> bool:
        """Move one fence's state by one fix; True when the device is not outside it
        (inside now, or inside before this fix)."""
        seen = _Observation(fence, inside_2d, fix.alt, fix.rel_alt)
        if state is None:
            state = device.fences[fence.id] = _FenceState()
        was_inside = state.inside
        if seen.inside != state.inside and self._clear_of_margin(fence, seen, fix):
            if state.run == 0:
                state.run_ts = ts
                state.run_lat, state.run_lon, state.run_alt = fix.lat, fix.lon, fix.alt
            state.run += 1
            if state.run >= self.rules.confirm_fixes:
                self._switch(device_id, fence, state, events)
        else:
            state.run = 0
        if state.inside and state.dwell is _Dwell.PENDING:
            deadline = self._deadline(fence, state)
            # Inside through the deadline: this fix is past it, or the run that may end
            # the visit started after it.
            if deadline is not None and (
                (state.run == 0 and ts >= deadline) or (state.run > 0 and state.run_ts > deadline)
            ):
                events.append(self._dwell_event(device_id, fence.id, state, deadline))
                state.dwell = _Dwell.FIRED
        self._breach(device_id, fence, state, seen, ts, fix, events)
        if state.at_rest():
            del device.fences[fence.id]
        return seen.inside or was_inside

    def _clear_of_margin(self, fence: Fence, seen: _Observation, fix: Fix) -> bool:
        """Whether the fix is at least `margin_m` into the state it is observed in."""
        margin = self.rules.margin_m
        if margin <= 0.0:
            return True
        if seen.inside:
            depth = fence.shape.distance_to_boundary_m(fix.lat, fix.lon)
            if seen.excess is not None:
                depth = min(depth, -seen.excess)
            return depth >= margin
        flat = 0.0 if seen.inside_2d else fence.shape.distance_to_boundary_m(fix.lat, fix.lon)
        vertical = seen.excess if seen.excess is not None and seen.excess > 0.0 else 0.0
        return math.hypot(flat, vertical) >= margin

    def _switch(
        self, device_id: str, fence: Fence, state: _FenceState, events: list[Event]
    ) -> None:
        """Commit the run: enter or exit at the run's first fix."""
        at = _time(state.run_ts)
        if state.inside:
            if state.dwell is _Dwell.PENDING:
                deadline = self._deadline(fence, state)
                if deadline is not None and state.run_ts > deadline:
                    events.append(self._dwell_event(device_id, fence.id, state, deadline))
            kind = EventKind.EXIT
            state.inside = False
            state.dwell = _Dwell.NONE
        else:
            kind = EventKind.ENTER
            state.inside = True
            state.since = state.run_ts
            state.visit_lat, state.visit_lon = state.run_lat, state.run_lon
            state.visit_alt = state.run_alt
            state.dwell = _Dwell.NONE if fence.dwell_s is None else _Dwell.PENDING
            if state.dwell is _Dwell.PENDING:
                self._arm(device_id, fence.id, state)
        events.append(
            Event(device_id, kind, at, fence.id, state.run_lat, state.run_lon, state.run_alt)
        )
        state.run = 0

    def _breach(
        self,
        device_id: str,
        fence: Fence,
        state: _FenceState,
        seen: _Observation,
        ts: int,
        fix: Fix,
        events: list[Event],
    ) -> None:
        """altitude_breach once per episode: inside in 2D but outside the band."""
        if not seen.inside_2d:
            state.breach = False
            return
        if seen.excess is None or fence.altitude is None or seen.height is None:
            return  # no altitude at this fix: judged in 2D only, the episode goes on
        margin = self.rules.margin_m
        if not state.breach and seen.excess > 0.0 and seen.excess >= margin:
            state.breach = True
            band = fence.altitude
            detail = (
                f"{band.datum.value} {seen.height:.1f} m outside"
                f" [{_bound(band.floor_m)}, {_bound(band.ceiling_m)}]"
            )
            events.append(
                Event(
                    device_id,
                    EventKind.ALTITUDE_BREACH,
                    _time(ts),
                    fence.id,
                    fix.lat,
                    fix.lon,
                    fix.alt,
                    detail,
                )
            )
        elif state.breach and seen.excess <= -margin:
            state.breach = False

    def _crosses(
        self,
        device_id: str,
        device: _Device,
        previous: _Anchor,
        fix: Fix,
        flat: dict[str, bool],
        not_outside: set[str],
        events: list[Event],
    ) -> None:
        """cross: outside at both fixes, and the segment between them through the fence."""
        states = device.fences
        if previous.lat == fix.lat and previous.lon == fix.lon:
            # A segment of no length (a parked device, a drone going straight up) passes
            # only through fences its point is inside in 2D: those are the candidates
            # already tested, no search needed.
            fences = [f for i, inside in flat.items() if inside and (f := self.index.get(i))]
        else:
            fences = self.index.near_segment(previous.lat, previous.lon, fix.lat, fix.lon)
        for fence in fences:
            if fence.id in not_outside:
                continue
            state = states.get(fence.id)
            if state is not None and (state.inside or state.run > 0):
                continue
            if not fence.applies_to(device.kind, device.groups, fix.ts):
                continue
            now = _Observation(fence, flat.get(fence.id, False), fix.alt, fix.rel_alt)
            before = _Observation(
                fence,
                fence.shape.contains(previous.lat, previous.lon),
                previous.alt,
                previous.rel_alt,
            )
            if now.inside or before.inside:
                continue
            if fence.altitude is not None and now.height is not None and before.height is not None:
                low, high = sorted((now.height, before.height))
                if not fence.altitude.overlaps(low, high):
                    continue
            if fence.shape.segment_crosses(previous.lat, previous.lon, fix.lat, fix.lon):
                events.append(
                    Event(
                        device_id,
                        EventKind.CROSS,
                        fix.ts,
                        fence.id,
                        fix.lat,
                        fix.lon,
                        fix.alt,
                    )
                )

    # --- dwell ------------------------------------------------------------------------

    @staticmethod
    def _deadline(fence: Fence, state: _FenceState) -> int | None:
        if fence.dwell_s is None:
            return None
        return state.since + round(fence.dwell_s * _US_PER_S)

    @staticmethod
    def _dwell_event(device_id: str, fence_id: str, state: _FenceState, deadline: int) -> Event:
        return Event(
            device_id,
            EventKind.DWELL,
            _time(deadline),
            fence_id,
            state.visit_lat,
            state.visit_lon,
            state.visit_alt,
        )

    def _arm(self, device_id: str, fence_id: str, state: _FenceState) -> None:
        fence = self.index.get(fence_id)
        deadline = None if fence is None else self._deadline(fence, state)
        if deadline is not None:
            # `tick` waits a reorder window past the deadline: a fix in flight that ends
            # the visit before the deadline is evaluated first.
            heapq.heappush(
                self._timers, (deadline + self._window_us, device_id, fence_id, state.since)
            )

    def _fire_timers(self, now_us: int) -> list[Event]:
        events: list[Event] = []
        later: list[tuple[int, str, str, int]] = []
        timers = self._timers
        while timers and timers[0][0] <= now_us:
            timer = heapq.heappop(timers)
            _, device_id, fence_id, since = timer
            device = self._devices.get(device_id)
            state = None if device is None else device.fences.get(fence_id)
            fence = self.index.get(fence_id)
            if (
                device is None
                or state is None
                or fence is None
                or not state.inside
                or state.since != since
                or state.dwell is not _Dwell.PENDING
            ):
                continue  # the visit ended, fired, was cancelled or forgotten
            deadline = self._deadline(fence, state)
            if deadline is None:
                continue
            if deadline + self._window_us > now_us:  # the fence's dwell time changed
                later.append((deadline + self._window_us, device_id, fence_id, since))
                continue
            if (state.run > 0 and state.run_ts <= deadline) or (
                device.held and device.held[0].ts <= deadline
            ):
                # An exit run is undecided, or fixes before the deadline are still held:
                # the fixes decide (and fire it by fix time if the visit lasted).
                later.append((now_us + 1, device_id, fence_id, since))
                continue
            if not fence.applies_to(device.kind, device.groups, _time(deadline)):
                continue
            events.append(self._dwell_event(device_id, fence_id, state, deadline))
            state.dwell = _Dwell.FIRED
        for timer in later:
            heapq.heappush(timers, timer)
        return events


def _bound(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
