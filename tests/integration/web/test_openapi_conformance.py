"""Every documented GET route answers as the OpenAPI document says: its status codes,
media types and bodies (validated with jsonschema against the served document).

Two independent walks over the served app with real data behind it:
- our own walker calls each GET route with valid parameters (every value of each enum
  parameter, so every history format), without a token and with a bad parameter;
- schemathesis generates requests from the document (its examples, coverage and
  fuzzing phases) and checks status codes, content types, response schemas, that no
  answer is a 5xx and that invalid input is refused.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import redis.asyncio as aioredis
from aiohttp import ClientSession

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import (
    eventually,
    make_settings,
    make_token,
    running_ingester,
    running_tracker,
    web_client,
)
from tests.publisher import publish
from tracker.events import Event, EventKind
from tracker.redis_live import RedisLive
from tracker.store import save_events

PORTO = (41.1496, -8.6109)
JSON_TYPES = {"application/json", "application/problem+json", "application/geo+json"}
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Test cases per operation and phase: enough to reach every parameter, seconds in all.
# A deeper fuzz, locally: FLEETPULSE_SCHEMATHESIS_EXAMPLES=500 FLEETPULSE_SCHEMATHESIS_SEED=7
SCHEMATHESIS_EXAMPLES = int(os.environ.get("FLEETPULSE_SCHEMATHESIS_EXAMPLES", "12"))
SCHEMATHESIS_SEED = os.environ.get("FLEETPULSE_SCHEMATHESIS_SEED", "1")
SCHEMATHESIS_TIMEOUT_S = 300
# The read side of devices, history and events, and the docs page: all GET routes.
SCHEMATHESIS_PATHS = os.environ.get(
    "FLEETPULSE_SCHEMATHESIS_PATHS", "^/api/(docs|v1/devices|v1/events)"
)


async def seed(settings: Settings) -> dict[str, str]:
    """A device with a stored track and live state, and stored events; returns valid
    values for parameters by name."""
    settings = make_settings(
        database_url=settings.database_url,
        mqtt_url=settings.mqtt_url,
        redis_url=settings.redis_url,
        reorder_window="0",
    )
    t0 = int(time.time() * 1000) - 120_000
    track = [
        {"ts": t0 + k * 1000, "lat": PORTO[0] + k * 1e-5, "lon": PORTO[1], "speed": 4.0}
        for k in range(30)
    ]
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        async with running_ingester(settings), running_tracker(settings):
            await publish(settings.mqtt_url, [("fleet/van-1/telemetry", track)])
            await eventually(lambda: RedisLive(client).device("van-1"))
    finally:
        await client.aclose()
    start = datetime.fromtimestamp(t0 / 1000, tz=UTC)
    conn = await connect(settings.database_url)
    try:
        await save_events(
            conn,
            [
                Event("van-1", EventKind.ENTER, start + timedelta(seconds=5), fence_id="depot"),
                Event("van-1", EventKind.EXIT, start + timedelta(seconds=25), fence_id="depot"),
            ],
        )
    finally:
        await conn.close()
    return {
        "device_id": "van-1",
        "from": start.isoformat(),
        "to": (start + timedelta(minutes=5)).isoformat(),
        "device": "van-1",
        "fence": "depot",
    }


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    datetime.fromisoformat(value)
    return True


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_date_time)


def validate(document: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    """Validate against a schema of the document: its `#/components/...` references
    resolve because the components ride along at the root."""
    rooted = {"allOf": [schema], "components": document["components"]}
    errors = sorted(
        jsonschema.Draft202012Validator(rooted, format_checker=FORMATS).iter_errors(value),
        key=str,
    )
    assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def check_body(
    document: dict[str, Any], documented: dict[str, Any], content_type: str, body: bytes, where: str
) -> None:
    """The body fits the documented response; a response documented without content
    constrains nothing."""
    content = documented.get("content")
    if not content:
        return
    by_type = {media_type(k): v for k, v in content.items()}
    kind = media_type(content_type)
    assert kind in by_type, f"{where}: {kind} is not among the documented {sorted(by_type)}"
    schema = by_type[kind].get("schema", {})
    if kind in JSON_TYPES:
        validate(document, schema, json.loads(body), where)
    elif kind == "application/x-ndjson":
        for line in body.splitlines():
            validate(document, {"$ref": "#/components/schemas/HistoryFix"}, json.loads(line), where)
    elif kind == "application/gpx+xml":
        assert ET.fromstring(body).tag == "{http://www.topografix.com/GPX/1/1}gpx", where
    elif kind == "text/csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows and all(len(r) == len(rows[0]) for r in rows), where
    elif kind == "text/html":
        assert b"<html" in body.lower(), where


def variants(operation: dict[str, Any], known: dict[str, str]) -> Iterator[dict[str, str]]:
    """Query values for the operation: the required ones alone, then each value of each
    enum parameter in turn."""
    base = {
        p["name"]: known.get(p["name"], "no-such-id")
        for p in operation.get("parameters", [])
        if p["in"] == "query" and p["required"]
    }
    yield base
    for p in operation.get("parameters", []):
        if p["in"] == "query" and not p["required"]:
            for value in p["schema"].get("enum", []):
                yield {**base, p["name"]: str(value)}
            if p["name"] in known:
                yield {**base, p["name"]: known[p["name"]]}


def path_of(path: str, known: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: known.get(m.group(1), "no-such-id"), path)


async def call(
    http: ClientSession,
    document: dict[str, Any],
    url: str,
    operation: dict[str, Any],
    query: dict[str, str],
    headers: dict[str, str],
) -> int:
    where = f"GET {url} {query}"
    async with http.get(url, params=query, headers=headers) as resp:
        body = await resp.read()
        status = str(resp.status)
        documented = operation["responses"]
        assert status in documented, f"{where}: status {status} is not documented: {body[:300]!r}"
        check_body(document, documented[status], resp.headers.get("Content-Type", ""), body, where)
        return resp.status


ROLE = re.compile(r"the (\w+) role")


async def test_every_documented_get_route_answers_as_documented(settings: Settings) -> None:
    known = await seed(settings)
    tokens = {role: await make_token(settings, role) for role in ("viewer", "admin")}
    async with web_client(settings) as http:
        async with http.get("/api/openapi.json") as resp:
            document = await resp.json()
        gets = [
            (path, methods["get"])
            for path, methods in document["paths"].items()
            if "get" in methods
        ]
        assert {p for p, _ in gets} >= {
            "/api/docs",
            "/api/v1/devices",
            "/api/v1/devices/{device_id}",
            "/api/v1/devices/{device_id}/live",
            "/api/v1/devices/{device_id}/history",
            "/api/v1/events",
        }
        answered: dict[str, set[int]] = {}
        for path, operation in gets:
            described = ROLE.search(operation.get("description", ""))
            role = described.group(1) if described else None
            token = tokens["admin" if role in ("dispatcher", "admin") else "viewer"]
            auth = {"Authorization": f"Bearer {token}"}
            url = path_of(path, known)
            for query in variants(operation, known):
                status = await call(http, document, url, operation, query, auth)
                answered.setdefault(path, set()).add(status)
            if "security" in operation:
                assert await call(http, document, url, operation, {}, {}) == 401
                bad = {"Authorization": "Bearer fpt_unknown"}
                assert await call(http, document, url, operation, {}, bad) == 401
                if role in ("dispatcher", "admin"):
                    viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
                    assert await call(http, document, url, operation, {}, viewer) == 403
            names = {p["name"] for p in operation.get("parameters", [])}
            if "limit" in names:
                query = {**next(variants(operation, known)), "limit": "-1"}
                assert await call(http, document, url, operation, query, auth) == 400
        # Ours answer 200 with the seeded data, in every format.
        for path in (
            "/api/docs",
            "/api/v1/devices",
            "/api/v1/devices/{device_id}",
            "/api/v1/devices/{device_id}/live",
            "/api/v1/devices/{device_id}/history",
            "/api/v1/events",
        ):
            assert answered[path] == {200}, (path, answered[path])


async def test_schemathesis_finds_no_nonconformance(settings: Settings, tmp_path: Path) -> None:
    known = await seed(settings)
    token = await make_token(settings, "viewer")
    async with web_client(settings):
        # Examples steer generation to the seeded device and times, so that requests
        # reach the routes' success paths and not only their 404s.
        base = settings.web_base_url
        async with ClientSession() as http, http.get(f"{base}/api/openapi.json") as resp:
            document = await resp.json()
        for methods in document["paths"].values():
            for p in methods.get("get", {}).get("parameters", []):
                if p["name"] in known and p["name"] in ("device_id", "from", "to"):
                    p["schema"] = {**p["schema"], "examples": [known[p["name"]]]}
        spec = tmp_path / "openapi.json"
        spec.write_text(json.dumps(document))
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            str(spec),
            "--url",
            base,
            "--header",
            f"Authorization: Bearer {token}",
            "--include-path-regex",
            SCHEMATHESIS_PATHS,
            "--phases",
            "examples,coverage,fuzzing",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,negative_data_rejection,missing_required_header,"
            "ignored_auth",
            "--max-examples",
            str(SCHEMATHESIS_EXAMPLES),
            "--seed",
            SCHEMATHESIS_SEED,
            "--workers",
            "1",
            "--no-shrink",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
        output, _ = await asyncio.wait_for(process.communicate(), SCHEMATHESIS_TIMEOUT_S)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-8000:]
    assert re.search(r"\b[1-9]\d* passed\b", text), text[-3000:]


# Every operation, writes included, with an admin token (admin may call everything): a
# fixed seed and a bounded number of cases per operation keep it CI-sized (~40 s).
SCHEMATHESIS_ALL_EXAMPLES = int(os.environ.get("FLEETPULSE_SCHEMATHESIS_ALL_EXAMPLES", "5"))
LOOPBACK_URL = {"type": "string", "pattern": r"^http://127\.0\.0\.1:9/[a-z]*$"}
PARCEL = {
    "id": "parcel-1",
    "vehicle_id": "van-1",
    "destination": {"lat": PORTO[0], "lon": PORTO[1]},
    "window_start": "2026-11-27T09:00:00+00:00",
    "window_end": "2026-11-27T11:00:00+00:00",
}
DEPOT = {
    "type": "Feature",
    "properties": {"name": "depot", "radius_m": 100},
    "geometry": {"type": "Point", "coordinates": [PORTO[1], PORTO[0]]},
}


async def existing_resources(http: ClientSession) -> dict[str, str]:
    """A fence, a delivery with its tracking link, and a webhook, made through the API;
    returns their ids by path-parameter name, so that generated requests reach the
    routes' logic and not only their 404s."""
    async with http.put("/api/v1/geofences/depot", json=DEPOT) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post("/api/v1/deliveries", json=PARCEL) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post("/api/v1/deliveries/parcel-1/token") as resp:
        assert resp.status == 200, await resp.text()
        tracking = (await resp.json())["tracking_token"]
    hook = {"url": "http://127.0.0.1:9/hook", "description": "conformance"}
    async with http.post("/api/v1/webhooks", json=hook) as resp:
        assert resp.status == 201, await resp.text()
        webhook_id = (await resp.json())["id"]
    return {
        "device_id": "van-1",
        "fence_id": "depot",
        "delivery_id": "parcel-1",
        "token": tracking,
        "webhook_id": webhook_id,
    }


