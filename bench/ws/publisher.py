"""One publisher process of the websocket benchmark:

    python -m bench.ws.publisher --url mqtt://... --rate R --duration S --vans N \
        --index i --publishers P --epoch E --start-at T

Speaks for every P-th van from i, publishing QoS 1 fixes paced to R/s with the ingest
benchmark's MQTT v5 publisher, each fix at the van's position at the time it is sent
(`ts` = publish time in epoch ms). Prints one JSON line: sent, acknowledged, when.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.ingest import mqtt5
from bench.ingest.publisher import publish
from bench.ws.fleet import Van, fleet


class VanFixes:
    """The fixes of some vans in turn, as PUBLISH packets (the ingest publisher's source)."""

    def __init__(self, vans: list[Van], epoch_s: float) -> None:
        if not vans:
            raise ValueError("this publisher speaks for no van")
        self._vans = vans
        self._topics = [mqtt5.publish_topic_prefix(f"fleet/{v.id}/telemetry") for v in vans]
        self._epoch_ms = epoch_s * 1000.0
        self._last_ts = [0] * len(vans)
        self._next = 0

    def next_packet(self, packet_id: int, now_ms: int) -> bytes:
        i = self._next
        self._next = (i + 1) % len(self._vans)
        ts = max(now_ms, self._last_ts[i] + 1)  # one fix per van per millisecond at most
        self._last_ts[i] = ts
        lat, lon, heading = self._vans[i].at((ts - self._epoch_ms) / 1000.0)
        payload = (
            b'{"ts":%d,"lat":%.6f,"lon":%.6f,"speed":10.0,"heading":%.0f,"kind":"vehicle"}'
            % (
                ts,
                lat,
                lon,
                heading,
            )
        )
        return mqtt5.publish_qos1(self._topics[i], packet_id, payload)


async def main(args: argparse.Namespace) -> dict[str, object]:
    vans = fleet(args.vans, args.seed)[args.index :: args.publishers]
    return await publish(
        VanFixes(vans, args.epoch),
        args.url,
        f"wsbench-pub-{args.seed}-{args.index}",
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
    parser.add_argument("--vans", type=int, required=True, help="vans in the whole fleet")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--epoch", type=float, required=True, help="the fleet's time zero")
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(_args()))), flush=True)
