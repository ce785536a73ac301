"""Why a message was refused: the reason codes that quarantine and metrics count by."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec


class Reason(enum.StrEnum):
    PAYLOAD_TOO_LARGE = "payload_too_large"
    EMPTY_PAYLOAD = "empty_payload"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    TS_INVALID = "ts_invalid"
    TS_UNIT = "ts_unit"
    TS_IN_FUTURE = "ts_in_future"
    TS_TOO_OLD = "ts_too_old"
    LAT_OUT_OF_RANGE = "lat_out_of_range"
    LON_OUT_OF_RANGE = "lon_out_of_range"
    NOT_FINITE = "not_finite"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    BAD_DEVICE_ID = "bad_device_id"
    UNKNOWN_TOPIC = "unknown_topic"
    INVALID_STATUS = "invalid_status"
    CONFLICT = "conflict"
    DELIVERY_REFUSED = "delivery_refused"
    RATE_LIMITED = "rate_limited"
    STORAGE_ERROR = "storage_error"


class Rejected(msgspec.Struct, frozen=True):
    """A message, or one element of a batch array, that will not become a fix.

    `raw` is the offending bytes (the array element alone when one element is bad);
    `size` is the full size of what arrived, kept even when `raw` is truncated for storage.
    """

    topic: str
    reason: Reason
    detail: str
    raw: bytes
    size: int
    received_at: datetime
    device_id: str | None = None
