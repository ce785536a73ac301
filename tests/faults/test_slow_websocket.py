"""A dispatch websocket client that stops reading, with the whole pipeline running as
processes (ingest, tracker, web): it is cut off, and a healthy client on the same worker
still gets every event once.

The cut-off itself, its timing and that other clients keep their pace, are tested at the
app level in tests/integration/web/test_ws_dispatch.py
(test_a_slow_client_is_cut_off_and_never_slows_the_others); this adds the end-to-end
count.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fleetpulse.local_servers import Mosquitto, Redis, free_port
from tests.conftest import make_settings, make_token
from tests.faults.rig import Rig
from tests.faults.stages import StageProcess
from tests.faults.workload import Workload
from tracker.live import LiveDevice, Status
from tracker.redis_live import POSITIONS_CHANNEL
from web.hub import CLOSE_TOO_SLOW

pytestmark = pytest.mark.fault

DEVICES = 100
FIXES_PER_DEVICE = 60
PER_SECOND = 1000.0
SLOW_RECEIVE_BUFFER = 8192
START_TIMEOUT_S = 30.0
CUT_OFF_METRIC = "fleetpulse_ws_dispatch_slow_disconnects_total"
NOISE_DEVICES = 1000  # ~250 kB per update
NOISE_INTERVAL_S = 0.05
NOISE_MAX_MESSAGES = 2000  # only stops a broken test
NOISE_CELL = 0x8939236B2AFFFFF


def test_a_slow_websocket_client_is_cut_off_the_others_get_every_event_once(
    database_url: str, broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    workload = Workload.recent(DEVICES, FIXES_PER_DEVICE)
    port = free_port()
    web_settings = {"web_port": str(port), "ws_queue": "8", "ws_slow_after": "1s"}
    token = asyncio.run(make_token(make_settings(database_url=database_url), "viewer"))
    with Rig(
        database_url, broker, fault_redis, tmp_path, workload, PER_SECOND, **web_settings
    ) as rig:
        web = StageProcess("web", rig.env, tmp_path)
        web.start()
        try:
            base = f"http://127.0.0.1:{port}"
            rig.wait_until(lambda: _metric(base) is not None, "the web worker", START_TIMEOUT_S)
            with Clients(f"ws://127.0.0.1:{port}/ws/dispatch", token) as clients:
                rig.start_fleet()
                rig.notes["noise_messages"] = _fill_until_cut_off(fault_redis.url, base)
                clients.drain_slow()
                expected = workload.expected_event_ids()
                rig.wait_until(
                    lambda: expected <= clients.healthy_seen().keys(),
                    "every event at the healthy client",
                    within=60.0,
                )
                rig.fleet.wait(60.0)
                rig.notes["slow_client_closed_with"] = clients.slow_close
                # A clean stop closes the healthy client after everything sent before.
                assert web.terminate() == 0, web.log_tail()
                seen = clients.finish()
            rig.notes.update(
                healthy_client_events=len(seen.keys() & expected),
                healthy_client_missing=len(expected - seen.keys()),
                healthy_client_doubled=sum(n - 1 for n in seen.values())
                + len(seen.keys() - expected),
                app_level_test="tests/integration/web/test_ws_dispatch.py"
                "::test_a_slow_client_is_cut_off_and_never_slows_the_others",
            )
            rig.finish(7, "a slow websocket client (stops reading) on a running pipeline")
            assert clients.slow_close == [CLOSE_TOO_SLOW, "too slow"]
            assert rig.notes["healthy_client_missing"] == 0, rig.notes
            assert rig.notes["healthy_client_doubled"] == 0, rig.notes
        finally:
            web.stop()


def _fill_until_cut_off(redis_url: str, base: str) -> int:
    """Position updates of many more (made-up) devices on the bus, until the slow client
    is cut off: the kernel's socket buffers hold megabytes, more than the workload's own
    updates, and only once they are full does the client's outbox fill. Returns how many
    were published."""
    now = datetime.now(UTC)
    states = [
        LiveDevice(f"noise-{i}", now, 41.0, -8.0, now, NOISE_CELL, NOISE_CELL, Status.MOVING)
        for i in range(NOISE_DEVICES)
    ]
    noise = msgspec.json.encode(states)
    sent = 0
    with redis.Redis.from_url(redis_url) as bus:
        while (_metric(base) or 0) < 1:
            assert sent < NOISE_MAX_MESSAGES, "the slow client was never cut off"
            bus.publish(POSITIONS_CHANNEL, noise)
            sent += 1
            time.sleep(NOISE_INTERVAL_S)
    return sent


def _metric(base: str) -> float | None:
    """The web worker's count of slow clients cut off; None while it does not answer."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(CUT_OFF_METRIC + " "):
            return float(line.split()[1])
    return 0.0


class Clients:
    """Two dispatch clients in a thread of their own: one reads everything, counting
    events by id; one reads its snapshot and then nothing, until told to drain."""

    def __init__(self, url: str, token: str) -> None:
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._drain = threading.Event()
        self._done = threading.Event()
        self.slow_close: list[object] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fault-ws", daemon=True)

    def __enter__(self) -> Clients:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise AssertionError(f"the websocket clients did not connect: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._drain.set()
        self._thread.join(START_TIMEOUT_S)

    def healthy_seen(self) -> Counter[str]:
        with self._lock:
            return Counter(self._seen)

    def drain_slow(self) -> None:
        self._drain.set()

    def finish(self) -> Counter[str]:
        """After the server closed: every event the healthy client got, counted."""
        self._thread.join(START_TIMEOUT_S)
        if self._error is not None:
            raise AssertionError(f"a websocket client failed: {self._error!r}")
        return self.healthy_seen()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
        sock.setblocking(False)
        host, port = self._url.split("//")[1].split("/")[0].split(":")
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        slow = await connect(
            self._url, additional_headers=self._headers, sock=sock, max_queue=2, ping_interval=None
        )
        healthy = await connect(self._url, additional_headers=self._headers, max_size=None)
        assert json.loads(await slow.recv())["type"] == "snapshot"
        assert json.loads(await healthy.recv())["type"] == "snapshot"
        self._ready.set()
        await asyncio.gather(self._read_healthy(healthy), self._read_slow(slow))

    async def _read_healthy(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "event":
                    with self._lock:
                        self._seen[message["event"]["id"]] += 1
        except ConnectionClosed:
            pass

    async def _read_slow(self, ws: ClientConnection) -> None:
        await asyncio.to_thread(self._drain.wait)
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            received = closed.rcvd
            self.slow_close = [None, None] if received is None else [received.code, received.reason]
