"""`fleetpulse mavlink-bridge`: drones join the fleet without custom firmware.

The bridge listens where a ground station would (`udpin:0.0.0.0:14550`: ArduPilot's and
PX4's telemetry output, MAVProxy's `--out`, a ground station forwarding) or reads a .tlog
to its end, and publishes what the autopilots say in the device contract
(`fleetpulse.simulation.mavlink` does the translation). Each MAVLink system is one device
with its own MQTT connection, username and last will, through the simulation's publisher:
`online` after connecting, `offline` when its heartbeat is lost and before a clean
disconnect, fixes at QoS 1.

An autopilot may stream GLOBAL_POSITION_INT at 50 Hz; the bridge sends at most
`max_rate_hz` fixes per second of flight per drone (the others are counted as
`rate_limited`), because the fleet's tracking gains nothing from more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetpulse.arguments import positive
from fleetpulse.errors import FleetPulseError
from fleetpulse.settings import Settings
from fleetpulse.simulation import mavlink
from fleetpulse.simulation.messages import status, telemetry
from fleetpulse.simulation.publisher import DEVICE_PLACEHOLDER, Credentials, Publisher
from mqtt.topics import TopicScheme

log = logging.getLogger(__name__)

DEFAULT_MAX_RATE_HZ = 5.0
STATS_EVERY_S = 60.0
FILE_BATCH_ITEMS = 512  # items read from a file per hop to the reading thread


@dataclass(frozen=True)
class BridgeOptions:
    source: str  # udpin:HOST:PORT, or the path of a .tlog
    device_id: str | None = None  # one vehicle under this id; None: mavlink-<system id>
    system_id: int | None = None  # only this vehicle of the stream
    max_rate_hz: float | None = DEFAULT_MAX_RATE_HZ  # per drone; None: every fix
    heartbeat_timeout_s: float = mavlink.HEARTBEAT_TIMEOUT_S
    credentials: Credentials = field(default_factory=Credentials)


@dataclass(frozen=True)
class BridgeReport:
    source: str
    devices: dict[int, str]  # MAVLink system id → device id
    messages: int  # MAVLink messages read
    fixes: int  # fixes made of them
    published: int  # fixes the broker acknowledged
    statuses: int  # online/offline changes seen
    skipped: dict[str, int]  # fixes not sent, by reason
    errors: dict[str, int]  # bad input and failed sends, by kind
    unsent: int  # messages still queued when the bridge stopped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        devices = ", ".join(self.devices.values()) or "no vehicle yet"
        text = (
            f"{self.published:,} of {self.fixes:,} fixes published from {self.messages:,}"
            f" MAVLink messages ({devices})"
        )
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n:,} {k}" for k, n in sorted(self.skipped.items()))
        if self.errors:
            text += "; errors " + ", ".join(f"{n:,} {k}" for k, n in sorted(self.errors.items()))
        if self.unsent:
            text += f"; {self.unsent:,} UNSENT"
        return text


class Bridge:
    """`report = await Bridge(settings, options).run(stop)`: runs until the file ends or
    `stop` is set, then sends what is queued and disconnects every drone cleanly."""

    def __init__(self, settings: Settings, options: BridgeOptions) -> None:
        self.options = options
        self.translator = mavlink.Translator(
            device_id=options.device_id,
            system_id=options.system_id,
            max_rate_hz=options.max_rate_hz,
            heartbeat_timeout_s=options.heartbeat_timeout_s,
        )
        self.udp = (
            mavlink.UdpAddress.parse(options.source) if mavlink.is_udp(options.source) else None
        )
        self.publisher = Publisher(
            settings.mqtt_url,
            TopicScheme(settings.topic_prefix, settings.owntracks_prefix),
            options.credentials,
        )
        self.listening = asyncio.Event()  # set once the UDP port is bound
        self.port: int | None = None  # the UDP port bound (port 0 picks a free one)
        self._announced: set[str] = set()
        self._max_fix_age = settings.max_fix_age
        self._age_checked = False

    async def run(
        self, stop: asyncio.Event | None = None, stats_every_s: float = STATS_EVERY_S
    ) -> BridgeReport:
        stop = stop or asyncio.Event()
        reporter = asyncio.create_task(self._report_every(stats_every_s), name="bridge-stats")
        try:
            async with self.publisher:
                reading = asyncio.create_task(self._read(), name="bridge-read")
                stopping = asyncio.create_task(stop.wait(), name="bridge-stop")
                try:
                    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reading, stopping):
                        task.cancel()
                    await asyncio.gather(reading, stopping, return_exceptions=True)
                if reading.done() and not reading.cancelled():
                    reading.result()  # the source's error, if it failed
                await self.publisher.close()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        report = self.report()
        log.info("mavlink bridge stopped: %s", report.line())
        return report

    def report(self) -> BridgeReport:
        counters, progress = self.translator.counters, self.publisher.progress
        errors = dict(counters.errors)
        if progress.errors:
            errors["mqtt"] = progress.errors
        return BridgeReport(
            source=self.options.source,
            devices=self.translator.devices,
            messages=counters.messages,
            fixes=counters.fixes,
            published=progress.fixes,
            statuses=counters.statuses,
            skipped=dict(counters.skipped),
            errors=errors,
            unsent=progress.unsent,
        )

    async def _read(self) -> None:
        if self.udp is not None:
            async with mavlink.UdpSource(self.udp, self.translator) as source:
                self.port = source.port
                self.listening.set()
                log.info("mavlink bridge listening on UDP %s:%d", self.udp.host, source.port)
                async for item in source:
                    await self._send(item)
            return
        items = mavlink.read_tlog(Path(self.options.source), self.translator)
        while batch := await asyncio.to_thread(_take, items, FILE_BATCH_ITEMS):
            for item in batch:
                await self._send(item)

    async def _send(self, item: mavlink.Item) -> None:
        if isinstance(item, mavlink.MavlinkFix):
            if not self._age_checked:
                self._warn_if_too_old(item)
            await self.publisher.send(telemetry(item.device_id, item.fix))
        else:
            log.info(
                "%s (MAVLink system %d) %s: %s",
                item.device_id,
                item.system_id,
                "online" if item.online else "offline",
                item.reason,
            )
            # The publisher announces a device online when it connects it.
            if item.online and item.device_id not in self._announced:
                self._announced.add(item.device_id)
                return
            await self.publisher.send(status(item.device_id, item.online))
        self._announced.add(item.device_id)

    def _warn_if_too_old(self, fix: mavlink.MavlinkFix) -> None:
        self._age_checked = True
        if self._max_fix_age is not None and datetime.now(UTC) - fix.ts > self._max_fix_age:
            log.warning(
                "the first fix (%s) is older than FLEETPULSE_MAX_FIX_AGE: the ingester will"
                " quarantine such fixes as ts_too_old; set FLEETPULSE_MAX_FIX_AGE_S=0 on it,"
                " or play the log with `fleetpulse replay --shift-to-now`",
                fix.ts.isoformat(),
            )

    async def _report_every(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            log.info("mavlink bridge: %s", self.report().line())


def _take(items: Iterator[mavlink.Item], n: int) -> list[mavlink.Item]:
    return list(itertools.islice(items, n))


# -- the command


def _rate_hz(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fixes per second, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = positive(text)
    if math.isinf(value):  # a heartbeat or a report never due is no setting
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    return value


def _system_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"a MAVLink system id is 1-255, got {text!r}")
    return int(text)


def add_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    bridge = command(
        "mavlink-bridge",
        "publish a MAVLink stream's drones (UDP or a .tlog) as devices over MQTT",
    )
    bridge.add_argument(
        "--source",
        required=True,
        metavar="udpin:HOST:PORT|FILE",
        help="a UDP port to listen on (udpin:0.0.0.0:14550), or a .tlog file to read",
    )
    bridge.add_argument(
        "--device-id", help="the device id of the (single) vehicle (default mavlink-<system id>)"
    )
    bridge.add_argument(
        "--system-id", type=_system_id, metavar="N", help="bridge only this MAVLink system"
    )
    bridge.add_argument(
        "--max-rate",
        type=_rate_hz,
        default=DEFAULT_MAX_RATE_HZ,
        metavar="HZ",
        help=f"fixes per second per drone at most (default {DEFAULT_MAX_RATE_HZ:g}; 0: all)",
    )
    bridge.add_argument(
        "--heartbeat-timeout",
        type=_seconds,
        default=mavlink.HEARTBEAT_TIMEOUT_S,
        metavar="S",
        help=f"no heartbeat for S s: offline (default {mavlink.HEARTBEAT_TIMEOUT_S:g})",
    )
    bridge.add_argument(
        "--device-password",
        metavar="TEMPLATE",
        help=f"each drone's MQTT password, {DEVICE_PLACEHOLDER} standing for its id"
        " (the username is the device id; default: no password)",
    )
    bridge.add_argument(
        "--stats-every",
        type=_seconds,
        default=STATS_EVERY_S,
        metavar="S",
        help=f"seconds between statistics lines (default {STATS_EVERY_S:g})",
    )
    bridge.add_argument("--json", action="store_true", help="print the final counts as JSON")


async def run_command(settings: Settings, args: argparse.Namespace) -> None:
    options = BridgeOptions(
        source=args.source,
        device_id=args.device_id,
        system_id=args.system_id,
        max_rate_hz=args.max_rate or None,
        heartbeat_timeout_s=args.heartbeat_timeout,
        credentials=Credentials(args.device_password),
    )
    try:
        bridge = Bridge(settings, options)
    except ValueError as exc:
        raise FleetPulseError(f"mavlink-bridge: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        report = await bridge.run(stop, args.stats_every)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    print(f"mavlink-bridge: {report.line()}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict()))
    if report.unsent:
        raise FleetPulseError(f"{report.unsent} messages were not acknowledged by the broker")
