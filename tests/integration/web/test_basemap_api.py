"""The dispatch map's base layer over HTTP: tiles when configured, else roads drawn from
the configured OpenStreetMap extract (by zoom, by box), else nothing; refusals are
precise problem documents."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from bench.geofence import porto
from fleetpulse.settings import Settings
from tests.conftest import make_token, web_client, with_options

# A motorway (three nodes: one line), a residential street meeting a service road at
# node 11 (two lines of two classes), a footway (not drivable: never drawn) and a lone
# roundabout made only of plain nodes.
NODES = {
    1: (41.100, -8.700),
    2: (41.103, -8.690),
    3: (41.102, -8.680),
    10: (41.150, -8.610),
    11: (41.151, -8.610),
    12: (41.152, -8.611),
    20: (41.160, -8.600),
    21: (41.161, -8.600),
    30: (41.170, -8.620),
    31: (41.170, -8.619),
    32: (41.1705, -8.6195),
}
WAYS = [
    (100, [1, 2, 3], {"highway": "motorway"}),
    (101, [10, 11], {"highway": "residential"}),
    (102, [11, 12], {"highway": "service"}),
    (103, [20, 21], {"highway": "footway"}),
    (104, [30, 31, 32, 30], {"highway": "tertiary", "junction": "roundabout"}),
]
ALL = "41.0,-8.8,41.2,-8.5"
NEAR = "41.09,-8.71,41.18,-8.59"  # every node, small enough for zoom 16


def write_osm(path: Path) -> Path:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    for node_id, (lat, lon) in NODES.items():
        lines.append(f'  <node id="{node_id}" version="1" lat="{lat}" lon="{lon}"/>')
    for way_id, refs, tags in WAYS:
        lines.append(f'  <way id="{way_id}" version="1">')
        lines += [f'    <nd ref="{ref}"/>' for ref in refs]
        lines += [f'    <tag k="{k}" v="{v}"/>' for k, v in tags.items()]
        lines.append("  </way>")
    lines.append("</osm>")
    path.write_text("\n".join(lines))
    return path


def lines_by_class(collection: dict[str, Any]) -> dict[str, list[list[list[float]]]]:
    assert collection["type"] == "FeatureCollection"
    out = {}
    for feature in collection["features"]:
        assert feature["geometry"]["type"] == "MultiLineString"
        out[feature["properties"]["class"]] = feature["geometry"]["coordinates"]
    return out


async def test_without_tiles_or_extract_the_page_draws_a_plain_background(
    settings: Settings,
) -> None:
    token = await make_token(settings, "viewer")
    async with web_client(settings, token) as http:
        async with http.get("/api/v1/basemap") as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "tiles": None,
                "roads": False,
                "center": None,
                "bounds": None,
                "attribution": None,
            }
        async with http.get("/api/v1/basemap/roads", params={"bbox": ALL, "zoom": "14"}) as resp:
            assert resp.status == 404
            assert "FLEETPULSE_OSM_PBF" in (await resp.json())["detail"]


async def test_configured_tiles_are_handed_to_the_page(settings: Settings) -> None:
    template = "https://{s}.tiles.example.org/{z}/{x}/{y}.png"
    settings = with_options(settings, basemap_url=template)
    token = await make_token(settings, "viewer")
    async with web_client(settings, token) as http, http.get("/api/v1/basemap") as resp:
        body = await resp.json()
    assert body["tiles"] == template
    assert body["roads"] is False


async def test_roads_come_from_the_extract_by_class_and_zoom(
    settings: Settings, tmp_path: Path
) -> None:
    settings = with_options(settings, osm_pbf=str(write_osm(tmp_path / "roads.osm")))
    token = await make_token(settings, "viewer")
    async with web_client(settings, token) as http:
        async with http.get("/api/v1/basemap") as resp:
            info = await resp.json()
        assert info["roads"] is True and info["tiles"] is None
        drivable = [NODES[n] for n in (1, 2, 3, 10, 11, 12, 30, 31, 32)]  # not the footway
        south, west = min(p[0] for p in drivable), min(p[1] for p in drivable)
        north, east = max(p[0] for p in drivable), max(p[1] for p in drivable)
        assert info["bounds"] == pytest.approx([south, west, north, east])
        assert info["center"] == pytest.approx([(south + north) / 2, (west + east) / 2])
        assert "OpenStreetMap" in info["attribution"]

        async with http.get("/api/v1/basemap/roads", params={"bbox": NEAR, "zoom": "16"}) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/geo+json"
            assert "max-age" in resp.headers["Cache-Control"]
            detailed = lines_by_class(await resp.json())
        # every drivable way, each drawn once, joined back into its polyline
        assert detailed["motorway"] == [[[-8.7, 41.1], [-8.69, 41.103], [-8.68, 41.102]]]
        assert detailed["residential"] == [[[-8.61, 41.15], [-8.61, 41.151]]]
        assert detailed["service"] == [[[-8.61, 41.151], [-8.611, 41.152]]]
        [roundabout] = detailed["tertiary"]
        assert len(roundabout) == 4 and roundabout[0] == roundabout[-1]
        assert set(detailed) == {"motorway", "residential", "service", "tertiary"}

        async with http.get("/api/v1/basemap/roads", params={"bbox": ALL, "zoom": "9"}) as resp:
            assert set(lines_by_class(await resp.json())) == {"motorway"}  # city streets hidden

        away = {"bbox": "41.140,-8.615,41.155,-8.605", "zoom": "16"}  # the two streets only
        async with http.get("/api/v1/basemap/roads", params=away) as resp:
            assert set(lines_by_class(await resp.json())) == {"residential", "service"}

        nowhere = {"bbox": "10.0,10.0,10.001,10.001", "zoom": "16"}
        async with http.get("/api/v1/basemap/roads", params=nowhere) as resp:
            assert (await resp.json())["features"] == []


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"zoom": "14"}, "query parameter 'bbox' is required"),
        ({"bbox": ALL}, "query parameter 'zoom' is required"),
        ({"bbox": "41,-8.8,41.2", "zoom": "14"}, "expected south,west,north,east"),
        ({"bbox": "41,-8.8,north,-8.5", "zoom": "14"}, "expected four numbers"),
        ({"bbox": "41,-8.8,nan,-8.5", "zoom": "14"}, "finite"),
        ({"bbox": "41.2,-8.8,41.0,-8.5", "zoom": "14"}, "south <= north"),
        ({"bbox": "41,170,41.2,-170", "zoom": "14"}, "antimeridian"),
        ({"bbox": ALL, "zoom": "23"}, "at most 22"),
        ({"bbox": ALL, "zoom": "x"}, "whole number"),
        ({"bbox": "40,-10,43,-6", "zoom": "16"}, "too large for zoom 16"),
    ],
)
async def test_bad_requests_are_precise_400s(
    settings: Settings, tmp_path: Path, params: dict[str, str], detail: str
) -> None:
    settings = with_options(settings, osm_pbf=str(write_osm(tmp_path / "roads.osm")))
    token = await make_token(settings, "viewer")
    async with (
        web_client(settings, token) as http,
        http.get("/api/v1/basemap/roads", params=params) as resp,
    ):
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
        assert detail in (await resp.json())["detail"]


async def test_an_unreadable_extract_is_a_503_naming_it(settings: Settings, tmp_path: Path) -> None:
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(b"this is not a protocol buffer")
    settings = with_options(settings, osm_pbf=str(broken))
    token = await make_token(settings, "viewer")
    async with web_client(settings, token) as http, http.get("/api/v1/basemap") as resp:
        assert resp.status == 503
        assert str(broken) in (await resp.json())["detail"]


async def test_the_base_map_needs_a_token(settings: Settings) -> None:
    async with web_client(settings) as http:
        for path in ("/api/v1/basemap", f"/api/v1/basemap/roads?bbox={ALL}&zoom=14"):
            async with http.get(path) as resp:
                assert resp.status == 401


@pytest.mark.skipif(
    not (porto.data_dir() / "porto/porto_2022-11.osm.pbf").is_file(),
    reason=f"porto/porto_2022-11.osm.pbf not found under {porto.data_dir()}"
    f" (set {porto.DATA_DIR_ENV} to the shared data folder)",
)
async def test_a_whole_city_stays_small_at_every_zoom(settings: Settings) -> None:
    """Porto's 23,191 ways: at city zoom only the main roads, simplified; zoomed in,
    every street but only in the box asked for; gzipped on the wire."""
    extract = porto.data_dir() / "porto/porto_2022-11.osm.pbf"
    settings = with_options(settings, osm_pbf=str(extract))
    token = await make_token(settings, "viewer")
    sizes = {}
    async with web_client(settings, token) as http:
        async with http.get("/api/v1/basemap") as resp:
            south, west, north, east = (await resp.json())["bounds"]
        city = f"{south},{west},{north},{east}"
        # a 1280x800 screen around Aliados at zoom 15
        street = "41.1425,-8.6220,41.1547,-8.5999"
        for name, bbox, zoom in (("city", city, 12), ("street", street, 15)):
            params = {"bbox": bbox, "zoom": str(zoom)}
            async with http.get(
                "/api/v1/basemap/roads",
                params=params,
                headers={"Accept-Encoding": "gzip"},
                auto_decompress=False,
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Encoding"] == "gzip"
                raw = await resp.read()
            body = gzip.decompress(raw)
            sizes[name] = (len(raw), len(body))
            classes = set(lines_by_class(json.loads(body)))
            if name == "city":
                assert "residential" not in classes and "primary" in classes
            else:
                assert {"residential", "primary"} <= classes
    assert sizes["city"][1] < 400_000, sizes
    assert sizes["street"][1] < 600_000, sizes
    assert all(wire < plain / 3 for wire, plain in sizes.values()), sizes
