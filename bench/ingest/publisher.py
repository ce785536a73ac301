"""One publisher process: `python -m bench.ingest.publisher --url ... --rate R ...`.

Connects with MQTT v5, waits for the common start time, offers QoS 1 fixes paced to the
rate (0: as fast as the broker's Receive Maximum allows), waits for every PUBACK, and
prints one JSON line: what it sent, what was acknowledged, and when.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Protocol
from urllib.parse import urlsplit

from bench.ingest import mqtt5
from bench.ingest.fixes import FixSource

# Pacing granularity: each tick sends what the rate owes since the start, in one write.
TICK_S = 0.005
CONNECT_TIMEOUT_S = 10.0
# After the last publish, how long to wait for the broker's outstanding PUBACKs.
ACK_TIMEOUT_S = 60.0
READ_CHUNK_BYTES = 256 * 1024
# Our own cap on unacknowledged publishes, below the broker's Receive Maximum if that is
# larger; mosquitto's config gives 1,000.
MAX_IN_FLIGHT = 1000


class PacketSource(Protocol):
    """What a publisher sends: the next PUBLISH packet (`FixSource`, or another
    benchmark's fleet)."""

    def next_packet(self, packet_id: int, now_ms: int) -> bytes: ...


class Publisher:
    def __init__(
        self,
        source: PacketSource,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        window: int,
    ) -> None:
        self._source = source
        self._reader = reader
        self._writer = writer
        self._window = window
        self._in_flight: set[int] = set()
        self._next_id = 0
        self._room = asyncio.Event()
        self._closed = False
        self.sent = 0
        self.acked = 0
        self.refused = 0

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % mqtt5.MAX_PACKET_ID + 1
            if self._next_id not in self._in_flight:
                self._in_flight.add(self._next_id)
                return self._next_id

    async def read_acks(self) -> None:
        buffer = bytearray()
        try:
            while chunk := await self._reader.read(READ_CHUNK_BYTES):
                buffer += chunk
                for first_byte, body in mqtt5.split_packets(buffer):
                    if first_byte & 0xF0 != mqtt5.PUBACK:
                        raise mqtt5.ProtocolError(f"unexpected packet type 0x{first_byte:02x}")
                    packet_id, reason = mqtt5.parse_puback(body)
                    self._in_flight.discard(packet_id)
                    self.acked += 1
                    if reason >= mqtt5.FIRST_ERROR_REASON:
                        self.refused += 1
                self._room.set()
        finally:
            # Whoever waits for room must not wait for acknowledgements that cannot come.
            self._closed = True
            self._room.set()

    async def _wait_for_room(self) -> None:
        self._room.clear()
        if self._closed:
            raise ConnectionError("the broker closed the connection")
        await self._room.wait()

    async def offer(self, rate: float, duration_s: float) -> tuple[float, float]:
        """Publish for `duration_s`; (first, last) publish times, epoch seconds."""
        start = time.monotonic()
        started_at = time.time()
        end = start + duration_s
        while (now := time.monotonic()) < end:
            owed = int(rate * (now - start)) - self.sent if rate > 0 else self._window
            free = self._window - len(self._in_flight)
            n = min(owed, free)
            if n > 0:
                now_ms = int(time.time() * 1000)
                packets = [self._source.next_packet(self._packet_id(), now_ms) for _ in range(n)]
                self._writer.write(b"".join(packets))
                self.sent += n
                await self._writer.drain()
            if free <= 0 or rate <= 0:
                # The window is full: wait for PUBACKs rather than spin.
                if self._window - len(self._in_flight) <= 0:
                    await self._wait_for_room()
            else:
                await asyncio.sleep(TICK_S)
        return started_at, time.time()

    async def settle(self) -> None:
        """Wait until every publish is acknowledged."""
        while self._in_flight:
            await self._wait_for_room()


async def _connect(
    url: str, client_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 1883)
    writer.write(mqtt5.connect_packet(client_id))
    await writer.drain()
    buffer = bytearray()
    while not (packets := mqtt5.split_packets(buffer)):
        chunk = await reader.read(READ_CHUNK_BYTES)
        if not chunk:
            raise ConnectionError("the broker closed the connection before CONNACK")
        buffer += chunk
    first_byte, body = packets[0]
    if first_byte != mqtt5.CONNACK:
        raise mqtt5.ProtocolError(f"expected CONNACK, got 0x{first_byte:02x}")
    return reader, writer, mqtt5.parse_connack(body)


async def publish(
    source: PacketSource,
    url: str,
    client_id: str,
    rate: float,
    duration: float,
    start_at: float,
    index: int,
) -> dict[str, object]:
    """Connect, wait for `start_at` (epoch s), offer `rate` for `duration`, wait for the
    PUBACKs, disconnect; the publisher's report (one JSON line's worth)."""
    reader, writer, receive_maximum = await asyncio.wait_for(
        _connect(url, client_id), CONNECT_TIMEOUT_S
    )
    publisher = Publisher(source, reader, writer, min(receive_maximum, MAX_IN_FLIGHT))
    acks = asyncio.create_task(publisher.read_acks(), name="publisher-acks")
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_before = _cpu_s()
        first, last = await publisher.offer(rate, duration)
        await asyncio.wait_for(publisher.settle(), ACK_TIMEOUT_S)
        writer.write(mqtt5.disconnect_packet())
        await writer.drain()
        cpu_used = _cpu_s() - cpu_before
    finally:
        acks.cancel()
        writer.close()
    return {
        "index": index,
        "receive_maximum": receive_maximum,
        "sent": publisher.sent,
        "acked": publisher.acked,
        "refused": publisher.refused,
        "first_publish_s": first,
        "last_publish_s": last,
        "cpu_s": cpu_used,
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    source = FixSource(args.index, args.publishers, args.devices, seed=args.seed + args.index)
    return await publish(
        source,
        args.url,
        f"bench-pub-{args.seed}-{args.index}",
        args.rate,
        args.duration,
        args.start_at,
        args.index,
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="mqtt://host:port")
    parser.add_argument("--rate", type=float, required=True, help="fixes/s; 0 = unpaced")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    parser.add_argument("--index", type=int, default=0, help="this publisher's number")
    parser.add_argument("--publishers", type=int, default=1, help="how many share devices")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(_args()))), flush=True)
