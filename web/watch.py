"""`fleetpulse watch`: the dispatch stream in a terminal, through the `websockets`
library (an implementation independent of the server's).

Events, ETAs and acknowledgements print as they come; positions are summed up every
few seconds. It reconnects by itself, with `since` set to the last event it saw, and
drops the events a resume sends twice. `--json` prints every message as one JSON line
instead, for pipes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from fleetpulse.errors import FleetPulseError

TOKEN_ENV = "FLEETPULSE_TOKEN"
PATH = "/ws/dispatch"
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 15.0
REMEMBERED_IDS = 10_000
OPEN_TIMEOUT_S = 10.0
Message = dict[str, Any]


def dispatch_url(base: str, **query: str | None) -> str:
    """The stream's URL from the web app's address (http, https, ws or wss)."""
    parts = urlsplit(base)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise FleetPulseError(f"--url: expected the web app's http(s) or ws(s) URL, got {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(PATH):
        path += PATH
    params = urlencode({k: v for k, v in query.items() if v})
    return urlunsplit((schemes[parts.scheme], parts.netloc, path, params, ""))


def _clock(text: str | None) -> str:
    if not text:
        return "--:--:--"
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%H:%M:%S")
    except ValueError:
        return text


def event_line(event: Message) -> str:
    where = [
        f"{name}={event[key]}"
        for name, key in (("fence", "fence_id"), ("delivery", "delivery_id"))
        if event.get(key)
    ]
    detail = f" {event['detail']}" if event.get("detail") else ""
    return (
        f"{_clock(event.get('ts'))}  {event.get('kind', '?'):<18} {event.get('device_id', '?')}"
        f"{''.join(' ' + w for w in where)}{detail}  [{event.get('id')}]"
    )


@dataclass
class View:
    """What the terminal shows: the fleet as last heard, and what to print per message."""

    devices: dict[str, Message] = field(default_factory=dict)
    updates: int = 0  # position updates since the last summary
    last_event_id: str | None = None
    _seen: set[str] = field(default_factory=set)
    _order: deque[str] = field(default_factory=deque)

    def fresh(self, event_id: str) -> bool:
        """True the first time an id is seen (a resume may send some twice)."""
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > REMEMBERED_IDS:
            self._seen.discard(self._order.popleft())
        return True

    def apply(self, message: Message) -> list[str]:
        """Take in one message; the lines to print for it."""
        kind = message.get("type")
        if kind == "snapshot":
            self.devices = {d["device_id"]: d for d in message.get("devices", [])}
            alerts = message.get("alerts", [])
            lines = [f"snapshot: {len(self.devices)} devices, {len(alerts)} unacknowledged alerts"]
            for alert in alerts:
                if self.fresh(alert["id"]):  # a reconnect's snapshot repeats them
                    lines.append("alert " + event_line(alert))
            return lines
        if kind == "positions":
            for state in message.get("devices", []):
                self.devices[state["device_id"]] = state
                self.updates += 1
            return []
        if kind == "event":
            event = message["event"]
            self.last_event_id = event["id"]
            return [event_line(event)] if self.fresh(event["id"]) else []
        if kind == "eta":
            eta = message["eta"]
            risk = "  LATE RISK" if eta.get("late_risk") else ""
            return [
                f"{_clock(eta.get('computed_at'))}  eta {eta.get('delivery_id')} by "
                f"{eta.get('vehicle_id')}: p50 {_clock(eta.get('p50'))}, p90 "
                f"{_clock(eta.get('p90'))} ({eta.get('state')}){risk}"
            ]
        if kind == "ack":
            note = f": {message['note']}" if message.get("note") else ""
            return [
                f"{_clock(message.get('acked_at'))}  acknowledged {message.get('event_id')} by "
                f"{message.get('acked_by')}{note}"
            ]
        if kind == "resumed":
            return [f"resumed: {message.get('missed', 0)} missed events sent again"]
        if kind == "error":
            return [f"server: {message.get('detail')}"]
        return []

    def summary(self, now: datetime, every_s: float) -> str:
        statuses = Counter(d.get("status", "?") for d in self.devices.values())
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        line = (
            f"-- {now.astimezone(UTC):%H:%M:%S}  {len(self.devices)} devices"
            f"{': ' + by_status if by_status else ''}; {self.updates} position updates in "
            f"{every_s:g} s"
        )
        self.updates = 0
        return line


@dataclass(frozen=True)
class WatchOptions:
    url: str
    token: str
    devices: str | None = None
    kinds: str | None = None
    bbox: str | None = None
    json: bool = False
    every_s: float = 2.0


def _refusal(exc: InvalidStatus) -> str:
    response = exc.response
    try:
        detail = json.loads(response.body or b"{}").get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    return f"the server refused the stream: HTTP {response.status_code} {detail}".rstrip()


async def watch(
    options: WatchOptions,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Follow the stream until interrupted; refusals (bad token, bad filter) end it."""
    view = View()
    delay = RECONNECT_MIN_S
    headers = {"Authorization": f"Bearer {options.token}"}
    while True:
        url = dispatch_url(
            options.url,
            devices=options.devices,
            kinds=options.kinds,
            bbox=options.bbox,
            since=view.last_event_id,
        )
        try:
            async with connect(
                url, additional_headers=headers, max_size=None, open_timeout=OPEN_TIMEOUT_S
            ) as ws:
                delay = RECONNECT_MIN_S
                loop = asyncio.get_running_loop()
                next_summary = loop.time() + options.every_s
                while True:
                    try:
                        raw = await asyncio.wait_for(
                            ws.recv(), max(0.0, next_summary - loop.time())
                        )
                    except TimeoutError:
                        if not options.json:
                            print(view.summary(clock(), options.every_s), file=out, flush=True)
                        next_summary = loop.time() + options.every_s
                        continue
                    message = json.loads(raw)
                    lines = view.apply(message)
                    if options.json:
                        if message.get("type") != "event" or lines:
                            print(
                                raw if isinstance(raw, str) else raw.decode(), file=out, flush=True
                            )
                    elif lines:
                        print("\n".join(lines), file=out, flush=True)
        except InvalidStatus as exc:
            if exc.response.status_code < 500:
                raise FleetPulseError(_refusal(exc)) from None
            print(f"fleetpulse watch: {_refusal(exc)}; retrying", file=err, flush=True)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "connection lost"
            print(
                f"fleetpulse watch: stream closed ({code} {reason}); resuming",
                file=err,
                flush=True,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            print(
                f"fleetpulse watch: cannot reach {url.split('?')[0]}: {exc}; retrying in "
                f"{delay:g} s",
                file=err,
                flush=True,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)
