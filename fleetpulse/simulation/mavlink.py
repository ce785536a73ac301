"""MAVLink telemetry in the device contract: what a drone's autopilot says about itself
(GLOBAL_POSITION_INT, SYS_STATUS, HEARTBEAT, SYSTEM_TIME) becomes fixes and online/offline
reports of one device per MAVLink system.

Fix times. GLOBAL_POSITION_INT is stamped with `time_boot_ms`, the autopilot's clock since
boot; a fix needs wall time. The offset between the two is taken once per boot, from the
best anchor available: SYSTEM_TIME (the autopilot's own Unix time, usually from GPS, given
together with its boot time) or, when none comes within `ANCHOR_WAIT_S`, the time the first
fix was received (a .tlog's per-message timestamp, else arrival). Fixes wait for the
anchor instead of being re-timed later, so that fix times never jump backwards. A boot
clock that steps back by more than `REBOOT_BACKSTEP_MS` is a reboot: a new anchor is taken.

Filters, each named and counted: a fix at (0, 0) has no position yet (`no_position`); one
not newer on the boot clock than the previous one is a duplicate or arrived out of order
(`stale`); with a rate limit, one closer in fix time than 1/rate to the previous one is
`rate_limited`; messages of a second vehicle when a single device id was asked for are
`other_system`.

Status. A vehicle's HEARTBEAT (not a ground station's, nor a camera's or a companion
computer's, whose autopilot field is MAV_AUTOPILOT_INVALID) makes the device online; no
heartbeat for `heartbeat_timeout_s`, or the vehicle reporting MAV_STATE_POWEROFF, makes it
offline.

The translation (`Translator`) is pure; the readers feed it from a .tlog file (8-byte
big-endian microsecond timestamp before each frame) or from a UDP endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

import msgspec
from pymavlink.dialects.v20 import all as dialect  # type: ignore[import-untyped]

from fleetpulse.errors import FleetPulseError
from mqtt.payloads import FixPayload
from tracker.positions import DeviceKind, is_valid_device_id

if TYPE_CHECKING:
    from fleetpulse.simulation.recordings import Record, RecordingSource

DEVICE_ID_TEMPLATE = "mavlink-{system_id}"
HEARTBEAT_TIMEOUT_S = 5.0  # QGroundControl and MAVProxy call a link lost after 3.5-5 s
ANCHOR_WAIT_S = 2.0  # fixes wait this long (boot or arrival time) for a SYSTEM_TIME
MAX_HELD_FIXES = 1_000  # a bound on fixes waiting for their anchor, whatever the rate
REBOOT_BACKSTEP_MS = 3_000
# SYSTEM_TIME carries 0 (or the boot time) until the autopilot knows the date.
MIN_UNIX_TIME_US = 946_684_800 * 1_000_000  # 2000-01-01
UNKNOWN_HEADING_CDEG = 65_535
HEADING_FROM_VELOCITY_MPS = 0.5  # below this the direction of the velocity is noise
# The contract's ranges (docs/device-protocol.md); a value outside is left out of the fix.
ALT_RANGE_M = (-20_000.0, 100_000.0)
SPEED_RANGE_MPS = (0.0, 1_000.0)

TLOG_TIMESTAMP = struct.Struct(">Q")
# A tlog timestamp further than this from the previous good one is not a timestamp: the
# reader is out of step with the records and looks for the next one.
TLOG_MAX_STEP_US = 3 * 24 * 3600 * 1_000_000
TLOG_RANGE_US = (MIN_UNIX_TIME_US, 4_102_444_800 * 1_000_000)  # years 2000 - 2100
READ_CHUNK_BYTES = 64 * 1024

UDP_SCHEME = "udpin:"
UDP_QUEUE_DATAGRAMS = 10_000  # datagrams waiting to be parsed; beyond, newest are dropped
UDP_DATAGRAMS_PER_READ = 512  # per wake-up of the reader, for fairness to the rest
UDP_MAX_DATAGRAM_BYTES = 65_535
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
TICK_S = 0.5  # an idle UDP link still checks for lost heartbeats this often

_GROUND_TYPES = {dialect.MAV_TYPE_GROUND_ROVER, dialect.MAV_TYPE_SURFACE_BOAT}


class MavlinkError(FleetPulseError):
    """A MAVLink source cannot be opened or read (the message says which and why)."""


class MavlinkFix(msgspec.Struct, frozen=True):
    """A fix of one device as the contract carries it (`fix.ts` in epoch milliseconds)."""

    device_id: str
    system_id: int
    fix: FixPayload

    @property
    def ts(self) -> datetime:
        ts = self.fix.ts
        return ts if isinstance(ts, datetime) else _datetime(ts)


class MavlinkStatus(msgspec.Struct, frozen=True):
    """The device went online or offline; `at` on the fixes' clock where known."""

    device_id: str
    system_id: int
    online: bool
    at: datetime
    reason: str


