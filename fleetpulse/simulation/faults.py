"""Faults injected on purpose into what simulated devices send. Pure.

Each knob is a rate (the share of fixes it hits, 0 to 1) with, where it needs one, a
size. A fault changes how fixes reach the broker, never which fixes exist: every fix fed
in comes out exactly once as a fix (a duplicate is the same bytes twice, which the
ingester stores once), so a run stores exactly the fixes it generated, and the malformed
messages come on top, each refused with a known reason.

- jitter: the position is displaced by Gaussian noise of `jitter_m` metres per axis.
- late: the fix is held back `late_s` seconds (its fix time unchanged).
- out_of_order: the fix is sent right after the device's next one.
- duplicate: the message is sent twice.
- offline: the device goes offline for `offline_s` seconds, buffering its fixes, then
  flushes them as one JSON array (the contract's offline buffer).
- malformed: the device also sends a broken message (`MALFORMED` lists them).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import msgspec

from fleetpulse.simulation.geo import offset
from fleetpulse.simulation.messages import (
    Channel,
    Outgoing,
    encode_buffer,
    encode_fix,
    fix_fields,
    telemetry,
)
from mqtt.payloads import FixPayload
from mqtt.rejects import Reason

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class FaultConfig:
    jitter: float = 0.0
    jitter_m: float = 15.0
    late: float = 0.0
    late_s: float = 30.0
    out_of_order: float = 0.0
    duplicate: float = 0.0
    offline: float = 0.0
    offline_s: float = 60.0
    malformed: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_m", "_s")):
                if not value >= 0:
                    raise ValueError(f"{f.name} must be 0 or more, got {value}")
            elif not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} is a rate between 0 and 1, got {value}")
        if self.late + self.out_of_order > 1.0:
            raise ValueError("late and out_of_order together exceed 1: a fix is held only once")


def _without(name: str) -> Callable[[FixPayload], bytes]:
    def build(fix: FixPayload) -> bytes:
        body = fix_fields(fix)
        del body[name]
        return _encoder.encode(body)

    return build


def _with(name: str, value: object) -> Callable[[FixPayload], bytes]:
    def build(fix: FixPayload) -> bytes:
        return _encoder.encode({**fix_fields(fix), name: value})

    return build


def _seconds(fix: FixPayload) -> bytes:
    assert isinstance(fix.ts, int)
    return _encoder.encode({**fix_fields(fix), "ts": fix.ts // 1000})


# The broken messages a device may send, each with the reason the ingester must give.
MALFORMED: dict[Reason, Callable[[FixPayload], bytes]] = {
    Reason.INVALID_JSON: lambda fix: encode_fix(fix)[:-3],  # cut off mid-message
    Reason.MISSING_FIELD: _without("lat"),
    Reason.INVALID_FIELD: _with("lat", "north"),
    Reason.TS_UNIT: _seconds,  # epoch seconds where milliseconds are due
    Reason.LAT_OUT_OF_RANGE: _with("lat", 91.5),
    Reason.EMPTY_PAYLOAD: lambda fix: b"",
}
MALFORMED_PREFIX = "malformed:"


@dataclass
class _Offline:
    until_s: float
    fixes: list[FixPayload] = field(default_factory=list)


class FaultInjector:
    """Feed each fix as the device produces it; send what `feed` and `due` return."""

    def __init__(self, config: FaultConfig, rng: random.Random) -> None:
        self.config = config
        self.counts: Counter[str] = Counter()
        self._rng = rng
        self._held: list[tuple[float, int, Outgoing]] = []  # late ones, by release time
        self._order = itertools.count()
        self._swapped: dict[str, Outgoing] = {}
        self._offline: dict[str, _Offline] = {}

    def feed(self, now_s: float, device_id: str, fix: FixPayload) -> list[Outgoing]:
        c, rng = self.config, self._rng
        out: list[Outgoing] = []
        if c.jitter and rng.random() < c.jitter:
            fix = self._jitter(fix)
        offline = self._offline.get(device_id)
        if offline is None and c.offline and rng.random() < c.offline:
            offline = self._offline[device_id] = _Offline(now_s + c.offline_s)
            self.counts["offline"] += 1
        if offline is not None:
            offline.fixes.append(fix)
            self.counts["offline_buffered"] += 1
            return out
        if c.malformed and rng.random() < c.malformed:
            reason = rng.choice(list(MALFORMED))
            fault = MALFORMED_PREFIX + reason.value
            out.append(Outgoing(device_id, Channel.TELEMETRY, MALFORMED[reason](fix), 0, fault))
            self.counts["malformed"] += 1
        message = telemetry(device_id, fix)
        draw = rng.random() if c.late or c.out_of_order else 1.0
        if draw < c.late:
            held = msgspec.structs.replace(message, fault="late")
            heapq.heappush(self._held, (now_s + c.late_s, next(self._order), held))
            self.counts["late"] += 1
            return out
        if draw < c.late + c.out_of_order and device_id not in self._swapped:
            self._swapped[device_id] = msgspec.structs.replace(message, fault="out_of_order")
            self.counts["out_of_order"] += 1
            return out
        out.append(message)
        if c.duplicate and rng.random() < c.duplicate:
            out.append(msgspec.structs.replace(message, fault="duplicate"))
            self.counts["duplicate"] += 1
        swapped = self._swapped.pop(device_id, None)
        if swapped is not None:
            out.append(swapped)  # after a newer fix of the same device
        return out

    def next_release_s(self) -> float | None:
        """When `due` will next have something to send, if anything is held."""
        times = [until.until_s for until in self._offline.values()]
        if self._held:
            times.append(self._held[0][0])
        return min(times, default=None)

    def due(self, now_s: float) -> list[Outgoing]:
        """Held messages whose time has come: late fixes, ended offline spells."""
        out = []
        while self._held and self._held[0][0] <= now_s:
            out.append(heapq.heappop(self._held)[2])
        for device_id, offline in list(self._offline.items()):
            if offline.until_s <= now_s:
                out.append(self._flush(device_id, offline))
        return out

    def drain(self) -> list[Outgoing]:
        """Everything still held, at the end of a run: no fix is left behind."""
        out = [held for _, _, held in sorted(self._held)]
        self._held.clear()
        out.extend(self._swapped.values())
        self._swapped.clear()
        out.extend(self._flush(d, o) for d, o in list(self._offline.items()))
        return out

    def _flush(self, device_id: str, offline: _Offline) -> Outgoing:
        del self._offline[device_id]
        payload = encode_buffer(offline.fixes)
        return Outgoing(device_id, Channel.TELEMETRY, payload, len(offline.fixes), "offline_flush")

    def _jitter(self, fix: FixPayload) -> FixPayload:
        m = self.config.jitter_m
        lat, lon = offset(fix.lat, fix.lon, self._rng.gauss(0, m), self._rng.gauss(0, m))
        self.counts["jitter"] += 1
        return msgspec.structs.replace(fix, lat=lat, lon=lon)
