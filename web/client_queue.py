"""One dispatch websocket client's outbox: the frames waiting to be sent to it. Pure.

The hub puts into every client's outbox without waiting; the client's own writer takes
from it as fast as its socket allows. Overflow policy, so that a slow client costs the
others nothing and loses nothing that matters:

- `positions` messages are merged once the outbox holds `capacity` messages: the newest
  state per device wins (by fix time, so a position never goes backwards), and each
  state replaced before it was sent is counted;
- everything else (events, ETAs, acknowledgements, replies) is never dropped or merged;
  it may take the outbox past `capacity`, up to `capacity * HARD_LIMIT_FACTOR`;
- a client whose outbox has stayed full for `slow_after_s`, or that has passed the hard
  limit, is too slow: the caller disconnects it (it can resume with `since`).

While a snapshot is being prepared the outbox is *held*: what arrives meanwhile waits
behind the snapshot, and on release drops what the snapshot already carries (device
states not newer than the snapshot's, events it or a replay already sent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# Events are never dropped, but a client that lets this many times its queue pile up
# will not catch up: it is disconnected at once rather than holding memory.
HARD_LIMIT_FACTOR = 10

_POSITIONS_HEAD = b'{"type":"positions","devices":['
_POSITIONS_TAIL = b"]}"


@dataclass(frozen=True, slots=True)
class Position:
    """One device's live state: what filters and merging need, and its JSON."""

    device_id: str
    ts: datetime
    lat: float
    lon: float
    json: bytes


class Positions:
    """One `positions` message; its frame is rendered once however many clients send it."""

    __slots__ = ("_frame", "states")

    def __init__(self, states: Mapping[str, Position]) -> None:
        self.states = states
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = positions_frame(self.states.values())
        return self._frame


def positions_frame(states: Iterable[Position]) -> bytes:
    return _POSITIONS_HEAD + b",".join(p.json for p in states) + _POSITIONS_TAIL


@dataclass(frozen=True, slots=True)
class Frame:
    """A message that is never dropped; `event_id` names the event it carries, if any."""

    data: bytes
    event_id: str | None = None


class QueueCounts(Protocol):
    """Where outboxes count what they shed (the hub's stats, shared by its clients)."""

    positions_coalesced: int  # positions messages merged into one already waiting
    states_superseded: int  # device states replaced by a newer one before being sent
    duplicates_dropped: int  # events not sent twice around a snapshot or a resume


@dataclass
class Counts:
    positions_coalesced: int = 0
    states_superseded: int = 0
    duplicates_dropped: int = 0


class _Slot:
    """A positions message waiting in a lane; merged into while it waits."""

    __slots__ = ("own", "positions")

    def __init__(self, positions: Positions) -> None:
        self.positions = positions
        # Batches are shared between clients: copied at the first merge, then owned.
        self.own: dict[str, Position] | None = None


class _Lane:
    __slots__ = ("items", "last_slot")

    def __init__(self) -> None:
        self.items: deque[Frame | _Slot] = deque()
        # The newest positions message still waiting: where the next ones merge.
        self.last_slot: _Slot | None = None


class Outbox:
    def __init__(
        self,
        capacity: int,
        slow_after_s: float,
        counts: QueueCounts | None = None,
        *,
        held: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.hard_limit = capacity * HARD_LIMIT_FACTOR
        self.slow_after_s = slow_after_s
        self.counts: QueueCounts = counts if counts is not None else Counts()
        self._live = _Lane()
        self._held: _Lane | None = _Lane() if held else None
        self._full_since: float | None = None
        self._skip: frozenset[str] = frozenset()
        self._skip_until = 0.0

    def __len__(self) -> int:
        held = len(self._held.items) if self._held is not None else 0
        return len(self._live.items) + held

    @property
    def held(self) -> bool:
        return self._held is not None

    @property
    def overflowing(self) -> bool:
        return len(self) > self.hard_limit

    def too_slow(self, now: float) -> bool:
        if self.overflowing:
            return True
        return self._full_since is not None and now - self._full_since >= self.slow_after_s

    # --- putting -------------------------------------------------------------------

    def put(self, frame: Frame, now: float) -> None:
        if frame.event_id is not None and self._skip:
            if now < self._skip_until:
                if frame.event_id in self._skip:
                    self.counts.duplicates_dropped += 1
                    return
            else:
                self._skip = frozenset()
        self._lane.items.append(frame)
        self._update_full(now)

    def put_positions(self, positions: Positions, now: float) -> None:
        lane = self._lane
        if len(self) < self.capacity or lane.last_slot is None:
            slot = _Slot(positions)
            lane.items.append(slot)
            lane.last_slot = slot
        else:
            self._merge(lane.last_slot, positions.states)
        self._update_full(now)

    @property
    def _lane(self) -> _Lane:
        return self._held if self._held is not None else self._live

    def _merge(self, slot: _Slot, states: Mapping[str, Position]) -> None:
        merged = slot.own if slot.own is not None else dict(slot.positions.states)
        for device_id, state in states.items():
            waiting = merged.get(device_id)
            if waiting is not None:
                self.counts.states_superseded += 1
                if state.ts < waiting.ts:
                    continue
            merged[device_id] = state
        slot.own = merged
        slot.positions = Positions(merged)
        self.counts.positions_coalesced += 1

    # --- taking --------------------------------------------------------------------

    def take(self, now: float) -> bytes | None:
        """The next frame to send; None when nothing may be sent yet."""
        lane = self._live
        if not lane.items:
            return None
        item = lane.items.popleft()
        if isinstance(item, _Slot):
            if lane.last_slot is item:
                lane.last_slot = None
            data = item.positions.frame
        else:
            data = item.data
        self._update_full(now)
        return data

    # --- holding for a snapshot ------------------------------------------------------

    def hold(self) -> None:
        """From now on, what is put waits behind the snapshot `release` will bring."""
        if self._held is None:
            self._held = _Lane()
            self._full_since = None

    def release(
        self,
        first: Sequence[Frame],
        now: float,
        *,
        newer_than: Mapping[str, datetime] | None = None,
        skip_ids: Collection[str] = (),
        skip_for_s: float = 0.0,
    ) -> None:
        """Queue `first` (a snapshot, replayed events), then what was held, minus device
        states not newer than `newer_than`'s and events in `skip_ids`; events in
        `skip_ids` put within the next `skip_for_s` are dropped too."""
        held, self._held = self._held, None
        live = self._live
        live.items.extend(first)
        # States merged from now on must not land before the snapshot.
        live.last_slot = None
        skip = frozenset(skip_ids)
        for item in held.items if held is not None else ():
            if isinstance(item, Frame):
                if item.event_id is not None and item.event_id in skip:
                    self.counts.duplicates_dropped += 1
                else:
                    live.items.append(item)
                continue
            kept = item.positions.states
            if newer_than:
                kept = {
                    k: s for k, s in kept.items() if k not in newer_than or s.ts > newer_than[k]
                }
                self.counts.states_superseded += len(item.positions.states) - len(kept)
            if kept:
                slot = item if len(kept) == len(item.positions.states) else _Slot(Positions(kept))
                live.items.append(slot)
                live.last_slot = slot
        if skip and skip_for_s > 0:
            self._skip, self._skip_until = skip, now + skip_for_s
        self._update_full(now)

    def _update_full(self, now: float) -> None:
        if self._held is None and len(self) >= self.capacity:
            if self._full_since is None:
                self._full_since = now
        else:
            self._full_since = None
