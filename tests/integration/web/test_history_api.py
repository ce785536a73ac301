"""GET /api/v1/devices/{id}/history: fixes published over MQTT, stored by the real
ingester, read back in every format, page by page, streamed."""

from __future__ import annotations

import csv
import io
import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import ClientSession

from fleetpulse.settings import Settings
from tests.conftest import eventually, make_token, running_ingester, web_client
from tests.publisher import publish

PORTO = (41.1496, -8.6109)
GPX_NS = {"g": "http://www.topografix.com/GPX/1/1"}
# Fixes per MQTT message: an offline buffer, well under the payload limit.
PER_MESSAGE = 1_000


def t(ms: int) -> str:
    return quote(datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat())


async def store_track(settings: Settings, device: str, t0: int, n: int, step_ms: int) -> None:
    """`n` fixes of `device` from `t0` every `step_ms`, with `seq` numbering them."""
    fixes = [
        {
            "ts": t0 + k * step_ms,
            "lat": PORTO[0] + k * 1e-6,
            "lon": PORTO[1],
            "seq": k,
            "speed": 5.0,
            **({"alt": 90.0} if k % 2 else {}),
        }
        for k in range(n)
    ]
    messages = [
        (f"fleet/{device}/telemetry", fixes[i : i + PER_MESSAGE]) for i in range(0, n, PER_MESSAGE)
    ]
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, messages)
        await eventually(lambda: ingester.stats.counts["acked"] >= len(messages))


async def pages(http: ClientSession, url: str) -> list[tuple[dict[str, Any], bytes, str]]:
    """Every page, following Link rel=next: (headers, body, content type)."""
    out = []
    next_url: str | None = url
    while next_url is not None:
        async with http.get(next_url) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Transfer-Encoding"] == "chunked"
            body = await resp.read()
            link = resp.links.get("next")
            out.append((dict(resp.headers), body, resp.content_type))
        next_url = None if link is None else str(link["url"])
    return out


async def test_a_long_range_streams_page_by_page_with_every_fix_once(settings: Settings) -> None:
    n, t0 = 20_000, int(time.time() * 1000) - 3_600_000
    await store_track(settings, "van-1", t0, n, step_ms=100)
    token = await make_token(settings, "viewer")
    url = f"/api/v1/devices/van-1/history?from={t(t0)}&to={t(t0 + n * 100)}&limit=7000"
    async with web_client(settings, token) as http:
        got = await pages(http, url + "&format=ndjson")
        assert len(got) == 3
        seqs = [json.loads(line)["seq"] for _, body, _ in got for line in body.splitlines()]
        assert seqs == list(range(n))

        # The json format carries the cursor last, and it continues where the page ended.
        got = await pages(http, url)
        documents = [json.loads(body) for _, body, _ in got]
        assert [len(d["fixes"]) for d in documents] == [7000, 7000, 6000]
        assert [f["seq"] for d in documents for f in d["fixes"]] == list(range(n))
        assert documents[-1]["next"] is None
        first = documents[0]
        assert datetime.fromisoformat(first["next"]) == datetime.fromisoformat(
            first["fixes"][-1]["ts"]
        )
        async with http.get(url + "&after=" + quote(first["next"])) as resp:
            assert (await resp.json())["fixes"][0]["seq"] == 7000

        # A page of the default size, then a range cut short by `to`.
        async with http.get(url.replace("&limit=7000", "")) as resp:
            page = await resp.json()
            assert len(page["fixes"]) == 10_000 and page["next"] is not None
            assert 'rel="next"' in resp.headers["Link"]
        async with http.get(
            f"/api/v1/devices/van-1/history?from={t(t0 + 1000)}&to={t(t0 + 2000)}"
        ) as resp:
            page = await resp.json()
            assert [f["seq"] for f in page["fixes"]] == list(range(10, 20))
            assert page["next"] is None and "Link" not in resp.headers


