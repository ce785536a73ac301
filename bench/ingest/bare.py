"""The baseline: an aiomqtt subscriber that does nothing with what it receives.

`python -m bench.ingest.bare --url ... --filter '$share/<group>/fleet/+/telemetry'`
MQTT v5, QoS 1, acknowledged by aiomqtt on arrival. Prints `{"ready": true}` once
subscribed, then every second `{"t": <epoch s>, "received": <total>}` until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from urllib.parse import urlsplit

import aiomqtt

REPORT_EVERY_S = 1.0


async def _count(client: aiomqtt.Client, counter: list[int]) -> None:
    async for _message in client.messages:
        counter[0] += 1


async def _report(counter: list[int]) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        print(json.dumps({"t": time.time(), "received": counter[0]}), flush=True)


async def main(url: str, topic_filter: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    parts = urlsplit(url)
    counter = [0]
    async with aiomqtt.Client(
        hostname=parts.hostname or "127.0.0.1",
        port=parts.port or 1883,
        identifier="bench-bare",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
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
    print(json.dumps({"t": time.time(), "received": counter[0]}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--filter", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.filter))
