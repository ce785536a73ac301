"""A batch: what arrived since the last write, de-duplicated by (device, fix time).

Within a batch, a repeat of a fix with the same content is counted as a duplicate; one
with different content is a conflict and is rejected, never merged. Repeats across
batches are settled by the database (see `writer`).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Protocol

from mqtt.codec import Decoded, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from tracker.handoff import DeliveryReport
from tracker.positions import Fix


class Received(Protocol):
    """A message as the batch needs it: where it came from, and how to acknowledge it."""

    topic: str
    payload: bytes

    def ack(self) -> bool: ...


class Batch:
    def __init__(self) -> None:
        self.fixes: dict[tuple[str, datetime], Fix] = {}
        # Where each held fix came from, for quarantining a conflicting copy with its bytes.
        self.sources: dict[tuple[str, datetime], Received] = {}
        self.rejects: list[Rejected] = []
        self.statuses: list[StatusReport] = []
        self.reports: list[tuple[DeliveryReport, Received]] = []
        self.counts: Counter[str] = Counter()
        self.deliveries: list[Received] = []
        self.opened_at: float | None = None  # time.monotonic() of the first message

    def __len__(self) -> int:
        """Messages held: what bounds how much is unacknowledged."""
        return len(self.deliveries)

    def add(self, delivery: Received, items: list[Decoded]) -> None:
        if self.opened_at is None:
            self.opened_at = time.monotonic()
        self.deliveries.append(delivery)
        for item in items:
            if isinstance(item, Fix):
                self._add_fix(item, delivery)
            elif isinstance(item, Rejected):
                self.rejects.append(item)
            elif isinstance(item, StatusReport):
                self.statuses.append(item)
            elif isinstance(item, DeliveryReport):
                self.reports.append((item, delivery))
            elif isinstance(item, Ignored):
                self.counts["ignored_" + item.what] += 1

    def _add_fix(self, fix: Fix, delivery: Received) -> None:
        earlier = self.fixes.get(fix.key)
        if earlier is None:
            self.fixes[fix.key] = fix
            self.sources[fix.key] = delivery
        elif earlier.same_content(fix):
            self.counts["duplicates"] += 1
        else:
            self.rejects.append(conflict(fix, delivery))


def conflict(fix: Fix, source: Received) -> Rejected:
    """The reject for a second, different fix at a time the device already reported; it
    keeps the whole message that carried it."""
    return Rejected(
        topic=source.topic,
        reason=Reason.CONFLICT,
        detail=f"{fix.device_id} already reported a different fix at {fix.ts.isoformat()}",
        raw=source.payload,
        size=len(source.payload),
        received_at=fix.received_at,
        device_id=fix.device_id,
    )
