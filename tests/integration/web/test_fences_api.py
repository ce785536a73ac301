"""Geofences over REST against the running app: GeoJSON in and out, roles, audit rows,
precise 4xx for bad GeoJSON, and a fence made over the API firing in a running tracker."""

from __future__ import annotations

import time
from typing import Any

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import (
    eventually,
    make_token,
    running_ingester,
    running_tracker,
    web_client,
    with_options,
)
from tests.integration.web.rest_support import audit_rows, bearer, token_id
from tests.publisher import publish
from tracker import store

# Porto: Avenida dos Aliados, a square with a hole, a circle and a corridor near it.
SQUARE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {
        "type": "Polygon",
        "coordinates": [
            [
                [-8.615, 41.145],
                [-8.607, 41.145],
                [-8.607, 41.152],
                [-8.615, 41.152],
                [-8.615, 41.145],
            ],
            [[-8.612, 41.148], [-8.610, 41.148], [-8.610, 41.149], [-8.612, 41.148]],
        ],
    },
    "properties": {
        "id": "aliados",
        "name": "Aliados",
        "tags": ["centre", "pedestrian"],
        "kinds": ["drone", "vehicle"],
        "groups": ["depot-north"],
        "dwell_s": 120.0,
        "altitude": {"floor_m": None, "ceiling_m": 120.0, "datum": "takeoff"},
        "schedule": {
            "tz": "Europe/Lisbon",
            "windows": [{"days": [0, 1, 2, 3, 4], "start": "07:00", "end": "20:30"}],
        },
    },
}
CIRCLE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [-8.611, 41.1486]},
    "properties": {"id": "clerigos", "name": "Clérigos", "radius_m": 150.0},
}
CORRIDOR: dict[str, Any] = {
    "type": "Feature",
    "geometry": {"type": "LineString", "coordinates": [[-8.62, 41.14], [-8.60, 41.15]]},
    "properties": {"id": "ribeira.route", "name": "Ribeira", "width_m": 40.0},
}


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


async def test_what_is_put_is_what_is_got_and_every_change_is_audited(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher", name="dispatch")
    actor = await token_id(settings, dispatcher)
    async with web_client(settings, dispatcher) as http:
        async with http.put("/api/v1/geofences/aliados", json=SQUARE) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == SQUARE
        async with http.get("/api/v1/geofences/aliados") as resp:
            assert resp.status == 200
            assert await resp.json() == SQUARE
        # properties.id may be left out: the path names the fence.
        circle = {**CIRCLE, "properties": {k: v for k, v in CIRCLE["properties"].items()}}
        del circle["properties"]["id"]
        async with http.put("/api/v1/geofences/clerigos", json=circle) as resp:
            assert resp.status == 200
            assert await resp.json() == CIRCLE
        renamed = {**CIRCLE, "properties": {**CIRCLE["properties"], "name": "Torre"}}
        async with http.post("/api/v1/geofences", json=collection(renamed, CORRIDOR)) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"created": ["ribeira.route"], "replaced": ["clerigos"]}
        async with http.get("/api/v1/geofences") as resp:
            assert resp.status == 200
            assert await resp.json() == collection(SQUARE, renamed, CORRIDOR)
        async with http.delete("/api/v1/geofences/clerigos") as resp:
            assert resp.status == 204
        async with http.get("/api/v1/geofences/clerigos") as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"
            assert "no fence 'clerigos'" in (await resp.json())["detail"]
        async with http.delete("/api/v1/geofences/clerigos") as resp:
            assert resp.status == 404
    rows = await audit_rows(settings, "fence")
    assert [(a, action, target) for a, action, target, _ in rows] == [
        (actor, "fence.create", "aliados"),
        (actor, "fence.create", "clerigos"),
        (actor, "fence.replace", "clerigos"),
        (actor, "fence.create", "ribeira.route"),
        (actor, "fence.delete", "clerigos"),
    ]
    assert rows[2][3]["feature"]["properties"]["name"] == "Torre"
    assert rows[4][3]["feature"] == renamed  # what was deleted is kept


