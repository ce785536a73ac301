"""Each replay format parses: Porto taxi CSV and DJI flight logs from the shared data,
GPX from a file written here; what they yield decodes as contract fixes."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.geofence import porto
from fleetpulse.simulation import recordings
from fleetpulse.simulation.recordings import RecordedFix, RecordingError
from fleetpulse.simulation.replay import Timeline, message
from mqtt.codec import Codec
from mqtt.topics import TopicScheme
from tracker.dji_logs import read_dji_log
from tracker.positions import DeviceKind, Fix

TRIPS = porto.data_dir() / "porto/trips_dev.csv"
DJI_LOGS = sorted((porto.data_dir() / "drones/dji_sf").glob("*.log"))
needs_trips = pytest.mark.skipif(
    not TRIPS.is_file(), reason=f"{TRIPS} not found (set {porto.DATA_DIR_ENV})"
)
needs_dji = pytest.mark.skipif(
    not DJI_LOGS, reason=f"no DJI logs under {porto.data_dir() / 'drones/dji_sf'}"
)
SCHEME = TopicScheme()


def fixes(source: recordings.RecordingSource) -> list[RecordedFix]:
    out = [r for r in source.records() if isinstance(r, RecordedFix)]
    assert [r.ts_ms for r in out] == sorted(r.ts_ms for r in out)  # in fix-time order
    return out


def decodes(codec: Codec, records: list[RecordedFix]) -> list[Fix]:
    """Each record as its device sends it, shifted to the codec's clock, decoded."""
    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    timeline = Timeline.plan(records[0].ts_ms, records[-1].ts_ms, 1.0, True, now)
    out = []
    for record in records:
        sent = message(record, timeline)
        received = datetime.fromtimestamp(timeline.fix_time_ms(record.ts_ms) / 1000, UTC)
        [fix] = codec.decode(sent.topic(SCHEME), sent.payload, received)
        assert isinstance(fix, Fix), fix
        out.append(fix)
    return out


@needs_trips
def test_porto_trips_parse(codec: Codec) -> None:
    source = recordings.open_recording(TRIPS)
    records = fixes(source)
    # The geofence benchmark reads the same file its own way: the same fixes.
    independent = porto.load_fixes()
    assert len(records) == len(independent)
    assert {(r.device_id, r.ts_ms) for r in records} == {
        (f.device_id, round(f.ts.timestamp() * 1000)) for f in independent
    }
    assert "700 trips" in source.description
    with TRIPS.open(newline="") as f:
        first = next(csv.DictReader(f))
    assert first["TRIP_ID"].endswith("\t")
    start = int(first["TIMESTAMP"]) * 1000
    lon, lat = json.loads(first["POLYLINE"])[1]
    mine = [r for r in records if r.device_id == first["TAXI_ID"] and r.ts_ms == start + 15_000]
    assert [(r.fix.lat, r.fix.lon, r.fix.kind) for r in mine] == [(lat, lon, DeviceKind.VEHICLE)]
    decodes(codec, records[:2_000])


def write_porto(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["TRIP_ID", "CALL_TYPE", "ORIGIN_CALL", "ORIGIN_STAND", "TAXI_ID", "TIMESTAMP",
             "DAY_TYPE", "MISSING_DATA", "POLYLINE"]
        )  # fmt: skip
        for trip, taxi, ts, polyline in rows:
            writer.writerow([trip + "\t", "C", "", "", taxi, ts, "A", "False", polyline])
    return path


def test_porto_format_details(tmp_path: Path) -> None:
    path = write_porto(
        tmp_path / "trips.csv",
        [
            ["1", "20000001", "1372636858", "[[-8.61,41.14],[-8.62,41.15]]"],
            ["2", "20000002", "1372636800", "[]"],
            ["3", "20000001", "1372637000", "[[-8.63,41.16]]"],
        ],
    )
    assert recordings.detect_format(path).name == "porto"
    source = recordings.open_recording(path, device_prefix="taxi-")
    got = [(r.device_id, r.ts_ms, r.fix.lat, r.fix.lon) for r in fixes(source)]
    assert got == [
        ("taxi-20000001", 1372636858000, 41.14, -8.61),
        ("taxi-20000001", 1372636873000, 41.15, -8.62),
        ("taxi-20000001", 1372637000000, 41.16, -8.63),
    ]
    assert "3 trips (1 without fixes skipped), 1 taxis, 3 fixes" in source.description


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (["1", "20000001", "soon", "[]"], r"trips.csv:2: trip 1: TIMESTAMP 'soon'"),
        (["1", "20000001", "1372636858", "[[-8.61]]"], r"trips.csv:2: trip 1: POLYLINE"),
        (["1", "20000001", "1372636858", "[[-8.61,"], r"trips.csv:2: trip 1: POLYLINE"),
        (["1", "taxi 1", "1372636858", "[]"], r"trips.csv:2 TAXI_ID: device id 'taxi 1'"),
    ],
)
def test_porto_errors_name_the_line(tmp_path: Path, row: list[str], problem: str) -> None:
    path = write_porto(tmp_path / "trips.csv", [row])
    with pytest.raises(RecordingError, match=problem):
        recordings.read_porto(path)


