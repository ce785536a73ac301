"""One publisher process of the end-to-end benchmark:

    python -m bench.e2e.publisher --url mqtt://... --rate R --duration S --devices N \
        --vans V --index i --publishers P --epoch E --start-at T --offset K

Speaks for every P-th device from i, in the fleet's schedule (moving devices more often
than parked ones), starting K fixes into it (so that successive steps carry on the round
instead of starting it over). Publishes QoS 1 fixes
paced to R/s with the ingest benchmark's raw MQTT v5 publisher, each at the device's
position when it is sent (`ts` = publish time, epoch ms). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.e2e.fleet import Device, devices, schedule
from bench.ingest import mqtt5
from bench.ingest.publisher import publish


class DeviceFixes:
    """The fixes of some devices in turn, as PUBLISH packets (the ingest publisher's
    source interface: `next_packet`)."""

    def __init__(self, share: list[Device], epoch_s: float, offset: int) -> None:
        if not share:
            raise ValueError("this publisher speaks for no device")
        self._devices = share
        self._topics = [mqtt5.publish_topic_prefix(f"fleet/{d.id}/telemetry") for d in share]
        self._epoch_ms = epoch_s * 1000.0
        self._last_ts = [0] * len(share)
        self._order = schedule(share)
        self._next = offset % len(self._order)

    def next_packet(self, packet_id: int, now_ms: int) -> bytes:
        n = self._next
        self._next = n + 1 if n + 1 < len(self._order) else 0
        i = self._order[n]
        ts = max(now_ms, self._last_ts[i] + 1)  # one fix per device per millisecond at most
        self._last_ts[i] = ts
        device = self._devices[i]
        lat, lon, heading = device.at((ts - self._epoch_ms) / 1000.0)
        payload = (
            b'{"ts":%d,"lat":%.6f,"lon":%.6f,"speed":%.1f,"heading":%.0f,"kind":"vehicle"}'
            % (
                ts,
                lat,
                lon,
                device.speed_mps,
                heading,
            )
        )
        return mqtt5.publish_qos1(self._topics[i], packet_id, payload)


async def main(args: argparse.Namespace) -> dict[str, object]:
    share = devices(args.devices, args.vans, args.seed)[args.index :: args.publishers]
    return await publish(
        DeviceFixes(share, args.epoch, args.offset),
        args.url,
        f"e2e-pub-{args.seed}-{args.index}",
        args.rate,
        args.duration,
        args.start_at,
        args.index,
    )


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="mqtt://host:port")
    parser.add_argument("--rate", type=float, required=True, help="fixes/s of this publisher")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--devices", type=int, required=True, help="devices in the whole fleet")
    parser.add_argument("--vans", type=int, default=0, help="of which delivery vans")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--epoch", type=float, required=True, help="the fleet's time zero")
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    parser.add_argument("--offset", type=int, default=0, help="fixes of the schedule to skip")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(_args()))), flush=True)