Item = MavlinkFix | MavlinkStatus


@dataclass
class Counters:
    """What the translation did with what it was given; nothing is dropped uncounted."""

    messages: int = 0  # MAVLink messages decoded
    fixes: int = 0  # fixes produced
    statuses: int = 0  # online/offline reports produced
    ignored: int = 0  # messages of kinds that carry nothing for the contract
    reboots: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class _Vehicle:
    system_id: int
    component_id: int
    device_id: str
    kind: DeviceKind = DeviceKind.DRONE
    offset_ms: int | None = None  # wall ms = boot ms + offset, once anchored
    boot_ms: int | None = None  # the latest boot time seen, and when it was received
    boot_received_s: float = 0.0
    held: list[tuple[int, FixPayload]] = field(default_factory=list)
    held_since_s: float = 0.0
    last_fix_boot_ms: int | None = None
    last_sent_ms: int | None = None
    battery: float | None = None
    online: bool = False
    last_heartbeat_s: float | None = None
    status_at: datetime | None = None


class Translator:
    """MAVLink messages in, contract items out. Pure: every call is given its time.

    `feed(message, received_s)` takes one decoded pymavlink message and the time it was
    received (epoch seconds: a tlog's timestamp, or arrival); `tick(now_s)` lets time pass
    with no message (lost heartbeats, fixes waiting too long for their anchor);
    `finish()` at the end of a stream releases the fixes still waiting.
    """

    def __init__(
        self,
        *,
        device_id: str | None = None,
        device_prefix: str = "",
        system_id: int | None = None,
        max_rate_hz: float | None = None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        for name in (device_id, device_prefix + DEVICE_ID_TEMPLATE.format(system_id=255)):
            if name is not None and not is_valid_device_id(name):
                raise ValueError(f"device id {name!r} must match [A-Za-z0-9_.:-]{{1,64}}")
        if max_rate_hz is not None and not max_rate_hz > 0:
            raise ValueError(f"the rate must be positive, got {max_rate_hz}")
        if not heartbeat_timeout_s > 0:
            raise ValueError(f"the heartbeat timeout must be positive, got {heartbeat_timeout_s}")
        self.counters = Counters()
        self._device_id = device_id
        self._device_prefix = device_prefix
        self._system_id = system_id
        self._min_interval_ms = 0.0 if max_rate_hz is None else 1000.0 / max_rate_hz
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._vehicles: dict[int, _Vehicle] = {}

    def bad_data(self, what: str) -> None:
        """The reader met bytes that are no MAVLink message (counted as an error)."""
        self.counters.errors[what] += 1

    def feed(self, message: Any, received_s: float) -> list[Item]:
        kind = message.get_type()
        if kind == "BAD_DATA":
            self.bad_data("bad_data")
            return self.tick(received_s)
        self.counters.messages += 1
        out: list[Item]
        if kind == "GLOBAL_POSITION_INT":
            out = self._position(message, received_s)
        elif kind == "HEARTBEAT":
            out = self._heartbeat(message, received_s)
        elif kind == "SYSTEM_TIME":
            out = self._system_time(message, received_s)
        elif kind == "SYS_STATUS":
            out = self._sys_status(message)
        else:
            self.counters.ignored += 1
            out = []
        out.extend(self.tick(received_s))
        return out

    def tick(self, now_s: float) -> list[Item]:
        out: list[Item] = []
        for vehicle in self._vehicles.values():
            if vehicle.held and now_s - vehicle.held_since_s >= ANCHOR_WAIT_S:
                out.extend(self._release(vehicle))
            last = vehicle.last_heartbeat_s
            if vehicle.online and last is not None and now_s - last >= self.heartbeat_timeout_s:
                lost_at = last + self.heartbeat_timeout_s
                reason = f"no heartbeat for {self.heartbeat_timeout_s:g} s"
                out.append(self._status(vehicle, False, lost_at, reason))
        return out

    def finish(self) -> list[Item]:
        out: list[Item] = []
        for vehicle in self._vehicles.values():
            out.extend(self._release(vehicle))
        return out

    @property
    def devices(self) -> dict[int, str]:
        """System id → device id of the vehicles seen so far."""
        return {v.system_id: v.device_id for v in self._vehicles.values()}

    # -- message kinds

    def _position(self, m: Any, received_s: float) -> list[Item]:
        vehicle = self._vehicle(m, create=True)
        if vehicle is None:
            return []
        out = self._observe_boot(vehicle, m.time_boot_ms, received_s)
        if m.lat == 0 and m.lon == 0:  # what autopilots send before a GPS fix
            self.counters.skipped["no_position"] += 1
            return out
        lat, lon = m.lat / 1e7, m.lon / 1e7
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            self.counters.errors["position_out_of_range"] += 1
            return out
        boot_ms = int(m.time_boot_ms)
        if vehicle.last_fix_boot_ms is not None and boot_ms <= vehicle.last_fix_boot_ms:
            self.counters.skipped["stale"] += 1
            return out
        vehicle.last_fix_boot_ms = boot_ms
        speed = math.hypot(m.vx, m.vy) / 100.0
        fix = FixPayload(
            ts=0,  # set once the boot clock is anchored
            lat=lat,
            lon=lon,
            alt=self._in_range(m.alt / 1000.0, ALT_RANGE_M, "alt"),
            rel_alt=self._in_range(m.relative_alt / 1000.0, ALT_RANGE_M, "rel_alt"),
            speed=self._in_range(speed, SPEED_RANGE_MPS, "speed"),
            heading=_heading(m.hdg, m.vx, m.vy, speed),
            battery=vehicle.battery,
            kind=vehicle.kind,
        )
        if vehicle.offset_ms is not None:
            out.extend(self._emit(vehicle, boot_ms, fix))
            return out
        if not vehicle.held:
            vehicle.held_since_s = received_s
        vehicle.held.append((boot_ms, fix))
        waited_ms = boot_ms - vehicle.held[0][0]
        if waited_ms >= ANCHOR_WAIT_S * 1000 or len(vehicle.held) >= MAX_HELD_FIXES:
            out.extend(self._release(vehicle))
        return out

    def _heartbeat(self, m: Any, received_s: float) -> list[Item]:
        if m.type == dialect.MAV_TYPE_GCS or m.autopilot == dialect.MAV_AUTOPILOT_INVALID:
            self.counters.ignored += 1  # a ground station, camera, gimbal, companion computer
            return []
        vehicle = self._vehicle(m, create=True)
        if vehicle is None:
            return []
        vehicle.kind = DeviceKind.VEHICLE if m.type in _GROUND_TYPES else DeviceKind.DRONE
        vehicle.last_heartbeat_s = received_s
        if m.system_status == dialect.MAV_STATE_POWEROFF:
            if vehicle.online:
                return [self._status(vehicle, False, received_s, "the vehicle powers off")]
            return []
        if not vehicle.online:
            armed = m.base_mode & dialect.MAV_MODE_FLAG_SAFETY_ARMED
            reason = f"heartbeat, {'armed' if armed else 'disarmed'}"
            return [self._status(vehicle, True, received_s, reason)]
        return []

    def _system_time(self, m: Any, received_s: float) -> list[Item]:
        vehicle = self._vehicle(m, create=False)
        if vehicle is None:
            return []
        out = self._observe_boot(vehicle, m.time_boot_ms, received_s)
        if vehicle.offset_ms is None and m.time_unix_usec >= MIN_UNIX_TIME_US:
            vehicle.offset_ms = m.time_unix_usec // 1000 - int(m.time_boot_ms)
            out.extend(self._release(vehicle))
        return out

    def _sys_status(self, m: Any) -> list[Item]:
        vehicle = self._vehicle(m, create=False)
        if vehicle is not None:
            remaining = m.battery_remaining  # -1: the autopilot does not estimate it
            vehicle.battery = float(remaining) if 0 <= remaining <= 100 else None
        return []

    # -- state

    def _vehicle(self, m: Any, *, create: bool) -> _Vehicle | None:
        system_id, component_id = m.get_srcSystem(), m.get_srcComponent()
        vehicle = self._vehicles.get(system_id)
        if vehicle is not None:
            if component_id != vehicle.component_id:
                # Another component of the same system (a companion computer sends its
                # own SYSTEM_TIME on another boot clock): only the autopilot counts.
                self.counters.ignored += 1
                return None
            return vehicle
        if not create:
            self.counters.ignored += 1  # a vehicle not seen yet: its state comes later
            return None
        if (self._system_id is not None and system_id != self._system_id) or (
            self._device_id is not None and self._vehicles
        ):
            self.counters.skipped["other_system"] += 1
            return None
        device_id = self._device_id or self._device_prefix + DEVICE_ID_TEMPLATE.format(
            system_id=system_id
        )
        vehicle = _Vehicle(system_id, component_id, device_id)
        self._vehicles[system_id] = vehicle
        return vehicle

    def _observe_boot(self, vehicle: _Vehicle, boot_ms: int, received_s: float) -> list[Item]:
        out: list[Item] = []
        if vehicle.boot_ms is not None and boot_ms < vehicle.boot_ms - REBOOT_BACKSTEP_MS:
            out = self._release(vehicle)  # fixes of the old boot keep the old boot's anchor
            self.counters.reboots += 1
            vehicle.offset_ms = None
            vehicle.last_fix_boot_ms = None
            vehicle.boot_ms = None
        if vehicle.boot_ms is None or boot_ms > vehicle.boot_ms:
            vehicle.boot_ms, vehicle.boot_received_s = int(boot_ms), received_s
        return out

    def _release(self, vehicle: _Vehicle) -> list[Item]:
        """Send the fixes that wait for an anchor; with none, anchor on the time the
        first of them was received."""
        if not vehicle.held:
            return []
        if vehicle.offset_ms is None:
            first_boot_ms = vehicle.held[0][0]
            vehicle.offset_ms = round(vehicle.held_since_s * 1000) - first_boot_ms
        held, vehicle.held = vehicle.held, []
        out: list[Item] = []
        for boot_ms, fix in held:
            out.extend(self._emit(vehicle, boot_ms, fix))
        return out

    def _emit(self, vehicle: _Vehicle, boot_ms: int, fix: FixPayload) -> list[Item]:
        assert vehicle.offset_ms is not None
        ts_ms = boot_ms + vehicle.offset_ms
        last = vehicle.last_sent_ms
        if last is not None and ts_ms <= last:
            self.counters.skipped["stale"] += 1  # a reboot's new anchor behind the old one
            return []
        if last is not None and ts_ms - last < self._min_interval_ms:
            self.counters.skipped["rate_limited"] += 1
            return []
        vehicle.last_sent_ms = ts_ms
        self.counters.fixes += 1
        return [
            MavlinkFix(vehicle.device_id, vehicle.system_id, msgspec.structs.replace(fix, ts=ts_ms))
        ]

    def _status(self, vehicle: _Vehicle, online: bool, at_s: float, reason: str) -> MavlinkStatus:
        vehicle.online = online
        self.counters.statuses += 1
        # The receive clock and the boot clock drift apart (a link that stalls, a
        # simulator that slows down); a device's reports still follow each other.
        at = self._fix_clock(vehicle, at_s)
        if vehicle.status_at is not None and at < vehicle.status_at:
            at = vehicle.status_at
        vehicle.status_at = at
        return MavlinkStatus(vehicle.device_id, vehicle.system_id, online, at, reason)

    @staticmethod
    def _fix_clock(vehicle: _Vehicle, received_s: float) -> datetime:
        """A receive time on the fixes' clock: the boot time estimated from the latest
        one seen, through the anchor; the receive time itself before there is one."""
        if vehicle.offset_ms is None or vehicle.boot_ms is None:
            return _datetime(received_s * 1000)
        boot_ms = vehicle.boot_ms + (received_s - vehicle.boot_received_s) * 1000
        return _datetime(boot_ms + vehicle.offset_ms)

    def _in_range(self, value: float, bounds: tuple[float, float], name: str) -> float | None:
        if bounds[0] <= value <= bounds[1]:
            return value
        self.counters.errors[f"{name}_out_of_range"] += 1
        return None


def _heading(hdg_cdeg: int, vx: int, vy: int, speed_mps: float) -> float | None:
    """The vehicle's heading, else the direction of its ground velocity when it moves."""
    if hdg_cdeg != UNKNOWN_HEADING_CDEG:
        return (hdg_cdeg / 100.0) % 360.0
    if speed_mps < HEADING_FROM_VELOCITY_MPS:
        return None
    return math.degrees(math.atan2(vy, vx)) % 360.0  # vx north, vy east


def _datetime(epoch_ms: float) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC)


