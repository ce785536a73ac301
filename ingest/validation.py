"""The rules a decoded fix must meet before it is stored.

Times are judged against the fix's arrival at the ingester (`received_at`), so one batch
is judged consistently however long it takes to write. A message the broker redelivers
arrives anew: after an ingester outage longer than the maximum fix age, its backlog is
quarantined as ts_too_old (kept with its bytes, not lost); raise the setting, or set 0,
to take such a backlog in.
"""

from __future__ import annotations

import math
from datetime import timedelta

from mqtt.rejects import Reason
from tracker.positions import Fix

FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_SEQ = 2**63 - 1

# Plausible bounds of optional fields, in their wire units; outside them a value is a bug.
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    "alt": (-20_000.0, 100_000.0),
    "rel_alt": (-20_000.0, 100_000.0),
    "speed": (0.0, 1_000.0),
    "heading": (0.0, 360.0),
    "acc": (0.0, 1_000_000.0),
    "battery": (0.0, 100.0),
}


class FixRules:
    """`max_age` None accepts any age (backfill); otherwise older fixes are refused."""

    def __init__(self, max_age: timedelta | None) -> None:
        self.max_age = max_age

    def __call__(self, fix: Fix) -> tuple[Reason, str] | None:
        for name in ("lat", "lon", *FIELD_BOUNDS):
            value = getattr(fix, name)
            if value is not None and not math.isfinite(value):
                return Reason.NOT_FINITE, f"{name} is {value}"
        if not -90.0 <= fix.lat <= 90.0:
            return Reason.LAT_OUT_OF_RANGE, f"lat {fix.lat} is outside [-90, 90]"
        if not -180.0 <= fix.lon <= 180.0:
            return Reason.LON_OUT_OF_RANGE, f"lon {fix.lon} is outside [-180, 180]"
        if fix.ts > fix.received_at + FUTURE_TOLERANCE:
            ahead = (fix.ts - fix.received_at).total_seconds()
            return Reason.TS_IN_FUTURE, f"ts is {ahead:.0f} s ahead of arrival (limit 300 s)"
        if self.max_age is not None and fix.received_at - fix.ts > self.max_age:
            age = (fix.received_at - fix.ts).total_seconds()
            limit = self.max_age.total_seconds()
            return Reason.TS_TOO_OLD, f"fix is {age:.0f} s old; the limit is {limit:.0f} s"
        for name, (low, high) in FIELD_BOUNDS.items():
            value = getattr(fix, name)
            if value is not None and not low <= value <= high:
                return Reason.VALUE_OUT_OF_RANGE, f"{name} {value} is outside [{low:g}, {high:g}]"
        if fix.seq is not None and not 0 <= fix.seq <= MAX_SEQ:
            return Reason.VALUE_OUT_OF_RANGE, f"seq {fix.seq} is outside [0, 2^63-1]"
        return None
