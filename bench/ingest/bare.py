"""The baseline: an aiomqtt subscriber that does nothing with what it receives.

`python -m bench.ingest.bare --url ... --filter '$share/<group>/fleet/+/telemetry'`
MQTT v5, QoS 1, acknowledged by aiomqtt on arrival. Prints `{"ready": true}` once
subscribed, then every second `{"t": <epoch s>, "received": <consumed>, "dropped": <n>}`
until SIGTERM.

Its incoming queue is bounded like the ingester's (two Receive Maximum windows) with
aiomqtt's own `max_queued_incoming_messages`. Left unbounded, aiomqtt's queue grows
without limit when offered more than it can consume, and the garbage collector's work
on that growing heap cuts the consume rate (measured here: ~3,100 msg/s unbounded,
~4,400 bounded, offered 20k/s), which would make the baseline look worse than aiomqtt is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPORT_EVERY_S = 1.0
# The ingester's defaults: Receive Maximum 4,000, reading pauses at two windows queued.
DEFAULT_RECEIVE_MAXIMUM = 4000
QUEUE_WINDOWS = 2


class _CountingQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue; counts what it sheds when full (aiomqtt only logs it)."""

    dropped = 0

    def put_nowait(self, item: aiomqtt.Message) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            _CountingQueue.dropped += 1
            raise


async def _count(client: aiomqtt.Client, counter: list[int]) -> None:
    async for _message in client.messages:
        counter[0] += 1


def _line(counter: list[int]) -> str:
    return json.dumps({"t": time.time(), "received": counter[0], "dropped": _CountingQueue.dropped})


async def _report(counter: list[int]) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        print(_line(counter), flush=True)


async def main(url: str, topic_filter: str, receive_maximum: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    parts = urlsplit(url)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = receive_maximum
    # aiomqtt logs a warning per dropped message; that would cost more than the drop.
    quiet: Any = logging.getLogger("bench.bare.aiomqtt")
    quiet.setLevel(logging.CRITICAL)
    counter = [0]
    async with aiomqtt.Client(
        hostname=parts.hostname or "127.0.0.1",
        port=parts.port or 1883,
        identifier="bench-bare",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        properties=properties,
        queue_type=_CountingQueue,
        max_queued_incoming_messages=QUEUE_WINDOWS * receive_maximum,
        logger=quiet,
    ) as client:
        await client.subscribe(topic_filter, qos=1)
        print(json.dumps({"ready": True}), flush=True)
        tasks = [
            asyncio.create_task(_count(client, counter), name="bare-count"),
            asyncio.create_task(_report(counter), name="bare-report"),
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    print(_line(counter), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--filter", required=True)
    parser.add_argument("--receive-maximum", type=int, default=DEFAULT_RECEIVE_MAXIMUM)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.filter, args.receive_maximum))