# -- .tlog files


def tlog_messages(stream: BinaryIO, translator: Translator) -> Iterator[tuple[float, Any]]:
    """(timestamp in epoch seconds, message) for each record of a .tlog stream.

    A record is an 8-byte big-endian timestamp in microseconds, then one MAVLink v1 or v2
    frame. A frame that fails its checksum is counted and skipped; bytes that are no
    record (a torn write) are counted once and skipped up to the next plausible record.
    """
    parser = dialect.MAVLink(None)
    reader = _Bytes(stream)
    last_us: int | None = None
    searching = False  # out of step: looking for the next record, byte by byte
    while True:
        head = reader.peek(8 + 3)
        if head is None:
            if reader.left():
                translator.bad_data("truncated_record")
            return
        (stamp_us,) = TLOG_TIMESTAMP.unpack_from(head)
        size = _frame_size(head[8:]) if _plausible(stamp_us, last_us) else None
        record = None if size is None else reader.peek(8 + size)
        if size is not None and record is None and not searching:
            translator.bad_data("truncated_record")
            return
        message = None if record is None else _decode(parser, record[8:])
        if message is not None:
            reader.skip(len(record))  # type: ignore[arg-type]
            last_us, searching = stamp_us, False
            yield stamp_us / 1e6, message
        elif searching:
            reader.skip(1)
        elif size is not None:
            # A frame where a record was due that fails its checksum: skip just it.
            translator.bad_data("bad_frame")
            reader.skip(8 + size)
        else:
            translator.bad_data("bad_record")
            searching = True
            reader.skip(1)