GPX = """<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">
  <trk><name>Van 7 (morning)</name><trkseg>
    <trkpt lat="41.1496" lon="-8.6109"><ele>81.5</ele><time>2026-11-27T08:00:00Z</time></trkpt>
    <trkpt lat="41.1500" lon="-8.6100"><ele>82.0</ele><time>2026-11-27T08:00:05Z</time></trkpt>
  </trkseg><trkseg>
    <trkpt lat="41.1510" lon="-8.6090"><time>2026-11-27T08:00:10.250+00:00</time></trkpt>
  </trkseg></trk>
  <trk><trkseg>
    <trkpt lat="41.1400" lon="-8.6200"><time>2026-11-27T08:00:02Z</time></trkpt>
  </trkseg></trk>
</gpx>
"""


def test_gpx_tracks_parse(tmp_path: Path, codec: Codec) -> None:
    path = tmp_path / "rounds.gpx"
    path.write_text(GPX)
    assert recordings.detect_format(path).name == "gpx"
    source = recordings.open_recording(path, device_prefix="gpx-")
    got = [(r.device_id, r.ts_ms, r.fix.lat, r.fix.lon, r.fix.alt) for r in fixes(source)]
    t0 = round(datetime(2026, 11, 27, 8, 0, tzinfo=UTC).timestamp() * 1000)
    assert got == [
        ("gpx-Van-7-morning", t0, 41.1496, -8.6109, 81.5),
        ("gpx-rounds", t0 + 2_000, 41.14, -8.62, None),
        ("gpx-Van-7-morning", t0 + 5_000, 41.15, -8.61, 82.0),
        ("gpx-Van-7-morning", t0 + 10_250, 41.151, -8.609, None),
    ]
    decoded = decodes(codec, fixes(source))
    assert [f.alt for f in decoded] == [81.5, None, 82.0, None]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GPX.replace("<time>2026-11-27T08:00:05Z</time>", ""), "track 1, point 2: no <time>"),
        (GPX.replace('lat="41.1500"', 'lat="north"'), "track 1, point 2: lat/lon"),
        (GPX.replace('lat="41.1500"', 'lat="95"'), "track 1, point 2: 95.0,-8.61 is not"),
        (GPX.replace("2026-11-27T08:00:05Z", "yesterday"), "point 2: <time> 'yesterday'"),
        (GPX.replace("<ele>82.0</ele>", "<ele>high</ele>"), "<ele> 'high' is not a number"),
        (GPX.replace("</gpx>", ""), "not well-formed XML"),
        (GPX.replace("gpx version", "kml version").replace("</gpx>", "</kml>"), "not GPX"),
        ('<gpx xmlns="http://www.topografix.com/GPX/1/1"></gpx>', "no <trk> track"),
    ],
)
def test_gpx_errors_say_where(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.gpx"
    path.write_text(text)
    with pytest.raises(RecordingError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        recordings.read_gpx(path)


@needs_dji
@pytest.mark.parametrize("log", DJI_LOGS, ids=[p.name for p in DJI_LOGS])
def test_dji_logs_parse(log: Path, codec: Codec) -> None:
    assert recordings.detect_format(log).name == "dji"
    source = recordings.open_recording(log)
    records = fixes(source)
    parsed = read_dji_log(log)
    assert len(records) == len(parsed.samples)
    assert parsed.started_at is not None
    assert records[0].ts_ms == round(
        (parsed.started_at + timedelta(seconds=parsed.samples[0].t_s)).timestamp() * 1000
    )
    assert {r.device_id for r in records} == {log.stem}
    assert all(r.fix.kind is DeviceKind.DRONE for r in records)
    heights = [r.fix.rel_alt for r in records if r.fix.rel_alt is not None]
    assert 10 < max(heights) < 200  # metres above take-off, converted from feet
    batteries = [r.fix.battery for r in records]
    assert batteries[0] is None and batteries[-1] is not None  # reported after a while
    decodes(codec, records)


def test_unknown_formats_are_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("nothing to see\n")
    with pytest.raises(RecordingError, match="cannot tell its format; name it with --format"):
        recordings.open_recording(path)
    with pytest.raises(RecordingError, match="unknown format 'kml'"):
        recordings.open_recording(path, "kml")
    with pytest.raises(RecordingError, match="No such file"):
        recordings.open_recording(tmp_path / "missing.csv")


def test_device_names_are_made_valid() -> None:
    assert recordings.device_name("Van 7 (morning)") == "Van-7-morning"
    assert recordings.device_name("///") == "device"
    assert len(recordings.device_name("x" * 100)) == 64
