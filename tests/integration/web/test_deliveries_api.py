"""Deliveries over REST against the running app: create (tracking link once), list, get
with the latest ETA, last-minute changes, cancel, report, a new tracking link; roles,
audit rows, and precise 4xx for bad bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from aiohttp import ClientSession

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import eventually, make_token, web_client
from tests.integration.web.rest_support import audit_rows, bearer, token_id
from tracker import delivery_store, store
from tracker.redis_live import EVENTS_CHANNEL

NOW = datetime.now(UTC).replace(microsecond=0)
ALIADOS = {"lat": 41.1486, "lon": -8.611}
ZONE = {
    "type": "Polygon",
    "coordinates": [
        [[-8.6115, 41.1483], [-8.6105, 41.1483], [-8.6105, 41.1489], [-8.6115, 41.1483]]
    ],
}


def new(delivery_id: str, vehicle_id: str = "van-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "vehicle_id": vehicle_id,
        "destination": ALIADOS,
        "window_start": (NOW - timedelta(hours=1)).isoformat(),
        "window_end": (NOW + timedelta(hours=1)).isoformat(),
        **extra,
    }


async def create(http: ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post("/api/v1/deliveries", json=body) as resp:
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
    return created


async def opens(settings: Settings, token: str) -> str | None:
    """Which delivery a customer's tracking token opens now."""
    conn = await connect(settings.database_url)
    try:
        found = await delivery_store.by_token(conn, token, datetime.now(UTC))
    finally:
        await conn.close()
    return None if found is None else found.id