def _decode(parser: Any, frame: bytes) -> Any:
    try:
        return parser.decode(bytearray(frame))
    except dialect.MAVError:
        return None


def read_tlog(path: Path, translator: Translator) -> Iterator[Item]:
    """Every item of a .tlog file, in order, then those still waiting at its end."""
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise MavlinkError(f"cannot read {path}: {exc.strerror}") from None
    with stream:
        for received_s, message in tlog_messages(stream, translator):
            yield from translator.feed(message, received_s)
    yield from translator.finish()


# -- `fleetpulse replay --format mavlink`


def sniff(path: Path, head: bytes) -> bool:
    """A .tlog by its name, else by its first two records: timestamps of this century,
    each followed by a MAVLink frame marker."""
    if path.suffix.lower() == ".tlog":
        return True
    first = _record_size(head, 0, None)
    if first is None:
        return False
    second = _record_size(head, first, TLOG_TIMESTAMP.unpack_from(head)[0])
    return second is not None or len(head) == first  # a file of one record


def _record_size(head: bytes, at: int, last_us: int | None) -> int | None:
    if len(head) < at + 8 + 3:
        return None
    (stamp_us,) = TLOG_TIMESTAMP.unpack_from(head, at)
    size = _frame_size(head[at + 8 : at + 11])
    return None if size is None or not _plausible(stamp_us, last_us) else at + 8 + size