async def test_every_format_parses_and_pages_cover_the_range(settings: Settings) -> None:
    n, t0 = 25, int(time.time() * 1000) - 600_000
    await store_track(settings, "van-2", t0, n, step_ms=1000)
    token = await make_token(settings, "viewer")
    base = f"/api/v1/devices/van-2/history?from={t(t0)}&to={t(t0 + n * 1000)}&limit=10"
    times = [datetime.fromtimestamp((t0 + k * 1000) / 1000, tz=UTC) for k in range(n)]
    async with web_client(settings, token) as http:
        got = await pages(http, base + "&format=csv")
        assert {c for _, _, c in got} == {"text/csv"}
        rows = [r for _, body, _ in got for r in csv.DictReader(io.StringIO(body.decode()))]
        assert [int(r["seq"]) for r in rows] == list(range(n))
        assert [datetime.fromisoformat(r["ts"]) for r in rows] == times
        assert rows[0]["alt"] == "" and float(rows[1]["alt"]) == 90.0

        got = await pages(http, base + "&format=gpx")
        assert {c for _, _, c in got} == {"application/gpx+xml"}
        points = []
        for _, body, _ in got:
            root = ET.fromstring(body)
            assert root.get("version") == "1.1"
            points.extend(root.findall("g:trk/g:trkseg/g:trkpt", GPX_NS))
        assert len(points) == n
        assert [
            datetime.fromisoformat(p.findtext("g:time", namespaces=GPX_NS) or "") for p in points
        ] == times
        assert float(points[3].get("lat", "nan")) == PORTO[0] + 3e-6
        assert points[1].findtext("g:ele", namespaces=GPX_NS) == "90.0"

        got = await pages(http, base + "&format=geojson")
        assert {c for _, _, c in got} == {"application/geo+json"}
        features = [f for _, body, _ in got for f in json.loads(body)["features"]]
        assert [f["properties"]["seq"] for f in features] == list(range(n))
        assert features[1]["geometry"] == {
            "type": "Point",
            "coordinates": [PORTO[1], PORTO[0] + 1e-6, 90.0],
        }

        got = await pages(http, base + "&format=geojson&geometry=line")
        lines = [json.loads(body)["features"][0] for _, body, _ in got]
        assert [f["geometry"]["type"] for f in lines] == ["LineString"] * 3
        assert [f["properties"]["fixes"] for f in lines] == [10, 10, 5]

        got = await pages(http, base + "&format=json")
        assert {c for _, _, c in got} == {"application/json"}
        assert len(got) == 3


async def test_bad_requests_are_precise_problems(settings: Settings) -> None:
    t0 = int(time.time() * 1000) - 600_000
    await store_track(settings, "van-3", t0, 3, step_ms=1000)
    token = await make_token(settings, "viewer")
    ok = f"from={t(t0)}&to={t(t0 + 5000)}"
    base = "/api/v1/devices/van-3/history?"
    async with web_client(settings, token) as http:
        for query, words in [
            (f"to={t(t0)}", "'from' is required"),
            (f"from={t(t0)}", "'to' is required"),
            (f"from={t(t0 + 5000)}&to={t(t0)}", "must be before"),
            (f"from={t(t0)}&to={t(t0)}", "must be before"),
            (f"from=yesterday&to={t(t0)}", "RFC 3339"),
            (ok + "&format=kml", "json, ndjson, geojson, gpx, csv"),
            (ok + "&geometry=polygon", "points, line"),
            (ok + "&limit=0", "at least 1"),
            (ok + "&limit=100001", "at most 100000"),
            (ok + "&after=soon", "'after'"),
            (ok + "&format=", "'format' is empty"),
        ]:
            async with http.get(base + query) as resp:
                assert resp.status == 400, query
                assert resp.content_type == "application/problem+json"
                assert words in (await resp.json())["detail"], query
        async with http.get("/api/v1/devices/nobody/history?" + ok) as resp:
            assert resp.status == 404
            assert "no device 'nobody'" in (await resp.json())["detail"]
        # The last representable time as a cursor: an empty page, not an overflow.
        async with http.get(base + ok + "&after=9999-12-31T23:59:59.999999Z") as resp:
            assert resp.status == 200
            assert (await resp.json())["fixes"] == []
        async with http.get(base + ok + "&after=" + quote(times_of(t0)[0])) as resp:
            assert [f["seq"] for f in (await resp.json())["fixes"]] == [1, 2]
        # Epoch milliseconds work as well as RFC 3339.
        async with http.get(f"{base}from={t0}&to={t0 + 2000}&format=ndjson") as resp:
            assert [json.loads(line)["seq"] for line in (await resp.read()).splitlines()] == [0, 1]

    async with web_client(settings) as anonymous:
        async with anonymous.get(base + ok) as resp:
            assert resp.status == 401
        async with anonymous.get(base + ok, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401


def times_of(t0: int) -> list[str]:
    return [
        (datetime.fromtimestamp(t0 / 1000, tz=UTC) + timedelta(seconds=k)).isoformat()
        for k in range(3)
    ]