async def test_create_answers_the_tracking_link_once_and_get_shows_it(
    settings: Settings,
) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    async with web_client(settings, dispatcher) as http:
        created = await create(
            http,
            new(
                "parcel-1",
                drop_radius_m=30,
                service_type="same_day",
                sequence=2,
                service_s=90,
            ),
        )
        tracking = created["tracking"]
        token = tracking["tracking_token"]
        assert tracking["tracking_url"] == f"{settings.web_base_url}/track/{token}"
        assert tracking["delivery_id"] == "parcel-1"
        expires = NOW + timedelta(hours=1) + delivery_store.TOKEN_LIFETIME_AFTER_WINDOW
        assert datetime.fromisoformat(tracking["token_expires_at"]) == expires
        expected = {
            "id": "parcel-1",
            "vehicle_id": "van-1",
            "destination": ALIADOS,
            "drop_radius_m": 30.0,
            "drop_zone": None,
            "window_start": (NOW - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "window_end": (NOW + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "service_type": "same_day",
            "sequence": 2,
            "service_s": 90.0,
            "state": "scheduled",
            "late_risk": False,
            "eta": None,
        }
        assert created["delivery"] == expected
        async with http.get("/api/v1/deliveries/parcel-1") as resp:
            assert resp.status == 200
            shown = await resp.json()
        assert shown == expected
        assert token not in json.dumps(shown)  # shown once, at creation
        assert await opens(settings, token) == "parcel-1"
        # The same id again is a conflict, and changes nothing.
        async with http.post("/api/v1/deliveries", json=new("parcel-1", "van-9")) as resp:
            assert resp.status == 409
            assert "exists already" in (await resp.json())["detail"]
        async with http.get("/api/v1/deliveries/parcel-1") as resp:
            assert (await resp.json())["vehicle_id"] == "van-1"
        # A polygon drop zone instead of the radius.
        zoned = await create(http, new("parcel-2", drop_zone=ZONE))
        assert zoned["delivery"]["drop_zone"] == ZONE
        assert zoned["delivery"]["drop_radius_m"] is None


async def test_get_shows_the_latest_eta(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    async with web_client(settings, dispatcher) as http:
        await create(http, new("parcel-1"))
        conn = await connect(settings.database_url)
        try:  # as the tracker stores every ETA it publishes
            for minutes, p50, p90 in ((0, 20, 30), (1, 15, 22)):
                at = NOW + timedelta(minutes=minutes)
                await conn.execute(
                    "INSERT INTO eta_predictions (delivery_id, predicted_at, vehicle_id, lat,"
                    " lon, p50, p90, method) VALUES ('parcel-1', %s, 'van-1', 41.14, -8.6,"
                    " %s, %s, 'grid')",
                    (at, at + timedelta(minutes=p50), at + timedelta(minutes=p90)),
                )
        finally:
            await conn.close()
        async with http.get("/api/v1/deliveries/parcel-1") as resp:
            eta = (await resp.json())["eta"]
        async with http.get("/api/v1/deliveries") as resp:
            listed = (await resp.json())["items"][0]["eta"]
    at = NOW + timedelta(minutes=1)
    assert datetime.fromisoformat(eta["computed_at"]) == at
    assert datetime.fromisoformat(eta["p50"]) == at + timedelta(minutes=15)
    assert datetime.fromisoformat(eta["p90"]) == at + timedelta(minutes=22)
    assert eta["method"] == "grid"
    assert listed == eta


async def test_list_filters_by_vehicle_and_state_a_page_at_a_time(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    async with web_client(settings, dispatcher) as http:
        for delivery_id, vehicle in (("d-1", "van-1"), ("d-2", "van-2"), ("d-3", "van-1")):
            await create(http, new(delivery_id, vehicle))
        async with http.post("/api/v1/deliveries/d-3/cancel") as resp:
            assert resp.status == 200

        async def ids(query: str) -> tuple[list[str], str | None]:
            async with http.get(f"/api/v1/deliveries?{query}") as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            return [d["id"] for d in page["items"]], page["next_after"]

        assert await ids("") == (["d-1", "d-2", "d-3"], None)
        assert await ids("vehicle=van-1") == (["d-1", "d-3"], None)
        assert await ids("state=cancelled") == (["d-3"], None)
        assert await ids("vehicle=van-1&state=scheduled") == (["d-1"], None)
        assert await ids("limit=2") == (["d-1", "d-2"], "d-2")
        assert await ids("limit=2&after=d-2") == (["d-3"], None)
        for query, detail in (
            ("state=lost", "expected one of scheduled"),
            ("limit=0", "must be at least 1"),
            ("limit=x", "expected a whole number"),
            ("vehicle=van%00", "contains a NUL character"),
            ("vehicle=", "is empty"),
            ("after=a%20b", "must match"),
        ):
            async with http.get(f"/api/v1/deliveries?{query}") as resp:
                assert resp.status == 400, query
                assert detail in (await resp.json())["detail"], query


async def test_last_minute_changes_take_effect_and_are_audited(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    actor = await token_id(settings, dispatcher)
    async with web_client(settings, dispatcher) as http:
        await create(http, new("parcel-1"))
        conn = await connect(settings.database_url)
        try:  # the tracker had moved it on
            await conn.execute("UPDATE deliveries SET state = 'approaching' WHERE id = 'parcel-1'")
        finally:
            await conn.close()
        end = NOW + timedelta(hours=3)
        change = {
            "vehicle_id": "van-2",
            "destination": {"lat": 41.15, "lon": -8.61},
            "window_end": end.isoformat(),
            "sequence": 5,
            "service_s": 30,
        }
        async with http.patch("/api/v1/deliveries/parcel-1", json=change) as resp:
            assert resp.status == 200, await resp.text()
            changed = await resp.json()
        assert changed["vehicle_id"] == "van-2"
        assert changed["destination"] == {"lat": 41.15, "lon": -8.61}
        assert datetime.fromisoformat(changed["window_start"]) == NOW - timedelta(hours=1)
        assert datetime.fromisoformat(changed["window_end"]) == end
        assert (changed["sequence"], changed["service_s"]) == (5, 30.0)
        assert changed["state"] == "scheduled"  # a new vehicle restarts the approach
        async with http.get("/api/v1/deliveries/parcel-1") as resp:
            assert await resp.json() == changed
        async with http.patch(
            "/api/v1/deliveries/parcel-1", json={"window_start": end.isoformat()}
        ) as resp:
            assert resp.status == 422
            assert "window must end after it starts" in (await resp.json())["detail"]
        async with http.patch("/api/v1/deliveries/parcel-1", json={}) as resp:
            assert resp.status == 422
            assert "changes nothing" in (await resp.json())["detail"]
        async with http.patch("/api/v1/deliveries/nobody", json={"sequence": 1}) as resp:
            assert resp.status == 404
    rows = await audit_rows(settings, "delivery")
    assert [(a, action, target) for a, action, target, _ in rows] == [
        (actor, "delivery.create", "parcel-1"),
        (actor, "delivery.update", "parcel-1"),
    ]
    assert rows[1][3] == {
        "vehicle_id": "van-2",
        "destination": {"lat": 41.15, "lon": -8.61},
        "window_end": end.isoformat().replace("+00:00", "Z"),
        "sequence": 5,
        "service_s": 30.0,
    }


async def test_report_and_cancel_store_publish_and_close(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    actor = await token_id(settings, dispatcher)
    subscriber = aioredis.Redis.from_url(settings.redis_url).pubsub()
    await subscriber.subscribe(EVENTS_CHANNEL)
    async with web_client(settings, dispatcher) as http:
        await create(http, new("parcel-1"))
        await create(http, new("parcel-2"))
        async with http.post(
            "/api/v1/deliveries/parcel-1/report",
            json={"outcome": "delivered", "detail": "left with a neighbour"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["state"] == "delivered"
        async with http.post(
            "/api/v1/deliveries/parcel-1/report", json={"outcome": "failed"}
        ) as resp:
            assert resp.status == 409
            assert "is delivered already" in (await resp.json())["detail"]
        async with http.post("/api/v1/deliveries/parcel-2/cancel") as resp:
            assert resp.status == 200
            assert (await resp.json())["state"] == "cancelled"
        async with http.post("/api/v1/deliveries/parcel-2/cancel", json={}) as resp:
            assert resp.status == 409
        async with http.patch("/api/v1/deliveries/parcel-2", json={"sequence": 1}) as resp:
            assert resp.status == 409
            assert "cancelled: it cannot change" in (await resp.json())["detail"]
        for path, body in (("report", {"outcome": "failed"}), ("cancel", {})):
            async with http.post(f"/api/v1/deliveries/nobody/{path}", json=body) as resp:
                assert resp.status == 404
                assert "no delivery 'nobody'" in (await resp.json())["detail"]
    published: list[dict[str, Any]] = []

    async def two_published() -> bool:
        message = await subscriber.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            published.append(json.loads(message["data"]))
        return len(published) >= 2

    await eventually(two_published)
    await subscriber.aclose()
    assert [(m["delivery_id"], m["kind"]) for m in published] == [
        ("parcel-1", "delivered"),
        ("parcel-2", "cancelled"),
    ]
    conn = await connect(settings.database_url, autocommit=False)
    try:
        stored = [
            (e.delivery_id, e.device_id, e.kind.value, e.detail) async for e in store.events(conn)
        ]
    finally:
        await conn.close()
    assert stored == [
        ("parcel-1", "van-1", "delivered", "left with a neighbour"),
        ("parcel-2", "van-1", "cancelled", ""),
    ]
    assert [
        (a, action, target, detail)
        for a, action, target, detail in await audit_rows(settings, "delivery")
    ][2:] == [
        (
            actor,
            "delivery.report",
            "parcel-1",
            {"outcome": "delivered", "detail": "left with a neighbour"},
        ),
        (actor, "delivery.cancel", "parcel-2", {"outcome": "cancelled", "detail": ""}),
    ]


async def test_a_new_tracking_link_revokes_the_old(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    async with web_client(settings, dispatcher) as http:
        old = (await create(http, new("parcel-1")))["tracking"]["tracking_token"]
        async with http.post("/api/v1/deliveries/parcel-1/token") as resp:
            assert resp.status == 200, await resp.text()
            first = await resp.json()
        later = NOW + timedelta(days=3)
        async with http.post(
            "/api/v1/deliveries/parcel-1/token", json={"expires_at": later.isoformat()}
        ) as resp:
            second = await resp.json()
        async with http.post("/api/v1/deliveries/nobody/token") as resp:
            assert resp.status == 404
        past = (NOW - timedelta(minutes=1)).isoformat()
        async with http.post(
            "/api/v1/deliveries/parcel-1/token", json={"expires_at": past}
        ) as resp:
            assert resp.status == 422
            assert "has passed" in (await resp.json())["detail"]
    default = NOW + timedelta(hours=1) + delivery_store.TOKEN_LIFETIME_AFTER_WINDOW
    assert datetime.fromisoformat(first["token_expires_at"]) == default
    assert datetime.fromisoformat(second["token_expires_at"]) == later
    assert second["tracking_url"].endswith("/track/" + second["tracking_token"])
    assert await opens(settings, old) is None
    assert await opens(settings, first["tracking_token"]) is None
    assert await opens(settings, second["tracking_token"]) == "parcel-1"
    logged = [
        detail
        for _, action, _, detail in await audit_rows(settings, "delivery")
        if action == "delivery.token"
    ]
    assert len(logged) == 2
    assert all(second["tracking_token"] not in json.dumps(d) for d in logged)


async def test_viewers_read_dispatchers_change(settings: Settings) -> None:
    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher")
    async with web_client(settings, viewer) as http:
        await create_as(http, dispatcher, new("parcel-1"))
        async with http.get("/api/v1/deliveries/parcel-1") as resp:
            assert resp.status == 200
        async with http.get("/api/v1/deliveries") as resp:
            assert resp.status == 200
        for method, path, body in (
            ("POST", "/api/v1/deliveries", new("parcel-2")),
            ("PATCH", "/api/v1/deliveries/parcel-1", {"sequence": 1}),
            ("POST", "/api/v1/deliveries/parcel-1/cancel", {}),
            ("POST", "/api/v1/deliveries/parcel-1/report", {"outcome": "delivered"}),
            ("POST", "/api/v1/deliveries/parcel-1/token", {}),
        ):
            async with http.request(method, path, json=body) as resp:
                assert resp.status == 403, path
            async with http.request(method, path, json=body, headers={"Authorization": ""}) as resp:
                assert resp.status == 401, path
        async with http.get("/api/v1/deliveries/parcel-1") as resp:
            assert (await resp.json())["state"] == "scheduled"
    assert [action for _, action, _, _ in await audit_rows(settings, "delivery")] == [
        "delivery.create"
    ]


async def create_as(http: ClientSession, token: str, body: dict[str, Any]) -> None:
    async with http.post("/api/v1/deliveries", json=body, headers=bearer(token)) as resp:
        assert resp.status == 201, await resp.text()


async def test_invalid_bodies_are_4xx_naming_the_field(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher")
    past = NOW - timedelta(days=3)
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [
                [-8.612, 41.148],
                [-8.610, 41.148],
                [-8.612, 41.149],
                [-8.610, 41.149],
                [-8.612, 41.148],
            ]
        ],
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({**new("p"), "window_start": 5}, "Expected `datetime`, got `int` - at `$.window_start`"),
        (
            {k: v for k, v in new("p").items() if k != "vehicle_id"},
            "missing required field `vehicle_id`",
        ),
        ({**new("p"), "destination": {"lat": 91, "lon": 0}}, "<= 90.0 - at `$.destination.lat`"),
        ({**new("p"), "destination": {"lat": 41, "lon": "x"}}, "at `$.destination.lon`"),
        (
            {**new("p"), "window_end": (NOW - timedelta(hours=2)).isoformat()},
            "the delivery window must end after it starts",
        ),
        ({**new("p"), "window_start": "2026-01-01T10:00:00"}, "`$.window_start`"),  # no offset
        ({**new("p"), "id": "parcel 1"}, "at `$.id`"),
        ({**new("p"), "drop_radius_m": 0}, "at `$.drop_radius_m`"),
        ({**new("p"), "drop_radius_m": 5e-324}, "at `$.drop_radius_m`"),
        ({**new("p"), "sequence": 2**40}, "at `$.sequence`"),
        ({**new("p"), "service_type": "express"}, "at `$.service_type`"),
        ({**new("p"), "windw_end": "typo"}, "unknown field `windw_end`"),
        ({**new("p"), "drop_zone": {"type": "Point", "coordinates": [0, 0]}}, "`$.drop_zone.type`"),
        ({**new("p"), "drop_zone": bowtie}, "drop_zone: feature (id 'drop-zone'): geometry"),
        (
            {**new("p"), "window_start": "0001-01-01T00:00:00+05:00"},
            "window_start: 0001-01-01T00:00:00+05:00 is not between 1970 and 9997",
        ),
        (
            {
                **new("p"),
                "window_start": past.isoformat(),
                "window_end": (past + timedelta(hours=1)).isoformat(),
            },
            "give token_expires_at",
        ),
        ({**new("p"), "token_expires_at": past.isoformat()}, "token_expires_at: "),
    ]
    async with web_client(settings, dispatcher) as http:
        for body, detail in cases:
            async with http.post("/api/v1/deliveries", json=body) as resp:
                assert resp.status == 422, (body, await resp.text())
                assert resp.content_type == "application/problem+json"
                assert detail in (await resp.json())["detail"], body
        for raw, detail in ((b"", "a JSON body is required"), (b"{", "not valid JSON")):
            async with http.post("/api/v1/deliveries", data=raw) as resp:
                assert resp.status == 400
                assert detail in (await resp.json())["detail"]
        await create(http, new("parcel-1"))
        for path, body in (
            ("report", {"outcome": "lost"}),
            ("report", {}),
            ("report", {"outcome": "failed", "detail": "a\x00b"}),
            ("cancel", {"detail": 7}),
            ("token", {"expires_at": "tomorrow"}),
        ):
            async with http.post(f"/api/v1/deliveries/parcel-1/{path}", json=body) as resp:
                assert resp.status == 422, (path, body, await resp.text())
        async with http.patch("/api/v1/deliveries/parcel-1", json={"vehicle_id": 3}) as resp:
            assert resp.status == 422
            assert "at `$.vehicle_id`" in (await resp.json())["detail"]
        for path in ("/api/v1/deliveries/nobody", "/api/v1/deliveries/bad%00id"):
            async with http.get(path) as resp:
                assert resp.status == 404
        async with http.get("/api/v1/deliveries/parcel-1") as resp:  # untouched by all that
            assert (await resp.json())["state"] == "scheduled"
        # Too small for the 4-byte column: kept to the millisecond, not refused by PostgreSQL.
        async with http.patch("/api/v1/deliveries/parcel-1", json={"service_s": 1e-300}) as resp:
            assert resp.status == 200
            assert (await resp.json())["service_s"] == 0.0
    assert [action for _, action, _, _ in await audit_rows(settings, "delivery")] == [
        "delivery.create",
        "delivery.update",
    ]