class _TlogRecording:
    def __init__(self, records: list[Record], description: str) -> None:
        self._records = records
        self.description = description

    def records(self) -> Iterator[Record]:
        return iter(self._records)


def read_recording(path: Path, device_prefix: str = "") -> RecordingSource:
    """A .tlog as a recording for `fleetpulse replay`: every fix (no rate limit) and the
    online/offline reports, in fix-time order; device ids `<prefix>mavlink-<system id>`."""
    # `recordings` registers this reader, so it can only be imported once both exist.
    from fleetpulse.simulation.recordings import RecordedFix, RecordedStatus, RecordingError

    try:
        translator = Translator(device_prefix=device_prefix)
    except ValueError as exc:
        raise RecordingError(f"{path}: {exc} (check --device-prefix)") from None
    records: list[Record] = []
    try:
        for item in read_tlog(path, translator):
            if isinstance(item, MavlinkFix):
                records.append(RecordedFix(item.device_id, item.fix))
            else:
                at_ms = round(item.at.timestamp() * 1000)
                records.append(RecordedStatus(item.device_id, at_ms, item.online))
    except MavlinkError as exc:
        raise RecordingError(str(exc)) from None
    # Per vehicle the fixes are in order already; several vehicles interleave.
    records.sort(key=lambda r: r.ts_ms)
    return _TlogRecording(records, f"{path.name}: MAVLink telemetry log, {summary(translator)}")


