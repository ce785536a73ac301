"""The broker's ceiling: a subscriber that costs the broker nothing but the messages.

`python -m bench.e2e.bare_broker --url mqtt://... --filter '$share/<group>/fleet/+/telemetry'`
A minimal MQTT v5 client on a plain socket: CONNECT (Receive Maximum 65,535), one QoS 1
SUBSCRIBE, then every PUBLISH is acknowledged as it is read, the PUBACKs of one read in
one write. It parses no more than the packet id, so the broker, not this client, is the
limit (an aiomqtt subscriber runs out of CPU first: `bench.ingest.bare`). Prints
`{"ready": true}` once subscribed, then every half second `{"t": <epoch s>, "received": <n>}`
until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import time
from urllib.parse import urlsplit

from bench.ingest import mqtt5

REPORT_EVERY_S = 0.5
READ_CHUNK_BYTES = 1 << 20
RECEIVE_MAXIMUM = 65_535
SUBSCRIBE = 0x82
SUBACK = 0x90
PUBLISH = 0x30
SUBSCRIBE_PACKET_ID = 1
_U16 = struct.Struct("!H")


def connect_packet(client_id: str) -> bytes:
    properties = bytes([mqtt5.PROPERTY_RECEIVE_MAXIMUM]) + _U16.pack(RECEIVE_MAXIMUM)
    variable = (
        mqtt5.PROTOCOL_NAME
        + bytes([mqtt5.PROTOCOL_LEVEL_V5, mqtt5.CONNECT_FLAG_CLEAN_START])
        + _U16.pack(mqtt5.KEEPALIVE_S)
        + mqtt5.varint(len(properties))
        + properties
    )
    body = variable + mqtt5.utf8(client_id)
    return bytes([mqtt5.CONNECT]) + mqtt5.varint(len(body)) + body


def subscribe_packet(topic_filter: str) -> bytes:
    body = _U16.pack(SUBSCRIBE_PACKET_ID) + b"\x00" + mqtt5.utf8(topic_filter) + b"\x01"
    return bytes([SUBSCRIBE]) + mqtt5.varint(len(body)) + body


class Counter:
    """Reads packets from a buffer; returns the PUBACKs owed for the PUBLISHes in it."""

    def __init__(self) -> None:
        self.received = 0
        self.subscribed = False
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._buffer
        buffer += chunk
        acks = []
        offset, end = 0, len(buffer)
        while offset < end:
            header = mqtt5.read_varint(buffer, offset + 1)
            if header is None:
                break
            length, start = header
            if start + length > end:
                break
            kind = buffer[offset] & 0xF0
            if kind == PUBLISH:
                qos = (buffer[offset] >> 1) & 0x03
                if qos:
                    topic_length = _U16.unpack_from(buffer, start)[0]
                    packet_id = buffer[start + 2 + topic_length : start + 4 + topic_length]
                    acks.append(b"\x40\x02" + packet_id)
                self.received += 1
            elif kind == SUBACK:
                self.subscribed = True
            offset = start + length
        del buffer[:offset]
        return b"".join(acks)


async def main(url: str, topic_filter: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 1883)
    writer.write(connect_packet("e2e-bare-broker") + subscribe_packet(topic_filter))
    counter = Counter()

    async def read() -> None:
        while chunk := await reader.read(READ_CHUNK_BYTES):
            acks = counter.feed(chunk)
            if acks:
                writer.write(acks)
            if counter.subscribed and not ready.is_set():
                ready.set()

    async def report() -> None:
        await ready.wait()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            print(json.dumps({"t": time.time(), "received": counter.received}), flush=True)
            await asyncio.sleep(REPORT_EVERY_S)

    ready = asyncio.Event()
    tasks = [asyncio.create_task(read(), name="bare-read"), asyncio.create_task(report())]
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
    for task in (*tasks, stopping):
        task.cancel()
    await asyncio.gather(*tasks, stopping, return_exceptions=True)
    print(json.dumps({"t": time.time(), "received": counter.received}), flush=True)
    writer.write(mqtt5.disconnect_packet())
    writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--filter", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.filter))
