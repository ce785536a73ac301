"""The history encoders: each format parses with an independent reader, carries every
fix in order, and does not depend on where the chunks were cut."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, get_origin

import msgspec
import pytest

from ingest.schema import TELEMETRY_COLUMNS
from tracker.positions import DeviceKind, Fix
from web import history_formats as formats
from web.history_formats import Format, Geometry

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
GPX_NS = {"g": "http://www.topografix.com/GPX/1/1"}
TPX = "{http://www.garmin.com/xmlschemas/TrackPointExtension/v2}"


def make_fixes(n: int, device: str = "van-1") -> list[Fix]:
    """Fixes with a mix of present and missing optional values."""
    return [
        Fix(
            device_id=device,
            ts=T0 + timedelta(seconds=i, microseconds=7),
            lat=41.15 + i * 1e-4,
            lon=-8.61 - i * 1e-4,
            received_at=T0 + timedelta(seconds=i + 1),
            alt=100.5 + i if i % 2 == 0 else None,
            speed=3.25 if i % 3 else None,
            heading=90.0 if i % 4 == 1 else None,
            battery=80.0,
            kind=DeviceKind.VEHICLE,
            seq=i,
        )
        for i in range(n)
    ]


async def source(fixes: Sequence[Fix]) -> AsyncIterator[Fix]:
    for fix in fixes:
        yield fix


async def render(
    fmt: Format,
    fixes: Sequence[Fix],
    *,
    chunk: int = formats.CHUNK_FIXES,
    next_cursor: str | None = None,
    geometry: Geometry = Geometry.POINTS,
    device: str = "van-1",
) -> tuple[bytes, int]:
    out = formats.encoder(fmt, device, next_cursor, geometry)
    chunks = [c async for c in formats.encode(source(fixes), out, chunk)]
    return b"".join(chunks), len(chunks)


ALL = [
    (Format.JSON, Geometry.POINTS),
    (Format.NDJSON, Geometry.POINTS),
    (Format.GEOJSON, Geometry.POINTS),
    (Format.GEOJSON, Geometry.LINE),
    (Format.GPX, Geometry.POINTS),
    (Format.CSV, Geometry.POINTS),
]


@pytest.mark.parametrize(("fmt", "geometry"), ALL)
@pytest.mark.parametrize("n", [0, 1, 2, 7])
async def test_chunk_boundaries_do_not_change_the_document(
    fmt: Format, geometry: Geometry, n: int
) -> None:
    fixes = make_fixes(n)
    whole, _ = await render(fmt, fixes, geometry=geometry, next_cursor="c")
    for chunk in (1, 2, 3):
        cut, _ = await render(fmt, fixes, chunk=chunk, geometry=geometry, next_cursor="c")
        assert cut == whole


async def test_chunks_hold_at_most_the_chunk_size() -> None:
    _, count = await render(Format.NDJSON, make_fixes(10), chunk=3)
    assert count == 1 + 4 + 1  # head, 3+3+3+1 fixes, tail


async def test_json_carries_every_fix_then_the_next_cursor() -> None:
    fixes = make_fixes(5)
    body, _ = await render(Format.JSON, fixes, chunk=2, next_cursor="2026-11-27T09:00:04Z")
    document = json.loads(body)
    assert list(document) == ["device_id", "fixes", "next"]  # next comes last
    assert document["device_id"] == "van-1"
    assert document["next"] == "2026-11-27T09:00:04Z"
    assert [f["seq"] for f in document["fixes"]] == [0, 1, 2, 3, 4]
    first = document["fixes"][0]
    assert datetime.fromisoformat(first["ts"]) == fixes[0].ts
    assert first["alt"] == 100.5 and first["speed"] is None and first["kind"] == "vehicle"


async def test_json_of_an_empty_last_page() -> None:
    body, _ = await render(Format.JSON, [])
    assert json.loads(body) == {"device_id": "van-1", "fixes": [], "next": None}


async def test_ndjson_is_one_fix_per_line() -> None:
    fixes = make_fixes(4)
    body, _ = await render(Format.NDJSON, fixes, chunk=3)
    lines = body.decode().splitlines()
    assert [json.loads(line)["ts"] for line in lines] == [
        f.ts.isoformat().replace("+00:00", "Z") for f in fixes
    ]
    assert body.endswith(b"\n")


async def test_geojson_points_put_longitude_first_and_altitude_third() -> None:
    fixes = make_fixes(3)
    body, _ = await render(Format.GEOJSON, fixes)
    collection = json.loads(body)
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["geometry"]["type"] for f in features] == ["Point"] * 3
    assert features[0]["geometry"]["coordinates"] == [fixes[0].lon, fixes[0].lat, 100.5]
    assert features[1]["geometry"]["coordinates"] == [fixes[1].lon, fixes[1].lat]
    assert features[1]["properties"]["seq"] == 1
    assert features[1]["properties"]["device_id"] == "van-1"


async def test_geojson_line_holds_the_track_in_one_linestring() -> None:
    fixes = make_fixes(6)
    body, _ = await render(Format.GEOJSON, fixes, chunk=1, geometry=Geometry.LINE)
    [feature] = json.loads(body)["features"]
    assert feature["geometry"]["type"] == "LineString"
    assert [c[:2] for c in feature["geometry"]["coordinates"]] == [[f.lon, f.lat] for f in fixes]
    assert feature["properties"]["fixes"] == 6
    assert datetime.fromisoformat(feature["properties"]["start"]) == fixes[0].ts
    assert datetime.fromisoformat(feature["properties"]["end"]) == fixes[-1].ts


async def test_geojson_line_of_one_fix_is_a_point_and_of_none_is_empty() -> None:
    body, _ = await render(Format.GEOJSON, make_fixes(1), geometry=Geometry.LINE)
    [feature] = json.loads(body)["features"]
    assert feature["geometry"]["type"] == "Point"
    body, _ = await render(Format.GEOJSON, [], geometry=Geometry.LINE)
    assert json.loads(body) == {"type": "FeatureCollection", "features": []}


async def test_gpx_is_a_gpx_1_1_track_with_a_point_per_fix() -> None:
    fixes = make_fixes(4)
    body, _ = await render(Format.GPX, fixes, device="van <&> 1")
    root = ET.fromstring(body)
    assert root.tag == "{http://www.topografix.com/GPX/1/1}gpx"
    assert root.get("version") == "1.1"
    assert root.findtext("g:trk/g:name", namespaces=GPX_NS) == "van <&> 1"
    points = root.findall("g:trk/g:trkseg/g:trkpt", GPX_NS)
    assert len(points) == 4
    assert [float(p.get("lat", "nan")) for p in points] == [f.lat for f in fixes]
    assert [float(p.get("lon", "nan")) for p in points] == [f.lon for f in fixes]
    times = [datetime.fromisoformat(p.findtext("g:time", namespaces=GPX_NS) or "") for p in points]
    assert times == [f.ts for f in fixes]
    assert points[0].findtext("g:ele", namespaces=GPX_NS) == "100.5"
    assert points[1].find("g:ele", GPX_NS) is None
    # The children keep the order GPX 1.1's schema prescribes.
    assert [child.tag.split("}")[1] for child in points[1]] == ["time", "extensions"]
    extension = points[1].find(f"g:extensions/{TPX}TrackPointExtension", GPX_NS)
    assert extension is not None
    assert extension.findtext(f"{TPX}speed") == "3.25"
    assert extension.findtext(f"{TPX}course") == "90.0"


async def test_csv_has_the_cli_columns_and_empty_cells_for_missing_values() -> None:
    fixes = make_fixes(3)
    body, _ = await render(Format.CSV, fixes, chunk=2)
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(rows[0]) == list(TELEMETRY_COLUMNS)
    assert [int(r["seq"]) for r in rows] == [0, 1, 2]
    assert [datetime.fromisoformat(r["ts"]) for r in rows] == [f.ts for f in fixes]
    assert rows[1]["alt"] == "" and float(rows[0]["alt"]) == 100.5
    assert rows[0]["kind"] == "vehicle"


async def test_closing_the_stream_closes_its_source() -> None:
    closed: list[bool] = []

    async def fixes() -> AsyncIterator[Fix]:
        try:
            for fix in make_fixes(10):
                yield fix
        finally:
            closed.append(True)

    stream = formats.encode(fixes(), formats.encoder(Format.CSV, "van-1", None), 2)
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert closed == [True]


def test_cursor_is_utc_with_microseconds_and_round_trips() -> None:
    ts = datetime(2026, 11, 27, 10, 0, 0, 123, tzinfo=UTC)
    text = formats.cursor(ts.astimezone(timezone(timedelta(hours=1))))
    assert text == "2026-11-27T10:00:00.000123Z"
    assert "+" not in text
    assert datetime.fromisoformat(text) == ts


def test_the_documented_fix_is_the_encoded_fix() -> None:
    """`Fix` is the one source of truth; `HistoryFix` repeats it for the schema, adding
    only the time-zone constraint of its times."""

    def shape(kind: type[msgspec.Struct]) -> list[tuple[str, Any, Any]]:
        def bare(annotation: Any) -> Any:
            return annotation.__origin__ if get_origin(annotation) is Annotated else annotation

        return [(f.name, bare(f.type), f.default) for f in msgspec.structs.fields(kind)]

    assert shape(formats.HistoryFix) == shape(Fix)
    fix = make_fixes(2)[1]
    assert msgspec.json.decode(msgspec.json.encode(fix), type=formats.HistoryFix) == (
        formats.HistoryFix(**msgspec.structs.asdict(fix))
    )


def test_every_format_has_a_media_type() -> None:
    assert set(formats.MEDIA_TYPES) == set(Format)