def summary(translator: Translator) -> str:
    """One line for the operator: what was read, produced, skipped and refused."""
    c = translator.counters
    devices = ", ".join(sorted(translator.devices.values())) or "no vehicle"
    text = f"{c.messages:,} messages, {c.fixes:,} fixes of {devices}, {c.statuses} status changes"
    if c.skipped:
        text += ", skipped " + ", ".join(f"{n:,} {why}" for why, n in sorted(c.skipped.items()))
    if c.errors:
        text += ", errors " + ", ".join(f"{n:,} {what}" for what, n in sorted(c.errors.items()))
    return text


def _frame_size(header: bytes) -> int | None:
    """The whole frame's length from its first three bytes, None when they are no frame."""
    magic, payload = header[0], header[1]
    if magic == dialect.PROTOCOL_MARKER_V1:
        return 6 + payload + 2
    if magic == dialect.PROTOCOL_MARKER_V2:
        signed = header[2] & dialect.MAVLINK_IFLAG_SIGNED
        return 10 + payload + 2 + (dialect.MAVLINK_SIGNATURE_BLOCK_LEN if signed else 0)
    return None


def _plausible(stamp_us: int, last_us: int | None) -> bool:
    if last_us is not None:
        return abs(stamp_us - last_us) <= TLOG_MAX_STEP_US
    return TLOG_RANGE_US[0] <= stamp_us <= TLOG_RANGE_US[1]


