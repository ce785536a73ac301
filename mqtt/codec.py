"""Turns one MQTT message into fixes, status reports and rejects.

Decoding never raises on device input: every problem becomes a `Rejected` with a reason
code and a detail that names the field, so the ingester can quarantine it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from mqtt import payloads
from mqtt.rejects import Reason, Rejected
from mqtt.topics import Route, TopicScheme
from tracker.handoff import DeliveryReport
from tracker.positions import DeviceKind, Fix, is_valid_device_id

MAX_PAYLOAD_BYTES = 256 * 1024
# Epoch milliseconds below this are seconds sent by mistake (1e11 ms is March 1973).
MIN_EPOCH_MS = 100_000_000_000
KMH_TO_MS = 1 / 3.6
MAX_DETAIL_CHARS = 500
# OwnTracks message types are short lower-case words; anything else is counted as "other"
# so that device text never becomes a counter's name.
_OWNTRACKS_TYPE = re.compile(r"[a-z]{1,24}")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StatusReport(msgspec.Struct, frozen=True):
    device_id: str
    status: str  # "online" | "offline"
    received_at: datetime


class Ignored(msgspec.Struct, frozen=True):
    """A well-formed message that carries nothing to store; counted under `what`."""

    what: str


Decoded = Fix | Rejected | StatusReport | Ignored | DeliveryReport
# Returns (reason, detail) for a fix that breaks a rule, None for a good one.
FixCheck = Callable[[Fix], tuple[Reason, str] | None]


class _Reject(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class Codec:
    def __init__(self, scheme: TopicScheme, check: FixCheck | None = None) -> None:
        self.scheme = scheme
        self._check = check

    def decode(self, topic: str, payload: bytes, received_at: datetime) -> list[Decoded]:
        addressed = self.scheme.parse(topic)
        route, device_id = addressed.route, addressed.device_id

        def reject(reason: Reason, detail: str, raw: bytes = payload) -> Rejected:
            return Rejected(
                topic=topic,
                reason=reason,
                detail=detail,
                raw=raw,
                size=len(raw),
                received_at=received_at,
                device_id=device_id or None,
            )

        if route is Route.UNKNOWN:
            return [reject(Reason.UNKNOWN_TOPIC, f"no route for topic {topic!r}")]
        if route is Route.OWNTRACKS_SUBTOPIC:
            return [Ignored("owntracks_subtopic")]
        if not is_valid_device_id(device_id):
            return [
                reject(
                    Reason.BAD_DEVICE_ID,
                    f"device id {device_id!r} must match [A-Za-z0-9_.:-]{{1,64}}",
                )
            ]
        if len(payload) > MAX_PAYLOAD_BYTES:
            return [
                reject(
                    Reason.PAYLOAD_TOO_LARGE,
                    f"{len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                )
            ]
        if route is Route.STATUS:
            return [self._status(device_id, payload, received_at, reject)]
        if not payload.strip():
            return [reject(Reason.EMPTY_PAYLOAD, "empty payload")]
        try:
            if route is Route.OWNTRACKS:
                return [self._owntracks(device_id, payload, received_at, reject)]
            if route is Route.DELIVERY:
                return [self._delivery(device_id, payload, reject)]
            return self._telemetry(device_id, payload, received_at, reject)
        except RecursionError:
            # msgspec descends into nested JSON (even into fields it skips) as deep as the
            # interpreter's recursion limit allows; deeper is refused, never a crash.
            return [reject(Reason.INVALID_JSON, "JSON nested too deeply")]

    def _accept(
        self, fix: Fix, raw: bytes, reject: Callable[[Reason, str, bytes], Rejected]
    ) -> Fix | Rejected:
        if self._check is not None:
            problem = self._check(fix)
            if problem is not None:
                return reject(problem[0], problem[1], raw)
        return fix

    def _telemetry(
        self,
        device_id: str,
        payload: bytes,
        received_at: datetime,
        reject: Callable[..., Rejected],
    ) -> list[Decoded]:
        if payload.lstrip()[:1] != b"[":
            return [self._one_fix(device_id, payload, received_at, reject)]
        try:
            elements = payloads.raw_array_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            return [reject(Reason.INVALID_JSON, str(exc))]
        if not elements:
            return [reject(Reason.EMPTY_PAYLOAD, "empty array")]
        out: list[Decoded] = []
        for index, element in enumerate(elements):
            raw = bytes(element)
            decoded = self._one_fix(device_id, raw, received_at, reject)
            if isinstance(decoded, Rejected):
                decoded = msgspec.structs.replace(
                    decoded, detail=f"element {index}: {decoded.detail}"
                )
            out.append(decoded)
        return out

    def _one_fix(
        self,
        device_id: str,
        raw: bytes,
        received_at: datetime,
        reject: Callable[..., Rejected],
    ) -> Fix | Rejected:
        try:
            p = payloads.fix_decoder.decode(raw)
            ts = _fix_time(p.ts)
        except msgspec.ValidationError as exc:
            return reject(*_classify(exc), raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return reject(Reason.INVALID_JSON, str(exc), raw)
        except _Reject as exc:
            return reject(exc.reason, exc.detail, raw)
        fix = Fix(
            device_id=device_id,
            ts=ts,
            lat=p.lat,
            lon=p.lon,
            received_at=received_at,
            alt=p.alt,
            rel_alt=p.rel_alt,
            speed=p.speed,
            heading=p.heading,
            acc=p.acc,
            battery=p.battery,
            kind=p.kind,
            seq=p.seq,
        )
        return self._accept(fix, raw, reject)

    def _owntracks(
        self,
        device_id: str,
        payload: bytes,
        received_at: datetime,
        reject: Callable[..., Rejected],
    ) -> Decoded:
        try:
            message_type = payloads.owntracks_envelope_decoder.decode(payload).type
            if message_type == "lwt":
                return StatusReport(device_id, "offline", received_at)
            if message_type != "location":
                known = _OWNTRACKS_TYPE.fullmatch(message_type) is not None
                return Ignored(f"owntracks_{message_type if known else 'other'}")
            p = payloads.owntracks_location_decoder.decode(payload)
        except msgspec.ValidationError as exc:
            return reject(*_classify(exc))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return reject(Reason.INVALID_JSON, str(exc))
        if p.tst < 0:
            return reject(Reason.TS_INVALID, f"tst {p.tst} is negative")
        if p.tst >= MIN_EPOCH_MS:
            detail = f"tst {p.tst} is too large for epoch seconds (milliseconds sent by mistake?)"
            return reject(Reason.TS_UNIT, detail)
        fix = Fix(
            device_id=device_id,
            ts=EPOCH + timedelta(seconds=p.tst),
            lat=p.lat,
            lon=p.lon,
            received_at=received_at,
            alt=p.alt,
            speed=None if p.vel is None else p.vel * KMH_TO_MS,
            heading=p.cog,
            acc=p.acc,
            battery=p.batt,
            kind=DeviceKind.PHONE,
        )
        return self._accept(fix, payload, reject)

    @staticmethod
    def _delivery(device_id: str, payload: bytes, reject: Callable[..., Rejected]) -> Decoded:
        try:
            p = payloads.delivery_report_decoder.decode(payload)
            ts = _fix_time(p.ts)
        except msgspec.ValidationError as exc:
            return reject(*_classify(exc))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return reject(Reason.INVALID_JSON, str(exc))
        except _Reject as exc:
            return reject(exc.reason, exc.detail)
        if not is_valid_device_id(p.delivery_id):
            detail = f"delivery_id {p.delivery_id!r} must match [A-Za-z0-9_.:-]{{1,64}}"[:300]
            return reject(Reason.INVALID_FIELD, detail)
        # PostgreSQL text cannot hold NUL; the rest of a driver's note is kept.
        note = p.detail.replace("\x00", "")[:MAX_DETAIL_CHARS]
        return DeliveryReport(device_id, p.delivery_id, p.outcome, ts, note)

    @staticmethod
    def _status(
        device_id: str,
        payload: bytes,
        received_at: datetime,
        reject: Callable[..., Rejected],
    ) -> Decoded:
        text = payload.strip()
        if not text:
            # An empty retained message clears the last will; it reports nothing.
            return Ignored("status_cleared")
        if text[:1] == b'"':
            text = text.strip(b'"')
        status = text.decode("utf-8", "replace").lower()
        if status not in ("online", "offline"):
            return reject(
                Reason.INVALID_STATUS, f"status must be online or offline, not {status!r}"[:200]
            )
        return StatusReport(device_id, status, received_at)


def _fix_time(ts: datetime | int | float) -> datetime:
    if isinstance(ts, datetime):
        try:
            return ts.astimezone(UTC)
        except OverflowError:
            detail = f"ts {ts.isoformat()} is outside years 1-9999 in UTC"
            raise _Reject(Reason.TS_INVALID, detail) from None
    if ts < MIN_EPOCH_MS:
        raise _Reject(
            Reason.TS_UNIT,
            f"ts {ts} is too small for epoch milliseconds (seconds sent by mistake?)",
        )
    try:
        return EPOCH + timedelta(milliseconds=ts)
    except OverflowError:
        raise _Reject(Reason.TS_INVALID, f"ts {ts} is beyond the year 9999") from None


def _classify(exc: msgspec.ValidationError) -> tuple[Reason, str]:
    message = str(exc)
    if message.startswith("Object missing required field"):
        return Reason.MISSING_FIELD, message
    if message.endswith("`$.ts`") or message.endswith("`$.tst`"):
        return Reason.TS_INVALID, message
    return Reason.INVALID_FIELD, message