async def test_an_editors_extra_properties_are_not_kept(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    styled = {**CIRCLE, "properties": {**CIRCLE["properties"], "stroke": "#ff0000"}}
    async with web_client(settings, dispatcher) as http:
        async with http.put("/api/v1/geofences/clerigos", json=styled) as resp:
            assert resp.status == 200
            assert await resp.json() == CIRCLE
        async with http.get("/api/v1/geofences/clerigos") as resp:
            assert await resp.json() == CIRCLE


async def test_viewers_read_dispatchers_change(settings: Settings) -> None:
    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher")
    async with web_client(settings) as http:
        async with http.put(
            "/api/v1/geofences/clerigos", json=CIRCLE, headers=bearer(dispatcher)
        ) as resp:
            assert resp.status == 200
        as_viewer = bearer(viewer)
        async with http.get("/api/v1/geofences", headers=as_viewer) as resp:
            assert resp.status == 200
            assert len((await resp.json())["features"]) == 1
        async with http.put("/api/v1/geofences/x", json=CIRCLE, headers=as_viewer) as resp:
            assert resp.status == 403
            assert "dispatcher role" in (await resp.json())["detail"]
        async with http.post(
            "/api/v1/geofences", json=collection(CORRIDOR), headers=as_viewer
        ) as resp:
            assert resp.status == 403
        async with http.delete("/api/v1/geofences/clerigos", headers=as_viewer) as resp:
            assert resp.status == 403
        async with http.get("/api/v1/geofences") as resp:
            assert resp.status == 401
        async with http.get("/api/v1/geofences/clerigos") as resp:
            assert resp.status == 401
    assert await audit_rows(settings, "fence") == [
        (await token_id(settings, dispatcher), "fence.create", "clerigos", {"feature": CIRCLE})
    ]


async def test_bad_geojson_is_a_4xx_naming_the_feature_and_field(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    bad_lat = {
        **CIRCLE,
        "geometry": {"type": "Point", "coordinates": [-8.611, 141.0]},
    }
    no_radius = {**CIRCLE, "properties": {"id": "clerigos"}}
    wrong_kind = {**CORRIDOR, "properties": {**CORRIDOR["properties"], "kinds": ["truck"]}}
    cases: list[tuple[str, str, Any, int, str]] = [
        ("PUT", "clerigos", bad_lat, 422, "geometry.coordinates[1]: latitude 141 is outside"),
        ("PUT", "clerigos", no_radius, 422, "properties.radius_m: a Point fence needs radius_m"),
        ("PUT", "other", CIRCLE, 422, "properties.id 'clerigos' differs from the path's 'other'"),
        ("PUT", "clerigos", [1, 2], 422, "expected an object, got a list"),
        ("PUT", "clerigos", {"type": "Feature"}, 422, "properties: expected an object"),
        ("PUT", "bad id!", {**CIRCLE, "properties": {"radius_m": 5}}, 422, "must match"),
        (
            "PUT",
            "clerigos",
            {**CIRCLE, "properties": {**CIRCLE["properties"], "name": "a\x00b"}},
            422,
            "NUL",
        ),
        (
            "POST",
            "",
            collection(SQUARE, wrong_kind),
            422,
            "feature 1 (id 'ribeira.route'): properties.kinds[0]: 'truck' is not one of",
        ),
        ("POST", "", collection(CIRCLE, CIRCLE), 422, "'clerigos' is also feature 0's id"),
        ("POST", "", CIRCLE, 422, "expected a GeoJSON FeatureCollection"),
        ("POST", "", {"type": "FeatureCollection", "features": 3}, 422, "features: expected"),
    ]
    async with web_client(settings, dispatcher) as http:
        for method, fence_id, document, status, detail in cases:
            url = f"/api/v1/geofences/{fence_id}" if fence_id else "/api/v1/geofences"
            async with http.request(method, url, json=document) as resp:
                assert resp.status == status, (method, fence_id, await resp.text())
                assert resp.content_type == "application/problem+json"
                assert detail in (await resp.json())["detail"], detail
        for raw, detail in ((b"", "a GeoJSON body is required"), (b"{", "not valid JSON")):
            async with http.put("/api/v1/geofences/clerigos", data=raw) as resp:
                assert resp.status == 400
                assert detail in (await resp.json())["detail"]
        async with http.put("/api/v1/geofences/clerigos", data=b"[1e999]") as resp:
            assert resp.status == 422
        async with http.get("/api/v1/geofences/bad%00id") as resp:
            assert resp.status == 404
        # All or nothing: the good first feature of a refused collection was not stored.
        async with http.get("/api/v1/geofences") as resp:
            assert (await resp.json())["features"] == []
    assert await audit_rows(settings, "fence") == []


async def test_a_fence_put_over_the_api_fires_in_a_running_tracker(settings: Settings) -> None:
    # No reorder wait, so that the tracker decides on each fix as it comes.
    settings = with_options(settings, reorder_window="0")
    dispatcher = await make_token(settings, "dispatcher")
    lat, lon = 41.1486, -8.6110
    t0 = int(time.time() * 1000) - 60_000
    track = [lat - 0.006 + k * 0.002 for k in range(4)]  # ~220 m steps: outside, then inside
    async with (
        running_ingester(settings),
        running_tracker(settings) as tracker,
        web_client(settings, dispatcher) as http,
    ):
        async with http.put("/api/v1/geofences/clerigos", json=CIRCLE) as resp:
            assert resp.status == 200
        await eventually(lambda: len(tracker.index) == 1)
        await publish(
            settings.mqtt_url,
            [
                ("fleet/van-1/telemetry", {"ts": t0 + k * 10_000, "lat": y, "lon": lon})
                for k, y in enumerate(track)
            ],
        )
        enter = await eventually(lambda: _events(settings, "enter"))
    assert [(e.device_id, e.fence_id) for e in enter] == [("van-1", "clerigos")]
    assert round(enter[0].ts.timestamp() * 1000) == t0 + 30_000


async def _events(settings: Settings, kind: str) -> list[Any]:
    conn = await connect(settings.database_url, autocommit=False)
    try:
        return [e async for e in store.events(conn) if e.kind.value == kind]
    finally:
        await conn.close()