class _Bytes:
    """A read-ahead window over a binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._data = bytearray()
        self._pos = 0
        self._eof = False

    def peek(self, n: int) -> bytes | None:
        """The next n bytes without taking them; None when the stream ends before."""
        while len(self._data) - self._pos < n and not self._eof:
            chunk = self._stream.read(READ_CHUNK_BYTES)
            if not chunk:
                self._eof = True
                break
            if self._pos >= READ_CHUNK_BYTES:
                del self._data[: self._pos]
                self._pos = 0
            self._data += chunk
        if len(self._data) - self._pos < n:
            return None
        return bytes(self._data[self._pos : self._pos + n])

    def skip(self, n: int) -> None:
        self._pos += n

    def left(self) -> int:
        return len(self._data) - self._pos


# -- UDP


@dataclass(frozen=True)
class UdpAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> UdpAddress:
        """`udpin:HOST:PORT`, as MAVProxy and mavutil name a UDP port to listen on."""
        if not text.startswith(UDP_SCHEME):
            raise ValueError(f"expected {UDP_SCHEME}HOST:PORT, got {text!r}")
        host, _, port = text[len(UDP_SCHEME) :].rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected {UDP_SCHEME}HOST:PORT (port 0-65535), got {text!r}")
        return cls(host.strip("[]"), int(port))


def is_udp(source: str) -> bool:
    return source.startswith(UDP_SCHEME)


class UdpSource:
    """`async with UdpSource(address, translator) as source: async for item in source:`

    Listens on the address (port 0 picks a free one: `source.port`); the items come with
    arrival time as the receive clock. Datagrams are queued (bounded; what overflows is
    counted as `udp_queue_full`) and parsed as one MAVLink stream.
    """

    def __init__(self, address: UdpAddress, translator: Translator) -> None:
        self.address = address
        self.translator = translator
        self.port = address.port
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._arrived = asyncio.Event()
        self._socket: socket.socket | None = None
        self._parser = dialect.MAVLink(None)
        self._parser.robust_parsing = True  # garbage becomes BAD_DATA, not an exception
        self._tick_s = min(TICK_S, translator.heartbeat_timeout_s / 2)

    async def __aenter__(self) -> Self:
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Room for bursts (a ground station replaying its buffer); the kernel caps it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
            sock.bind((self.address.host, self.address.port))
        except OSError as exc:
            sock.close()
            where = f"{self.address.host}:{self.address.port}"
            raise MavlinkError(f"cannot listen on UDP {where}: {exc.strerror or exc}") from None
        self._socket = sock
        self.port = sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _drain(self) -> None:
        """Everything the socket holds, not one datagram per turn of the event loop (as
        asyncio's datagram transport reads): a burst would overflow the kernel's buffer."""
        assert self._socket is not None
        received_s = time.time()
        for _ in range(UDP_DATAGRAMS_PER_READ):
            try:
                data = self._socket.recv(UDP_MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error reported on the socket: nothing to read
                break
            if len(self._queue) >= UDP_QUEUE_DATAGRAMS:
                self.translator.bad_data("udp_queue_full")
                continue
            self._queue.append((received_s, data))
        self._arrived.set()

    async def __aiter__(self) -> AsyncIterator[Item]:
        translator, queue = self.translator, self._queue
        while True:
            if not queue:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), self._tick_s)
                if not queue:
                    for item in translator.tick(time.time()):
                        yield item
                    continue
            received_s, data = queue.popleft()
            try:
                messages = self._parser.parse_buffer(data) or []
            except dialect.MAVError:  # robust parsing still raises on some torn frames
                translator.bad_data("bad_frame")
                continue
            for message in messages:
                for item in translator.feed(message, received_s):
                    yield item
