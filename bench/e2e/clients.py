"""One websocket client process of the end-to-end benchmark, kept for the whole ramp:

    python -m bench.e2e.clients dispatch --url ws://host:port --token T --count N
    python -m bench.e2e.clients track --url ws://host:port --tokens FILE --first I --count N

Opens its websockets with the `websockets` library and prints `{"ready": ...}`. Then, for
each line `<start> <end>` (epoch seconds) on standard input, counts what arrives in that
window and prints one JSON report after it ends; `quit` or the end of input closes the
sockets. A socket the server closes is opened again (counted): a step that overloads the
web app must not leave the next steps without clients.

Frames are decoded and latencies taken as in the websocket benchmark (`bench.ws.clients`):
positions from each device's `ts` (the fix time, which is the publish time), events from
their `ts` (so they include the tracker's reorder window), ETAs from `computed_at`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bench.ws.clients import CLOSE_TIMEOUT_S, OPEN_TIMEOUT_S, Tally

# Geofence events wait for the tracker's reorder window; the others (device and delivery
# events) do not. Their latencies are kept apart.
GEOFENCE_KINDS = frozenset({"enter", "exit", "dwell", "cross", "altitude_breach"})
EVENT_CLASSES = ("fence_events", "other_events")
EVENT_PREFIX = '{"type":"event"'  # how the web app frames an event (web.hub)
CONNECT_CONCURRENCY = 50
RECONNECT_AFTER_S = 0.5
# Frames in flight when a window ends still count if they arrive this soon after it.
REPORT_AFTER_END_S = 0.2


class _Event(msgspec.Struct):
    kind: str
    ts: datetime


class _EventFrame(msgspec.Struct):
    event: _Event


class _Eta(msgspec.Struct):
    computed_at: datetime


class _View(msgspec.Struct):
    eta: _Eta | None = None


class _TrackFrame(msgspec.Struct):
    delivery: _View


_decode_event = msgspec.json.Decoder(_EventFrame).decode
_decode_track = msgspec.json.Decoder(_TrackFrame).decode
TRACK_PREFIX = '{"type":"track"'


class EventTally(Tally):
    """The websocket benchmark's tally, plus event latency by class: `fence_events`
    (held for the reorder window) and `other_events`."""

    def record(self, raw: str | bytes, now: float, seen: dict[str, datetime]) -> None:
        text = raw if isinstance(raw, str) else raw.decode(errors="replace")
        inside = self.start_at <= now < self.end_at
        if not inside and text.startswith(TRACK_PREFIX):
            # An ETA first shown between windows is old news when a later view repeats
            # it: remember it, or its age would count as latency.
            with contextlib.suppress(msgspec.DecodeError):
                eta = _decode_track(raw).delivery.eta
                if eta is not None:
                    seen["eta"] = eta.computed_at
        super().record(raw, now, seen)
        if not (inside and text.startswith(EVENT_PREFIX)):
            return
        try:
            event = _decode_event(raw).event
        except msgspec.DecodeError:
            return  # counted as undecodable by the tally already
        kind = EVENT_CLASSES[0] if event.kind in GEOFENCE_KINDS else EVENT_CLASSES[1]
        self.deliveries[kind] += 1
        self._latency(kind, now, event.ts)


class Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = EventTally()
        self.connected = 0
        self.failed: Counter[str] = Counter()  # opens refused or failed, in the window
        self.closed: Counter[str] = Counter()  # closes by the server, by code
        self._stopping = False
        self._sockets: set[ClientConnection] = set()
        self._tried = 0  # first opens done, either way
        self._all_tried = asyncio.Event()

    def _targets(self) -> list[tuple[str, dict[str, str]]]:
        base = self.args.url.rstrip("/")
        if self.args.role == "dispatch":
            headers = {"Authorization": f"Bearer {self.args.token}"}
            return [(f"{base}/ws/dispatch", headers)] * self.args.count
        tokens = Path(self.args.tokens).read_text().split()
        chosen = tokens[self.args.first : self.args.first + self.args.count]
        return [(f"{base}/ws/track/{token}", {}) for token in chosen]

    async def _open(self, url: str, headers: dict[str, str]) -> ClientConnection | None:
        try:
            return await connect(
                url,
                additional_headers=headers,
                open_timeout=OPEN_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
                ping_interval=None,  # the server's liveness checks are not measured
                max_size=None,
                max_queue=None,
            )
        except InvalidStatus as exc:
            self.failed[f"http_{exc.response.status_code}"] += 1
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.failed[type(exc).__name__] += 1
        return None

    async def _follow(self, url: str, headers: dict[str, str], gate: asyncio.Semaphore) -> None:
        """Keep one socket open and count what it receives, until stopped."""
        first = True
        while not self._stopping:
            if not first:
                await asyncio.sleep(RECONNECT_AFTER_S)
            if first:
                async with gate:  # the first opens come all at once
                    ws = await self._open(url, headers)
                self._tried += 1
                if self._tried == self.args.count:
                    self._all_tried.set()
            else:
                ws = await self._open(url, headers)
            first = False
            if ws is None:
                continue
            self.connected += 1
            self._sockets.add(ws)
            seen: dict[str, datetime] = {}  # this socket's last ETA
            try:
                async for message in ws:
                    # The tally is replaced at each window: look it up per frame.
                    self.tally.record(message, time.time(), seen)
            except ConnectionClosed:
                pass
            finally:
                self._sockets.discard(ws)
                self.connected -= 1
            if not self._stopping:
                code = ws.close_code
                self.closed[str(code) if code is not None else "none"] += 1

    def _report(self, window: tuple[float, float]) -> dict[str, Any]:
        tally = self.tally
        return {
            "role": self.args.role,
            "index": self.args.index,
            "clients": self.args.count,
            "connected": self.connected,
            "failed": dict(self.failed),
            "closed": dict(self.closed),
            "window": window,
            "messages": dict(tally.messages),
            "deliveries": dict(tally.deliveries),
            "latency": {kind: h.as_json() for kind, h in tally.latency.items()},
            "undecodable": tally.undecodable,
        }

    async def run(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        followers = [
            asyncio.create_task(self._follow(url, headers, gate), name="e2e-client")
            for url, headers in self._targets()
        ]
        await self._all_tried.wait()
        print(json.dumps({"ready": True, "connected": self.connected, "failed": self.failed}))
        sys.stdout.flush()
        while (line := (await asyncio.to_thread(sys.stdin.readline)).strip()) not in ("", "quit"):
            start_at, end_at = (float(v) for v in line.split())
            self.tally = EventTally()
            self.tally.start_at, self.tally.end_at = start_at, end_at
            self.failed.clear()
            self.closed.clear()
            await asyncio.sleep(max(0.0, end_at + REPORT_AFTER_END_S - time.time()))
            print(json.dumps(self._report((start_at, end_at))), flush=True)
        self._stopping = True
        await asyncio.gather(*(ws.close() for ws in list(self._sockets)), return_exceptions=True)
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("dispatch", "track"))
    parser.add_argument("--url", required=True, help="ws://host:port of the web app")
    parser.add_argument("--count", type=int, required=True, help="websockets to open")
    parser.add_argument("--token", default="", help="bearer token (dispatch)")
    parser.add_argument("--tokens", default="", help="file of tracking tokens (track)")
    parser.add_argument("--first", type=int, default=0, help="first token of the file to use")
    parser.add_argument("--index", type=int, default=0, help="this process's number")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(Clients(_args()).run())
