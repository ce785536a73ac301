"""Events the tracker emits: small frozen records with deterministic ids.

The id is derived from (device, subject, kind, event time), so evaluating the same fixes
again after a redelivery, a restart or a rebuild yields the same ids, and storing an
event twice is a no-op.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import msgspec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EventKind(enum.StrEnum):
    ENTER = "enter"
    EXIT = "exit"
    DWELL = "dwell"
    CROSS = "cross"
    ALTITUDE_BREACH = "altitude_breach"
    OFFLINE = "offline"
    ONLINE = "online"
    TELEMETRY_GAP = "telemetry_gap"
    EN_ROUTE = "en_route"
    APPROACHING = "approaching"
    ARRIVED = "arrived"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LATE_RISK = "late_risk"
    LATE_RISK_CLEARED = "late_risk_cleared"
    BATTERY_INFEASIBLE = "battery_infeasible"
    BATTERY_INFEASIBLE_CLEARED = "battery_infeasible_cleared"


class Event(msgspec.Struct, frozen=True, gc=False):
    """`fence_id` names the fence of a geofence event, `delivery_id` the delivery of a
    delivery event; both are None for device events (offline, online, telemetry gap)."""

    device_id: str
    kind: EventKind
    ts: datetime
    fence_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    detail: str = ""
    delivery_id: str | None = None

    @property
    def id(self) -> str:
        micros = (self.ts - _EPOCH) // timedelta(microseconds=1)
        subject = self.fence_id or self.delivery_id or "-"
        return f"{self.device_id}|{subject}|{self.kind.value}|{micros}"
