"""Periodic work over many items, one slice at a time.

The tracker checks every device for silence once a second and checkpoints every
partition every few seconds. Done for all partitions at once, each is a pause that
grows with the fleet (100,000 devices: ~20 ms of silence checks, ~140 ms of checkpoint
encoding), and every fix arriving meanwhile waits; spread over the period, each pause
is one partition's share and the work per period is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Rotation(Generic[T]):
    """Each item is due once per `period` (seconds), the items' turns evenly spaced."""

    def __init__(self, items: Sequence[T], period: float, start: float) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, not {period}")
        self._items = list(items)
        self._slot = period / max(len(self._items), 1)
        self._next = start
        self._turn = 0

    def due(self, now: float) -> list[T]:
        """The items whose turn came by `now`, in order; after a long stall each item
        once, not a burst of everything missed."""
        due: list[T] = []
        while self._items and now >= self._next and len(due) < len(self._items):
            due.append(self._items[self._turn])
            self._turn = (self._turn + 1) % len(self._items)
            self._next += self._slot
        if now >= self._next:
            self._next = now + self._slot
        return due
