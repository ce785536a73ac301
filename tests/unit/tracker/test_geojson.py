"""tracker.geojson: fences in and out of a GeoJSON FeatureCollection; errors that name
the feature and the field."""

from __future__ import annotations

import copy
import json
import re
from datetime import time
from typing import Any

import pytest

from tracker.fences import Fence, Schedule, Window
from tracker.geojson import FenceFormatError, dumps, loads, parse_feature, to_feature
from tracker.positions import DeviceKind
from tracker.shapes import AltitudeBand, Circle, Corridor, Datum, MultiPolygon, Polygon


def box(west: float, south: float, east: float, north: float) -> tuple[tuple[float, float], ...]:
    return ((west, south), (east, south), (east, north), (west, north), (west, south))


FENCES = [
    Fence(
        "baixa",
        "Baixa",
        Polygon(box(-8.62, 41.14, -8.60, 41.16), (box(-8.615, 41.145, -8.605, 41.155),)),
        tags=frozenset({"downtown", "slow"}),
        dwell_s=600.0,
    ),
    Fence(
        "parks",
        "Parks",
        MultiPolygon(
            (
                Polygon(box(-8.685, 41.164, -8.670, 41.172)),
                Polygon(box(-8.63, 41.146, -8.62, 41.15)),
            )
        ),
        groups=frozenset({"north", "south"}),
    ),
    Fence(
        "depot:1",
        "Depot",
        Circle(41.1488, -8.5856, 250.0),
        kinds=frozenset({DeviceKind.VEHICLE, DeviceKind.PHONE}),
        schedule=Schedule(
            "Europe/Lisbon",
            (
                Window(frozenset({0, 1, 2, 3, 4}), time(8), time(18, 30)),
                Window(frozenset({5}), time(22), time(6)),
            ),
        ),
    ),
    Fence(
        "boavista",
        "Avenida da Boavista",
        Corridor(((-8.6296, 41.158), (-8.64, 41.1603), (-8.689, 41.1694)), 60.0),
    ),
    Fence(
        "no-fly",
        "No-fly zone",
        Circle(41.2421, -8.6781, 1500.0),
        kinds=frozenset({DeviceKind.DRONE}),
        altitude=AltitudeBand(None, 120.0, Datum.TAKEOFF),
    ),
    Fence(
        "band",
        "",
        Polygon(box(0, 50, 1, 51)),
        altitude=AltitudeBand(10.5, 300.0, Datum.AMSL),
    ),
]


def test_export_then_import_round_trips() -> None:
    text = dumps(FENCES, indent=2)
    assert loads(text) == FENCES
    assert loads(text.encode()) == FENCES
    assert [parse_feature(to_feature(f)) for f in FENCES] == FENCES
    document = json.loads(text)
    assert document["type"] == "FeatureCollection"
    circle = document["features"][2]
    assert circle["geometry"] == {"type": "Point", "coordinates": [-8.5856, 41.1488]}
    assert circle["properties"]["radius_m"] == 250.0
    assert circle["properties"]["schedule"]["windows"][1] == {
        "days": [5],
        "start": "22:00",
        "end": "06:00",
    }


def test_minimal_features_and_ignored_extras() -> None:
    document = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [-8.61, 41.15, 87.0]},
                "properties": {"id": "a", "radius_m": 100, "stroke": "#ff0000"},
            }
        ],
    }
    (fence,) = loads(json.dumps(document))
    assert fence == Fence("a", "", Circle(41.15, -8.61, 100.0))
    assert fence.applies_to(None, frozenset(), __import__("datetime").datetime.now().astimezone())


def feature(**changes: Any) -> dict[str, Any]:
    base = copy.deepcopy(to_feature(FENCES[0]))
    for path, value in changes.items():
        target = base
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return base


