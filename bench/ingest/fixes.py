"""The fixes the benchmark publishes: devices, topics and payloads.

Devices are spread over a ~10 km square around Porto's centre. Every (device, fix time)
is unique within a run, so the number of rows the ingester must store is exactly the
number of fixes the broker acknowledged.
"""

from __future__ import annotations

import random

from bench.ingest import mqtt5

PORTO_LAT = 41.15
PORTO_LON = -8.61
# Half the side of the square the devices are in, in degrees (~5 km).
SPREAD_DEG = 0.045
# A plausible urban delivery-van speed range, m/s.
MAX_SPEED_M_S = 20.0
DEVICE_ID_FORMAT = "bench-{:06d}"


def device_id(number: int) -> str:
    return DEVICE_ID_FORMAT.format(number)


def telemetry_topic(number: int, prefix: str = "fleet") -> str:
    return f"{prefix}/{device_id(number)}/telemetry"


class FixSource:
    """The devices one publisher speaks for (every `stride`-th from `first`), in turn.

    `next_packet` encodes one PUBLISH; the fix time is the publish time in epoch ms,
    moved one ms later when the device already used that millisecond.
    """

    def __init__(self, first: int, stride: int, devices: int, seed: int) -> None:
        numbers = range(first, devices, stride)
        if not numbers:
            raise ValueError(f"publisher {first} of {stride} has no devices out of {devices}")
        rng = random.Random(seed)
        self._topics = [mqtt5.publish_topic_prefix(telemetry_topic(n)) for n in numbers]
        self._lat = [PORTO_LAT + rng.uniform(-SPREAD_DEG, SPREAD_DEG) for _ in numbers]
        self._lon = [PORTO_LON + rng.uniform(-SPREAD_DEG, SPREAD_DEG) for _ in numbers]
        self._last_ts = [0] * len(numbers)
        self._next = 0
        self._rng = rng

    def next_packet(self, packet_id: int, now_ms: int) -> bytes:
        i = self._next
        self._next = i + 1 if i + 1 < len(self._topics) else 0
        ts = now_ms if now_ms > self._last_ts[i] else self._last_ts[i] + 1
        self._last_ts[i] = ts
        jitter = self._rng.random()
        payload = b'{"ts":%d,"lat":%.6f,"lon":%.6f,"speed":%.1f}' % (
            ts,
            self._lat[i] + jitter * 1e-4,
            self._lon[i] - jitter * 1e-4,
            jitter * MAX_SPEED_M_S,
        )
        return mqtt5.publish_qos1(self._topics[i], packet_id, payload)