async def test_schemathesis_every_operation_with_an_admin_token(
    settings: Settings, tmp_path: Path
) -> None:
    """Writes too: POST, PUT, PATCH and DELETE get generated bodies, valid and invalid;
    every answer must be documented and none a 5xx."""
    token = await make_token(settings, "admin")
    async with web_client(settings, token) as http:
        known = await existing_resources(http)
        async with http.get("/api/openapi.json") as resp:
            document = await resp.json()
        for methods in document["paths"].values():
            for operation in methods.values():
                for p in operation.get("parameters", []):
                    if p["in"] == "path" and p["name"] in known:
                        p["schema"] = {**p["schema"], "examples": [known[p["name"]]]}
        # The app sends events to subscribed URLs: generated subscriptions must point
        # here, never at an address on the network.
        for name in ("NewWebhook", "WebhookChange"):
            document["components"]["schemas"][name]["properties"]["url"] = LOOPBACK_URL
        spec = tmp_path / "openapi.json"
        spec.write_text(json.dumps(document))
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            str(spec),
            "--url",
            settings.web_base_url,
            "--header",
            f"Authorization: Bearer {token}",
            "--phases",
            "examples,coverage,fuzzing",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            str(SCHEMATHESIS_ALL_EXAMPLES),
            "--seed",
            SCHEMATHESIS_SEED,
            "--workers",
            "1",
            "--no-shrink",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
        output, _ = await asyncio.wait_for(process.communicate(), SCHEMATHESIS_TIMEOUT_S)
    text = output.decode(errors="replace")
    conn = await connect(settings.database_url)
    try:
        cur = await conn.execute("SELECT url FROM webhook_subscriptions")
        urls = [str(url) for (url,) in await cur.fetchall()]
    finally:
        await conn.close()
    assert all(urlsplit(url).hostname == "127.0.0.1" for url in urls), urls
    assert process.returncode == 0, text[-12000:]
    operations = sum(len(m) for m in document["paths"].values())
    assert re.search(rf"Tested: {operations}\b", text), text[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", text)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 0, text[-3000:]