def collection(*features: dict[str, Any]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (feature(properties__id=...), "feature 1: properties.id: required"),
        (feature(properties__id="has space"), "properties.id: 'has space' must match"),
        (feature(properties__id="x" * 65), "properties.id: 'xxxx"),
        (
            feature(properties__kinds=["vehicle", "truck"]),
            "feature 1 (id 'baixa'): properties.kinds[1]: 'truck' is not one of drone, phone,"
            " vehicle",
        ),
        (feature(properties__tags="a"), "properties.tags: expected a list, got a string"),
        (feature(properties__groups=[1]), "properties.groups[0]: expected a string, got a number"),
        (feature(properties__dwell_s=-1), "properties.dwell_s: must not be negative"),
        (feature(properties__dwell_s=True), "properties.dwell_s: expected a number, got a boolean"),
        (feature(properties__name=5), "properties.name: expected a string"),
        (feature(properties__radius_m=5), "properties.radius_m: only a Point takes radius_m"),
        (feature(geometry__type="Circle"), "geometry.type: 'Circle' is not one of"),
        (
            feature(geometry__coordinates=[[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]),
            "geometry.coordinates: invalid geometry: Self-intersection",
        ),
        (
            feature(geometry__coordinates=[[[0, 0], [1, 0], [1, 1], [0, 1]]]),
            "geometry.coordinates: exterior ring is not closed",
        ),
        (
            feature(geometry__coordinates=[[[0, 0], [1, 0], [200, 1], [0, 0]]]),
            "geometry.coordinates[0][2][0]: longitude 200 is outside [-180, 180]",
        ),
        (
            feature(geometry__coordinates=[[[0, 0], [1, 0], ["x", 1], [0, 0]]]),
            "geometry.coordinates[0][2][0]: expected a number, got a string",
        ),
        (feature(geometry__coordinates=[]), "geometry.coordinates: a polygon needs"),
        (feature(geometry=None), "geometry: expected an object, got null"),
        (feature(type="Thing"), "type: expected 'Feature'"),
        (
            feature(properties__altitude={"floor_m": 10}),
            "properties.altitude.datum: required",
        ),
        (
            feature(properties__altitude={"floor_m": 10, "datum": "agl"}),
            "properties.altitude.datum: 'agl' is not one of amsl, takeoff",
        ),
        (
            feature(properties__altitude={"floor_m": 100, "ceiling_m": 10, "datum": "amsl"}),
            "properties.altitude: floor_m 100.0 is above ceiling_m 10.0",
        ),
        (
            feature(properties__schedule={"tz": "Mars/Olympus", "windows": []}),
            "properties.schedule: unknown time zone 'Mars/Olympus'",
        ),
        (
            feature(
                properties__schedule={
                    "tz": "UTC",
                    "windows": [{"days": [7], "start": "08:00", "end": "09:00"}],
                }
            ),
            "properties.schedule.windows[0].days[0]: expected a weekday 0 (Monday) to 6, got 7",
        ),
        (
            feature(
                properties__schedule={
                    "tz": "UTC",
                    "windows": [{"days": [1], "start": "8am", "end": "09:00"}],
                }
            ),
            "properties.schedule.windows[0].start: expected a time as HH:MM, got '8am'",
        ),
        (
            feature(
                properties__schedule={
                    "tz": "UTC",
                    "windows": [{"days": [1], "start": "08:00", "end": "25:00"}],
                }
            ),
            "properties.schedule.windows[0].end: '25:00' is not a time of day",
        ),
    ],
)
def test_errors_name_the_feature_and_the_field(bad: dict[str, Any], message: str) -> None:
    good = to_feature(FENCES[1])
    with pytest.raises(FenceFormatError) as caught:
        loads(collection(good, bad))
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("geometry", "properties", "message"),
    [
        ({"type": "Point", "coordinates": [0, 0]}, {"id": "p"}, "properties.radius_m: a Point"),
        (
            {"type": "Point", "coordinates": [0, 0]},
            {"id": "p", "radius_m": 0},
            "properties.radius_m: must be positive",
        ),
        (
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            {"id": "l"},
            "properties.width_m: a LineString fence needs width_m",
        ),
        (
            {"type": "LineString", "coordinates": [[0, 0]]},
            {"id": "l", "width_m": 5},
            "geometry.coordinates: a corridor needs at least 2 points",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
            {"id": "l", "width_m": 5},
            "properties.width_m: only a LineString takes width_m",
        ),
    ],
)
def test_circle_and_corridor_properties(
    geometry: dict[str, Any], properties: dict[str, Any], message: str
) -> None:
    with pytest.raises(FenceFormatError, match="feature 0") as caught:
        loads(collection({"type": "Feature", "geometry": geometry, "properties": properties}))
    assert message in str(caught.value)


def test_duplicate_ids_and_document_errors() -> None:
    one = to_feature(FENCES[0])
    with pytest.raises(
        FenceFormatError, match=re.escape("feature 1 (id 'baixa'): properties.id: 'baixa'")
    ):
        loads(collection(one, one))
    with pytest.raises(FenceFormatError, match="not JSON"):
        loads("{")
    with pytest.raises(FenceFormatError, match="FeatureCollection"):
        loads(json.dumps(one))
    with pytest.raises(FenceFormatError, match="features: expected a list"):
        loads(json.dumps({"type": "FeatureCollection", "features": {}}))
    with pytest.raises(FenceFormatError, match=r"^feature: expected an object, got a list$"):
        parse_feature([])


def test_parse_feature_names_the_index_it_is_given() -> None:
    with pytest.raises(FenceFormatError, match=r"^feature 7 \(id 'baixa'\): properties\.tags"):
        parse_feature(feature(properties__tags=3), 7)
