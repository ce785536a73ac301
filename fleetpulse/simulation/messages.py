"""What a simulated or replayed device sends: messages in the device contract
(docs/device-protocol.md), built from the contract's own structs (`mqtt.payloads`)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime

import msgspec

from mqtt.payloads import DeliveryReportPayload, FixPayload
from mqtt.topics import TopicScheme

_encoder = msgspec.json.Encoder()


class Channel(enum.StrEnum):
    """The device topics a simulated device publishes on."""

    TELEMETRY = "telemetry"
    STATUS = "status"
    DELIVERY = "delivery"


class Outgoing(msgspec.Struct, frozen=True):
    """One MQTT message of one device, and what it carries (for the counts)."""

    device_id: str
    channel: Channel
    payload: bytes
    fixes: int = 0  # fixes it carries: 1, an offline buffer's length, 0 for the rest
    fault: str | None = None  # the injected fault that shaped it, if any
    retain: bool = False

    def topic(self, scheme: TopicScheme) -> str:
        return f"{scheme.prefix}/{self.device_id}/{self.channel.value}"


def epoch_ms(ts: datetime) -> int:
    """Fix times go out as integer epoch milliseconds, the contract's compact form."""
    return round(ts.timestamp() * 1000)


def fix_fields(fix: FixPayload) -> dict[str, object]:
    """The fix as a JSON object without absent fields (the contract ignores nothing
    it does not know, but an explicit null costs bytes on every message)."""
    return {
        name: value for name in fix.__struct_fields__ if (value := getattr(fix, name)) is not None
    }


def encode_fix(fix: FixPayload) -> bytes:
    return _encoder.encode(fix_fields(fix))


def encode_buffer(fixes: Sequence[FixPayload]) -> bytes:
    """An offline buffer: one JSON array of fixes, oldest first."""
    return _encoder.encode([fix_fields(f) for f in fixes])


def telemetry(device_id: str, fix: FixPayload, fault: str | None = None) -> Outgoing:
    return Outgoing(device_id, Channel.TELEMETRY, encode_fix(fix), fixes=1, fault=fault)


def status(device_id: str, online: bool) -> Outgoing:
    """Retained, as the contract asks: the broker keeps the device's last word."""
    payload = b"online" if online else b"offline"
    return Outgoing(device_id, Channel.STATUS, payload, retain=True)


def delivery_report(device_id: str, delivery_id: str, ts: datetime, detail: str) -> Outgoing:
    report = DeliveryReportPayload(
        delivery_id=delivery_id, outcome="delivered", ts=epoch_ms(ts), detail=detail
    )
    return Outgoing(device_id, Channel.DELIVERY, _encoder.encode(report))
