"""Per-device flood limit: a device that reports far above a sane rate cannot fill the
database.

Each device has two token buckets of `rate` per second and a burst of `BURST_S` seconds'
worth:
- fixes are charged on **fix time**: the bucket refills as the device's latest fix time
  advances. A backlog the broker redelivers after an ingester outage, or a device's
  offline buffer, is as dense in fix time as the device really was and passes, although
  it arrives all at once; a device cannot store more fixes than one reporting at `rate`
  across the span its fix times cover (which validation bounds: 5 minutes ahead of
  arrival, the maximum fix age behind).
- everything else that makes a row (rejects for quarantine, status reports, delivery
  reports) is charged on **arrival time**: it carries no time of its own to trust.
Messages on topics that name no valid device share one bucket.

What is over the limit is counted (`rate_limited`) and summed up per message in one
`rate_limited` reject, which keeps the message's bytes; only the first
`SAMPLE_PER_MINUTE` of those per device and minute are quarantined, the others are
counted (`rate_limited_unquarantined`) and dropped, so the quarantine of a flood grows by
a bounded amount. Device state is kept for at most `MAX_DEVICES` devices, least recently
seen evicted first (`flood_evictions`): an evicted device starts again with a full burst.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import datetime

from mqtt.codec import Decoded, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from tracker.handoff import DeliveryReport
from tracker.positions import Fix

# A burst of this many seconds at the rate: a minute of backlog redelivered after a
# broker reconnect, or out of order, passes on top of the steady rate.
BURST_S = 60.0
# Rate-limited messages quarantined per device and minute of arrival; the rest counted.
SAMPLE_PER_MINUTE = 10
MAX_DEVICES = 100_000
# The bucket of messages on topics that name no valid device (unknown topic, bad id).
UNADDRESSED = ""
_MINUTE_S = 60.0


class _Bucket:
    """Tokens refilled at `rate` per second of the bucket's own clock, at most `burst`."""

    __slots__ = ("clock", "tokens")

    def __init__(self, clock: float, tokens: float) -> None:
        self.clock = clock
        self.tokens = tokens

    def take(self, at: float, rate: float, burst: float) -> bool:
        # A clock that goes back (late fixes, a wall clock stepped back) refills nothing.
        if at > self.clock:
            self.tokens = min(burst, self.tokens + (at - self.clock) * rate)
            self.clock = at
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Device:
    fixes: _Bucket | None
    messages: _Bucket
    minute: float  # start of the current sampling minute, arrival time in seconds
    sampled: int


class FloodGuard:
    """`admit` passes what is within each device's rate and turns the rest into counted,
    sampled `rate_limited` rejects. No I/O and no clock of its own: times come from the
    items and the caller. One per ingester, used from its receive loop only."""

    def __init__(
        self,
        rate: float,
        *,
        burst_s: float = BURST_S,
        sample_per_minute: int = SAMPLE_PER_MINUTE,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        if rate <= 0 or burst_s <= 0 or max_devices < 1 or sample_per_minute < 0:
            raise ValueError("rate, burst and device cap must be positive")
        self.rate = rate
        self.burst = max(1.0, rate * burst_s)
        self.sample_per_minute = sample_per_minute
        self.max_devices = max_devices
        self._devices: OrderedDict[str, _Device] = OrderedDict()

    def __len__(self) -> int:
        return len(self._devices)

    def admit(
        self,
        topic: str,
        payload: bytes,
        items: list[Decoded],
        received_at: datetime,
        counts: Counter[str],
    ) -> list[Decoded]:
        """The items of one message within their devices' limits, plus at most one
        `rate_limited` reject per device for what is over them."""
        arrival = received_at.timestamp()
        admitted: list[Decoded] = []
        over: dict[str, list[Decoded]] = {}
        if len(items) > 1:
            # Fixes in fix-time order, so that an offline buffer's order does not matter.
            fixes = sorted((i for i in items if isinstance(i, Fix)), key=lambda f: f.ts)
            items = [*fixes, *(i for i in items if not isinstance(i, Fix))]
        for item in items:
            if isinstance(item, Ignored):
                admitted.append(item)  # stores nothing, so costs nothing
                continue
            key = _device_key(item)
            device = self._device(key, arrival, counts)
            if isinstance(item, Fix):
                at = item.ts.timestamp()
                if device.fixes is None:
                    device.fixes = _Bucket(at, self.burst)
                allowed = device.fixes.take(at, self.rate, self.burst)
            else:
                allowed = device.messages.take(arrival, self.rate, self.burst)
            if allowed:
                admitted.append(item)
            else:
                over.setdefault(key, []).append(item)
        for key, refused in over.items():
            counts["rate_limited"] += len(refused)
            device = self._device(key, arrival, counts)
            if arrival - device.minute >= _MINUTE_S or arrival < device.minute:
                device.minute, device.sampled = arrival, 0
            if device.sampled >= self.sample_per_minute:
                counts["rate_limited_unquarantined"] += len(refused)
                continue
            device.sampled += 1
            admitted.append(self._reject(topic, payload, key, refused, received_at))
        return admitted

    def _device(self, key: str, arrival: float, counts: Counter[str]) -> _Device:
        device = self._devices.get(key)
        if device is not None:
            self._devices.move_to_end(key)
            return device
        if len(self._devices) >= self.max_devices:
            self._devices.popitem(last=False)
            counts["flood_evictions"] += 1
        device = _Device(None, _Bucket(arrival, self.burst), arrival, 0)
        self._devices[key] = device
        return device

    def _reject(
        self,
        topic: str,
        payload: bytes,
        key: str,
        refused: list[Decoded],
        received_at: datetime,
    ) -> Rejected:
        fixes = [i for i in refused if isinstance(i, Fix)]
        parts = []
        if fixes:
            span = f"{fixes[0].ts.isoformat()}" + (
                f" to {fixes[-1].ts.isoformat()}" if len(fixes) > 1 else ""
            )
            parts.append(f"{len(fixes)} fix(es) at {span}")
        if len(refused) > len(fixes):
            parts.append(f"{len(refused) - len(fixes)} other item(s)")
        who = f"device {key}" if key != UNADDRESSED else "messages naming no valid device"
        return Rejected(
            topic=topic,
            reason=Reason.RATE_LIMITED,
            detail=(
                f"{who} is over its limit of {self.rate:g}/s (burst {self.burst:g}):"
                f" {' and '.join(parts)} refused"
            ),
            raw=payload,
            size=len(payload),
            received_at=received_at,
            device_id=key or None,
        )


def _device_key(item: Fix | Rejected | StatusReport | DeliveryReport) -> str:
    if isinstance(item, Rejected):
        if item.device_id is None or item.reason is Reason.BAD_DEVICE_ID:
            # An invalid id is device-chosen text: keying on it would let one client
            # make any number of buckets.
            return UNADDRESSED
        return item.device_id
    return item.device_id
