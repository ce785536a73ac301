"""fleetpulse.simulation.mavlink: MAVLink telemetry becomes fixes and status reports in the
device contract. On the real SITL flight log in the shared data (skipped without it), on
hand-made streams encoded by pymavlink itself, and over a real UDP socket."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymavlink.dialects.v20 import all as dialect  # type: ignore[import-untyped]

from bench.geofence import porto
from fleetpulse import cli
from fleetpulse.simulation import mavlink
from fleetpulse.simulation.mavlink import (
    MavlinkFix,
    MavlinkStatus,
    Translator,
    UdpAddress,
    UdpSource,
    read_tlog,
    tlog_messages,
)
from fleetpulse.simulation.messages import status, telemetry
from fleetpulse.simulation.recordings import RecordedFix, RecordedStatus, open_recording
from ingest.validation import FixRules
from mqtt.codec import Codec, StatusReport
from mqtt.topics import TopicScheme
from tracker.positions import DeviceKind, Fix

TLOG = porto.data_dir() / "drones" / "mavlink_sitl" / "vtol.tlog"
needs_tlog = pytest.mark.skipif(
    not TLOG.is_file(),
    reason=f"{TLOG} not found (set FLEETPULSE_DATA_DIR to the shared data folder)",
)
# ArduPilot's SITL flies from CMAC, Canberra (-35.363, 149.165), ~584 m above sea level.
CMAC_BOX = (-35.40, 149.10, -35.30, 149.20)  # south, west, north, east
T0_US = 1_795_770_000 * 1_000_000  # 2026-11-27T09:00:00Z


# -- the real flight log


def raw_positions() -> list[tuple[float, Any]]:
    """(tlog time, GLOBAL_POSITION_INT) straight from the file, for comparisons."""
    with TLOG.open("rb") as f:
        return [
            (t, m)
            for t, m in tlog_messages(f, Translator())
            if m.get_type() == "GLOBAL_POSITION_INT"
        ]


def first_system_time() -> Any:
    with TLOG.open("rb") as f:
        return next(m for _, m in tlog_messages(f, Translator()) if m.get_type() == "SYSTEM_TIME")


def fixes_of(items: list[mavlink.Item]) -> list[MavlinkFix]:
    return [i for i in items if isinstance(i, MavlinkFix)]


@pytest.fixture(scope="module")
def flight() -> tuple[list[mavlink.Item], Translator]:
    if not TLOG.is_file():
        pytest.skip(f"{TLOG} not found (set FLEETPULSE_DATA_DIR to the shared data folder)")
    translator = Translator()
    return list(read_tlog(TLOG, translator)), translator


@needs_tlog
def test_every_fix_of_the_log_is_plausible(flight: tuple[list[mavlink.Item], Translator]) -> None:
    items, translator = flight
    fixes = fixes_of(items)
    assert len(fixes) > 700
    south, west, north, east = CMAC_BOX
    for item in fixes:
        fix = item.fix
        assert item.device_id == "mavlink-1"
        assert south < fix.lat < north and west < fix.lon < east
        assert fix.alt is not None and 550 < fix.alt < 700
        assert fix.rel_alt is not None and -10 < fix.rel_alt < 100
        assert fix.speed is not None and 0 <= fix.speed < 40  # a QuadPlane, not a jet
        assert fix.heading is not None and 0 <= fix.heading < 360
        assert fix.kind is DeviceKind.DRONE
        # ArduPilot's SITL does not estimate the battery (SYS_STATUS says -1): unknown.
        assert fix.battery is None
    assert translator.counters.errors == {}
    assert max(f.fix.rel_alt or 0 for f in fixes) > 50  # it did fly


@needs_tlog
def test_boot_clock_maps_to_wall_time_through_system_time(
    flight: tuple[list[mavlink.Item], Translator],
) -> None:
    fixes = fixes_of(flight[0])
    anchor = first_system_time()
    offset_ms = anchor.time_unix_usec // 1000 - anchor.time_boot_ms
    times = [f.fix.ts for f in fixes]
    assert times == sorted(set(times))  # strictly increasing
    # Every fix is its own time_boot_ms on one offset: the autopilot's SYSTEM_TIME.
    kept = iter(p for _, p in raw_positions())
    for fix in fixes:
        raw = next(p for p in kept if p.lat / 1e7 == fix.fix.lat and p.lon / 1e7 == fix.fix.lon)
        assert fix.fix.ts == raw.time_boot_ms + offset_ms
    assert fixes[0].ts == datetime(2018, 8, 8, 14, 5, 45, 465000, tzinfo=UTC)


@needs_tlog
def test_fixes_not_newer_than_the_previous_are_counted_as_stale(
    flight: tuple[list[mavlink.Item], Translator],
) -> None:
    items, translator = flight
    newest, stale = -1, 0
    for _, p in raw_positions():
        if p.time_boot_ms <= newest:
            stale += 1
        newest = max(newest, p.time_boot_ms)
    assert stale > 0  # the log has a message that arrived out of order
    assert translator.counters.skipped == {"stale": stale}
    assert len(fixes_of(items)) + stale == len(raw_positions())


@needs_tlog
def test_statuses_follow_the_heartbeat(flight: tuple[list[mavlink.Item], Translator]) -> None:
    statuses = [i for i in flight[0] if isinstance(i, MavlinkStatus)]
    assert statuses[0].online and statuses[0].reason == "heartbeat, armed"
    assert [s.online for s in statuses] == [i % 2 == 0 for i in range(len(statuses))]
    assert [s.at for s in statuses] == sorted(s.at for s in statuses)
    # The log has a 6 s hole between two heartbeats (the other messages kept coming).
    assert any(not s.online and s.reason == "no heartbeat for 5 s" for s in statuses)


@needs_tlog
def test_every_message_decodes_with_the_contract_codec(
    flight: tuple[list[mavlink.Item], Translator],
) -> None:
    codec = Codec(TopicScheme(), FixRules(None))
    scheme = TopicScheme()
    items = flight[0]
    received_at = max(i.ts if isinstance(i, MavlinkFix) else i.at for i in items)
    for item in items:
        if isinstance(item, MavlinkFix):
            out = telemetry(item.device_id, item.fix)
            [decoded] = codec.decode(out.topic(scheme), out.payload, received_at)
            assert isinstance(decoded, Fix), decoded
            assert decoded.ts == item.ts
            assert (decoded.lat, decoded.lon, decoded.alt) == (
                item.fix.lat,
                item.fix.lon,
                item.fix.alt,
            )
            assert decoded.kind is DeviceKind.DRONE
        else:
            out = status(item.device_id, item.online)
            [decoded] = codec.decode(out.topic(scheme), out.payload, received_at)
            assert isinstance(decoded, StatusReport), decoded
            assert decoded.status == ("online" if item.online else "offline")


@needs_tlog
def test_rate_limit_keeps_fixes_a_period_apart() -> None:
    translator = Translator(max_rate_hz=1.0)
    fixes = fixes_of(list(read_tlog(TLOG, translator)))
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(fixes)]
    assert min(gaps) >= timedelta(seconds=1)
    skipped = translator.counters.skipped
    assert skipped["rate_limited"] > 0
    assert len(fixes) + skipped["rate_limited"] + skipped["stale"] == len(raw_positions())


@needs_tlog
def test_replay_opens_the_log_by_its_name_and_by_its_content() -> None:
    source = open_recording(TLOG)
    records = list(source.records())
    assert "MAVLink telemetry log" in source.description and "mavlink-1" in source.description
    assert [r.ts_ms for r in records] == sorted(r.ts_ms for r in records)
    recorded = [r for r in records if isinstance(r, RecordedFix)]
    assert len(recorded) == len(fixes_of(list(read_tlog(TLOG, Translator()))))
    assert any(isinstance(r, RecordedStatus) and not r.online for r in records)
    head = TLOG.read_bytes()[: 16 * 1024]
    assert mavlink.sniff(Path("flight.bin"), head)
    assert not mavlink.sniff(Path("trips.csv"), b"TRIP_ID,CALL_TYPE,TAXI_ID\n")
    prefixed = open_recording(TLOG, "mavlink", "sitl-")
    assert next(prefixed.records()).device_id == "sitl-mavlink-1"


@needs_tlog
def test_damaged_log_loses_only_the_damaged_records(tmp_path: Path) -> None:
    with TLOG.open("rb") as f:
        records = [
            struct.pack(">Q", round(t * 1e6)) + bytes(m.get_msgbuf())
            for t, m in tlog_messages(f, Translator())
        ][:3000]
    broken = bytearray(records[1001])
    broken[-1] ^= 0xFF  # a checksum that does not match
    damaged = tmp_path / "damaged.tlog"
    damaged.write_bytes(
        b"".join(records[:1000])
        + b"\x00\x17garbage from a torn write\xfe"
        + b"".join(records[1000:1001])
        + bytes(broken)
        + b"".join(records[1002:])
        + records[0][:11]  # a record cut short at the end
    )
    whole, hurt = Translator(), Translator()
    with TLOG.open("rb") as f:
        for n, (t, m) in enumerate(tlog_messages(f, whole)):
            if n == 3000:
                break
            whole.feed(m, t)
    list(read_tlog(damaged, hurt))
    assert hurt.counters.errors == {"bad_record": 1, "bad_frame": 1, "truncated_record": 1}
    assert hurt.counters.messages == whole.counters.messages - 1


# -- hand-made streams


class Vehicle:
    """Encodes messages as system `system_id` would send them, decoded back by pymavlink."""

    def __init__(self, system_id: int = 1, component_id: int = 1) -> None:
        self.mav = dialect.MAVLink(None, srcSystem=system_id, srcComponent=component_id)
        self.reader = dialect.MAVLink(None)

    def _sent(self, message: Any) -> Any:
        return self.reader.decode(bytearray(message.pack(self.mav)))

    def heartbeat(self, *, armed: bool = True, state: int = 4, kind: int = 2) -> Any:
        base_mode = dialect.MAV_MODE_FLAG_SAFETY_ARMED if armed else 0
        return self._sent(
            self.mav.heartbeat_encode(
                kind, dialect.MAV_AUTOPILOT_ARDUPILOTMEGA, base_mode, 0, state
            )
        )

    def gcs_heartbeat(self) -> Any:
        return self._sent(
            self.mav.heartbeat_encode(dialect.MAV_TYPE_GCS, dialect.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        )

    def position(
        self, boot_ms: int, lat: float = 41.15, lon: float = -8.61, hdg: int = 9000, **kw: int
    ) -> Any:
        return self._sent(
            self.mav.global_position_int_encode(
                boot_ms,
                round(lat * 1e7),
                round(lon * 1e7),
                kw.get("alt_mm", 150_000),
                kw.get("rel_mm", 60_000),
                kw.get("vx", 0),
                kw.get("vy", 1000),
                0,
                hdg,
            )
        )

    def system_time(self, unix_us: int, boot_ms: int) -> Any:
        return self._sent(self.mav.system_time_encode(unix_us, boot_ms))

    def battery(self, remaining: int) -> Any:
        return self._sent(
            self.mav.sys_status_encode(0, 0, 0, 0, 12_000, 500, remaining, 0, 0, 0, 0, 0, 0)
        )


def feed(translator: Translator, stream: list[tuple[float, Any]]) -> list[mavlink.Item]:
    out: list[mavlink.Item] = []
    for received_s, message in stream:
        out.extend(translator.feed(message, received_s))
    return out


def test_a_fix_carries_the_contract_units() -> None:
    v = Vehicle()
    translator = Translator()
    stream = [
        (100.0, v.heartbeat()),
        (100.0, v.battery(87)),
        (100.1, v.system_time(T0_US, 5_000)),
        (100.2, v.position(5_200, alt_mm=152_340, rel_mm=61_500, vx=300, vy=-400, hdg=31_050)),
    ]
    [online, fix] = feed(translator, stream)
    assert online == MavlinkStatus(
        "mavlink-1", 1, True, datetime.fromtimestamp(100.0, UTC), "heartbeat, armed"
    )
    assert isinstance(fix, MavlinkFix)
    assert fix.fix.ts == T0_US // 1000 + 200
    assert (fix.fix.alt, fix.fix.rel_alt) == (152.34, 61.5)
    assert fix.fix.speed == 5.0  # |(3, -4)| m/s
    assert fix.fix.heading == 310.5
    assert fix.fix.battery == 87.0
    assert fix.fix.kind is DeviceKind.DRONE


def test_without_system_time_the_first_fix_anchors_on_its_arrival() -> None:
    v = Vehicle()
    translator = Translator()
    # Fixes wait ANCHOR_WAIT_S for a SYSTEM_TIME; none comes.
    stream = [(1_700_000_000.0 + i * 0.5, v.position(10_000 + i * 500)) for i in range(5)]
    fixes = fixes_of(feed(translator, stream))
    assert [f.fix.ts for f in fixes] == [1_700_000_000_000 + i * 500 for i in range(5)]
    assert translator.finish() == []  # released already: the wait was over at the 5th
    assert len(fixes_of(feed(translator, [(1_700_000_003.0, v.position(13_000))]))) == 1


def test_fixes_waiting_for_the_anchor_come_out_at_the_end() -> None:
    v = Vehicle()
    translator = Translator()
    assert feed(translator, [(1_700_000_000.0, v.position(10_000))]) == []
    [fix] = fixes_of(translator.finish())
    assert fix.fix.ts == 1_700_000_000_000


def test_no_position_yet_unknown_battery_and_heading_from_velocity() -> None:
    v = Vehicle()
    translator = Translator()
    stream = [
        (0.0, v.system_time(T0_US, 1_000)),
        (0.0, v.position(1_000)),  # makes the vehicle known; no SYSTEM_TIME before it counts
        (0.1, v.system_time(T0_US + 1_000_000, 2_000)),
        (0.2, v.position(2_100, lat=0.0, lon=0.0)),
        (0.3, v.battery(-1)),
        (0.4, v.position(2_300, hdg=mavlink.UNKNOWN_HEADING_CDEG, vx=-1000, vy=0)),
        (0.5, v.position(2_400, hdg=mavlink.UNKNOWN_HEADING_CDEG, vx=10, vy=0)),
    ]
    fixes = fixes_of(feed(translator, stream))
    assert translator.counters.skipped == {"no_position": 1}
    assert [f.fix.heading for f in fixes[-2:]] == [180.0, None]  # moving south; standing
    assert all(f.fix.battery is None for f in fixes)


def test_heartbeat_loss_and_power_off_make_the_device_offline() -> None:
    v = Vehicle(system_id=7)
    translator = Translator(heartbeat_timeout_s=3.0)
    assert feed(translator, [(10.0, v.gcs_heartbeat())]) == []  # a ground station
    [online] = feed(translator, [(10.0, v.heartbeat())])
    assert online.online and online.device_id == "mavlink-7"  # type: ignore[union-attr]
    assert translator.tick(12.9) == []
    [lost] = translator.tick(13.0)
    assert isinstance(lost, MavlinkStatus) and not lost.online
    assert lost.reason == "no heartbeat for 3 s"
    assert translator.tick(20.0) == []  # said once
    [back] = feed(translator, [(21.0, v.heartbeat(armed=False))])
    assert isinstance(back, MavlinkStatus) and back.online
    assert back.reason == "heartbeat, disarmed"
    [off] = feed(translator, [(22.0, v.heartbeat(state=dialect.MAV_STATE_POWEROFF))])
    assert isinstance(off, MavlinkStatus) and not off.online
    assert off.reason == "the vehicle powers off"
    assert translator.counters.statuses == 4


def test_a_reboot_takes_a_new_anchor() -> None:
    v = Vehicle()
    translator = Translator()
    before = fixes_of(
        feed(translator, [(0.0, v.system_time(T0_US, 600_000)), (0.0, v.position(600_500))])
    )
    before += fixes_of(feed(translator, [(0.1, v.system_time(T0_US, 600_000))]))
    reboot_us = T0_US + 700 * 1_000_000
    after = feed(translator, [(0.2, v.system_time(reboot_us, 2_000)), (0.3, v.position(2_500))])
    assert [f.fix.ts for f in before] == [T0_US // 1000 + 500]
    assert [f.fix.ts for f in fixes_of(after)] == [reboot_us // 1000 + 500]
    assert translator.counters.reboots == 1


def test_one_device_id_takes_one_vehicle_and_the_companion_clock_is_ignored() -> None:
    drone, other = Vehicle(system_id=3), Vehicle(system_id=4)
    companion = Vehicle(system_id=3, component_id=191)
    translator = Translator(device_id="drone-7")
    stream = [
        (0.0, drone.heartbeat()),
        (0.0, other.heartbeat()),
        (0.1, companion.system_time(T0_US + 3_600_000_000, 1_000)),  # another boot clock
        (0.1, drone.system_time(T0_US, 1_000)),
        (0.2, drone.position(1_200)),
        (0.2, other.position(1_200)),
    ]
    items = feed(translator, stream)
    assert [i.device_id for i in items] == ["drone-7", "drone-7"]
    assert fixes_of(items)[0].fix.ts == T0_US // 1000 + 200
    assert translator.counters.skipped == {"other_system": 2}
    assert translator.devices == {3: "drone-7"}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="device id"):
        Translator(device_id="drone 7")
    with pytest.raises(ValueError, match="device id"):
        Translator(device_prefix="x" * 60)
    with pytest.raises(ValueError, match="rate"):
        Translator(max_rate_hz=0)
    assert UdpAddress.parse("udpin:0.0.0.0:14550") == UdpAddress("0.0.0.0", 14550)
    assert UdpAddress.parse("udpin:[::1]:14550") == UdpAddress("::1", 14550)
    for text in ("udp:0.0.0.0:14550", "udpin:14550", "udpin:host:99999"):
        with pytest.raises(ValueError, match="udpin:HOST:PORT"):
            UdpAddress.parse(text)


# -- over UDP


def log_frames(limit: int) -> Iterator[tuple[float, bytes]]:
    with TLOG.open("rb") as f:
        for n, (t, m) in enumerate(tlog_messages(f, Translator())):
            if n == limit:
                return
            yield t, bytes(m.get_msgbuf())


async def send_datagrams(port: int, frames: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n, frame in enumerate(frames):
            sock.sendto(frame, ("127.0.0.1", port))
            if n % 50 == 0:
                await asyncio.sleep(0)  # let the reader empty the socket's buffer


async def collect(source: UdpSource, until: Any) -> list[mavlink.Item]:
    items: list[mavlink.Item] = []

    async def read() -> None:
        async for item in source:
            items.append(item)
            if until(items):
                return

    await asyncio.wait_for(read(), timeout=30)
    return items


@needs_tlog
async def test_udp_gives_the_fixes_the_log_gives() -> None:
    frames = list(log_frames(4000))
    # The same messages read from the file: SYSTEM_TIME anchors both, so the fix times
    # agree although the UDP side's receive clock is now.
    expected = Translator()
    want = fixes_of(
        [i for t, f in frames for i in expected.feed(dialect.MAVLink(None).decode(bytearray(f)), t)]
    )
    assert len(want) > 50
    translator = Translator()
    async with UdpSource(UdpAddress("127.0.0.1", 0), translator) as source:
        items, _ = await asyncio.gather(
            collect(source, lambda got: len(fixes_of(got)) == len(want)),
            send_datagrams(source.port, [f for _, f in frames]),
        )
    assert fixes_of(items) == want
    assert translator.counters.errors == {}


async def test_udp_garbage_is_counted_and_a_silent_drone_goes_offline() -> None:
    v = Vehicle(system_id=9)
    translator = Translator(heartbeat_timeout_s=0.2)
    frames = [
        b"\x00\x01 not mavlink",
        bytes(v.heartbeat().get_msgbuf()),
        bytes(v.system_time(T0_US, 1_000).get_msgbuf()),
        bytes(v.position(1_100).get_msgbuf()),
    ]
    async with UdpSource(UdpAddress("127.0.0.1", 0), translator) as source:
        await send_datagrams(source.port, frames)
        items = await collect(
            source, lambda got: any(isinstance(i, MavlinkStatus) and not i.online for i in got)
        )
    assert [type(i).__name__ for i in items] == ["MavlinkStatus", "MavlinkFix", "MavlinkStatus"]
    assert translator.counters.errors["bad_data"] >= 1
    assert fixes_of(items)[0].fix.ts == T0_US // 1000 + 100


async def test_udp_port_in_use_is_a_clear_error() -> None:
    async with UdpSource(UdpAddress("127.0.0.1", 0), Translator()) as first:
        taken = UdpAddress("127.0.0.1", first.port)
        with pytest.raises(
            mavlink.MavlinkError, match=f"cannot listen on UDP 127.0.0.1:{first.port}"
        ):
            await UdpSource(taken, Translator()).__aenter__()


def test_a_log_of_mavlink2_frames_reads_like_one_of_mavlink1(tmp_path: Path) -> None:
    v = Vehicle(system_id=2)
    stream = [
        (1_700_000_000.0, v.heartbeat()),
        (1_700_000_000.1, v.system_time(T0_US, 1_000)),
        (1_700_000_000.2, v.position(1_100)),
    ]
    # A signed frame carries 13 bytes more (read, not verified: the bridge holds no key).
    v.mav.signing.secret_key = bytes(range(32))
    v.mav.signing.sign_outgoing = True
    stream.append((1_700_000_000.3, v.position(1_300)))
    assert len(stream[-1][1].get_msgbuf()) == len(stream[-2][1].get_msgbuf()) + 13
    assert all(m.get_msgbuf()[0] == dialect.PROTOCOL_MARKER_V2 for _, m in stream)
    log = tmp_path / "v2.tlog"
    log.write_bytes(
        b"".join(struct.pack(">Q", round(t * 1e6)) + bytes(m.get_msgbuf()) for t, m in stream)
    )
    translator = Translator()
    fixes = fixes_of(list(read_tlog(log, translator)))
    assert [f.fix.ts for f in fixes] == [T0_US // 1000 + 100, T0_US // 1000 + 300]
    assert translator.counters.errors == {} and translator.devices == {2: "mavlink-2"}


def test_bridge_command_line() -> None:
    parser = cli._parser()
    args = parser.parse_args(
        ["mavlink-bridge", "--source", "udpin:0.0.0.0:14550", "--device-id", "drone-7"]
    )
    assert (args.source, args.device_id, args.max_rate, args.system_id) == (
        "udpin:0.0.0.0:14550",
        "drone-7",
        5.0,
        None,
    )
    assert (
        parser.parse_args(["mavlink-bridge", "--source", "f.tlog", "--max-rate", "0"]).max_rate == 0
    )
    for bad in (["--max-rate", "-1"], ["--system-id", "256"], ["--heartbeat-timeout", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["mavlink-bridge", "--source", "f.tlog", *bad])
