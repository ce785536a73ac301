"""One client process of the websocket benchmark:

    python -m bench.ws.clients dispatch --url ws://host:port[,ws://...] --token T --count N ...
    python -m bench.ws.clients track --url ws://host:port --tokens FILE --first I --count N ...

Opens its websockets with the `websockets` library (an implementation independent of the
server's), prints `{"ready": ...}` once every connection is open or has failed, then
reads the measured window from standard input (`<start> <end>`, epoch seconds), counts
what arrives inside it, closes its sockets at its end and prints its report as one JSON
line. Several of these run side by side, each an
interpreter of its own, so the clients' CPU is spread over processes.

Latency of a delivery is receipt time minus the fix time it carries (the fix's `ts` is
the time the driver published it): positions use each device's `ts`; events their `ts`
(so they include the tracker's reorder window); ETAs (dispatch `eta` and customers'
`track`) their `computed_at`, the time of the fix they were computed from (a customer's
view sent again with an ETA it already had counts as a delivery, not as a latency).

A latency is only the server's if the client read the frame when it arrived. So each
process also reports its own CPU over the window and its event loop's lag (how late a
timer fires): a process near 100 % of a core, or with a lag of seconds, read its frames
late, and the latencies then include its own backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bench.ws.histogram import Histogram

CONNECT_CONCURRENCY = 50
OPEN_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0
# The event loop's lag is how late a timer of this period fires.
LAG_PROBE_S = 0.1


class _Position(msgspec.Struct):
    ts: datetime


class _Event(msgspec.Struct):
    ts: datetime


class _Eta(msgspec.Struct):
    computed_at: datetime


class _TrackView(msgspec.Struct):
    eta: _Eta | None = None


class _Frame(msgspec.Struct):
    """The fields of either stream's messages that the benchmark reads; the rest is
    skipped by the decoder."""

    type: str
    devices: list[_Position] | None = None
    event: _Event | None = None
    eta: _Eta | None = None
    delivery: _TrackView | None = None


_decode = msgspec.json.Decoder(_Frame).decode
_TRACK_PREFIX = '{"type":"track"'  # how the web app frames a customer's view (web.ws_track)


def _is_track(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        return raw.startswith(_TRACK_PREFIX.encode())
    return raw.startswith(_TRACK_PREFIX)


class Tally:
    """What one process's clients received inside the measured window."""

    def __init__(self) -> None:
        # Nothing counts until the driver gives the window.
        self.start_at = self.end_at = float("inf")
        self.messages: Counter[str] = Counter()  # frames by type, in the window
        self.deliveries: Counter[str] = Counter()  # positions count once per device
        self.latency: dict[str, Histogram] = {}
        self.outside_window = 0
        self.undecodable = 0
        self.loop_lag = Histogram()  # ms, in the window

    def _latency(self, kind: str, now: float, fix_time: datetime) -> None:
        histogram = self.latency.get(kind)
        if histogram is None:
            histogram = self.latency[kind] = Histogram()
        histogram.add((now - fix_time.timestamp()) * 1000.0)

    def record(self, raw: str | bytes, now: float, seen: dict[str, datetime]) -> None:
        """Count one frame; `seen` is the connection's own memory (its last ETA)."""
        if not self.start_at <= now < self.end_at:
            self.outside_window += 1
            # An ETA first shown before the window is old news when a view in it repeats
            # it (a revealed delivery's view is sent again on every move of the van):
            # remembered, or its age would count as latency.
            if _is_track(raw):
                with contextlib.suppress(msgspec.DecodeError):
                    view = _decode(raw).delivery
                    if view is not None and view.eta is not None:
                        seen["eta"] = view.eta.computed_at
            return
        try:
            frame = _decode(raw)
        except msgspec.DecodeError:
            self.undecodable += 1
            return
        self.messages[frame.type] += 1
        if frame.type == "positions" and frame.devices:
            self.deliveries["positions"] += len(frame.devices)
            for device in frame.devices:
                self._latency("positions", now, device.ts)
        elif frame.type == "event" and frame.event is not None:
            self.deliveries["events"] += 1
            self._latency("events", now, frame.event.ts)
        elif frame.type == "eta" and frame.eta is not None:
            self.deliveries["etas"] += 1
            self._latency("etas", now, frame.eta.computed_at)
        elif frame.type == "track" and frame.delivery is not None:
            self.deliveries["track"] += 1
            eta = frame.delivery.eta
            # The view is sent again when only its state or reveal changes: the latency
            # of an ETA counts once, when it first arrives.
            if eta is not None and eta.computed_at != seen.get("eta"):
                seen["eta"] = eta.computed_at
                self._latency("track", now, eta.computed_at)


class Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = Tally()
        self.connected = 0
        self.failed: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()  # close codes before the end

    def _targets(self) -> list[tuple[str, dict[str, str]]]:
        # Sockets go round the web workers, so that each process loads every worker alike.
        bases = [url.rstrip("/") for url in self.args.url.split(",")]
        first = self.args.first
        if self.args.role == "dispatch":
            headers = {"Authorization": f"Bearer {self.args.token}"}
            return [
                (f"{bases[(first + i) % len(bases)]}/ws/dispatch", headers)
                for i in range(self.args.count)
            ]
        tokens = Path(self.args.tokens).read_text().split()
        chosen = tokens[first : first + self.args.count]
        return [
            (f"{bases[(first + i) % len(bases)]}/ws/track/{token}", {})
            for i, token in enumerate(chosen)
        ]

    async def _open(
        self, url: str, headers: dict[str, str], gate: asyncio.Semaphore
    ) -> ClientConnection | None:
        async with gate:
            try:
                ws = await connect(
                    url,
                    additional_headers=headers,
                    open_timeout=OPEN_TIMEOUT_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    ping_interval=None,  # the server's liveness checks are not measured
                    compression="deflate" if self.args.deflate else None,
                    max_size=None,
                    max_queue=None,
                )
            except InvalidStatus as exc:
                self.failed[f"http_{exc.response.status_code}"] += 1
                return None
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.failed[type(exc).__name__] += 1
                return None
        self.connected += 1
        return ws

    async def _read(self, ws: ClientConnection) -> None:
        record = self.tally.record
        seen: dict[str, datetime] = {}
        try:
            async for message in ws:
                record(message, time.time(), seen)
        except ConnectionClosed:
            pass
        if time.time() < self.tally.end_at:
            code = ws.close_code
            self.closed[str(code) if code is not None else "none"] += 1

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            if self.tally.start_at <= time.time() < self.tally.end_at:
                self.tally.loop_lag.add((loop.time() - asked - LAG_PROBE_S) * 1000.0)

    async def run(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        opened = await asyncio.gather(*(self._open(u, h, gate) for u, h in self._targets()))
        sockets = [ws for ws in opened if ws is not None]
        readers = [asyncio.create_task(self._read(ws)) for ws in sockets]
        print(
            json.dumps({"ready": True, "connected": self.connected, "failed": self.failed}),
            flush=True,
        )
        line = await asyncio.to_thread(sys.stdin.readline)
        start_at, end_at = (float(v) for v in line.split())
        self.tally.start_at, self.tally.end_at = start_at, end_at
        probe = asyncio.create_task(self._probe_lag())
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_before, wall_before = _cpu_s(), time.monotonic()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        # A busy loop wakes late: the CPU is per second of the time really measured.
        cpu_used, cpu_wall = _cpu_s() - cpu_before, time.monotonic() - wall_before
        probe.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.gather(*readers, return_exceptions=True)
        tally = self.tally
        return {
            "role": self.args.role,
            "index": self.args.index,
            "clients": self.args.count,
            "connected": self.connected,
            "failed": dict(self.failed),
            "closed_early": dict(self.closed),
            "messages": dict(tally.messages),
            "deliveries": dict(tally.deliveries),
            "latency": {kind: h.as_json() for kind, h in tally.latency.items()},
            "undecodable": tally.undecodable,
            "outside_window": tally.outside_window,
            "cpu_s": cpu_used,
            "cpu_wall_s": cpu_wall,
            "loop_lag": tally.loop_lag.as_json(),
        }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_file_limit() -> int:
    """Every client is a socket: take the hard limit as the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("dispatch", "track"))
    parser.add_argument(
        "--url", required=True, help="ws://host:port of the web app; comma-separated: each worker"
    )
    parser.add_argument("--count", type=int, required=True, help="websockets to open")
    parser.add_argument("--token", default="", help="bearer token (dispatch)")
    parser.add_argument("--tokens", default="", help="file of tracking tokens (track)")
    parser.add_argument("--first", type=int, default=0, help="first token of the file to use")
    parser.add_argument("--index", type=int, default=0, help="this process's number")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _args()
    raise_open_file_limit()
    print(json.dumps(asyncio.run(Clients(arguments).run())), flush=True)
