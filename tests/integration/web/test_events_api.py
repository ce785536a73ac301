"""GET /api/v1/events: events stored by the tracker's own store, read back filtered
and page by page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import ClientSession

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import make_token, web_client
from tracker.events import Event, EventKind
from tracker.store import save_events

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
GEOFENCE_KINDS = (EventKind.ENTER, EventKind.DWELL, EventKind.EXIT)


def sample_events() -> list[Event]:
    """250 events: three devices, geofence events on two fences, delivery events, and
    groups of events sharing one time so that pages must break ties by id."""
    events = []
    for k in range(200):
        device = f"van-{k % 3}"
        ts = T0 + timedelta(seconds=k // 4)  # four events per second
        events.append(
            Event(device, GEOFENCE_KINDS[k % 3], ts, fence_id=f"fence-{k % 2}", lat=41.0, lon=-8.0)
        )
    for k in range(50):
        events.append(
            Event(
                "van-0",
                EventKind.APPROACHING,
                T0 + timedelta(minutes=10, seconds=k),
                delivery_id=f"p-{k % 5}",
            )
        )
    return events


async def stored(settings: Settings) -> list[Event]:
    events = sample_events()
    conn = await connect(settings.database_url)
    try:
        assert await save_events(conn, events) == len(events)
    finally:
        await conn.close()
    return sorted(events, key=lambda e: (e.ts, e.id))


async def every_page(http: ClientSession, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        async with http.get(next_url) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
            link = resp.links.get("next")
        items.extend(page["items"])
        assert (link is None) == (page["next"] is None)
        if page["next"] is not None:
            assert page["next"] == page["items"][-1]["id"]
        next_url = None if link is None else str(link["url"])
    return items


def q(value: datetime) -> str:
    return quote(value.isoformat())


async def test_pages_return_every_event_once_in_event_time_order(settings: Settings) -> None:
    events = await stored(settings)
    token = await make_token(settings, "viewer")
    async with web_client(settings, token) as http:
        for limit in (7, 100, 1000):
            items = await every_page(http, f"/api/v1/events?limit={limit}")
            assert [i["id"] for i in items] == [e.id for e in events]
        first = items[0]
        assert first["device_id"] == events[0].device_id
        assert datetime.fromisoformat(first["ts"]) == events[0].ts
        assert first["kind"] == events[0].kind.value
        assert first["fence_id"] == events[0].fence_id
        assert datetime.fromisoformat(first["recorded_at"]) > events[0].ts
        async with http.get("/api/v1/events") as resp:
            page = await resp.json()
        assert len(page["items"]) == 100 and page["next"] == events[99].id


async def test_filters(settings: Settings) -> None:
    events = await stored(settings)
    token = await make_token(settings, "viewer")

    def expect(keep: Any) -> list[str]:
        return [e.id for e in events if keep(e)]

    async with web_client(settings, token) as http:
        cases = [
            ("device=van-1", lambda e: e.device_id == "van-1"),
            ("fence=fence-0", lambda e: e.fence_id == "fence-0"),
            ("delivery=p-3", lambda e: e.delivery_id == "p-3"),
            ("kind=dwell", lambda e: e.kind is EventKind.DWELL),
            ("kind=approaching&device=van-0", lambda e: e.kind is EventKind.APPROACHING),
            (
                "device=van-2&fence=fence-1&kind=exit",
                lambda e: (e.device_id, e.fence_id, e.kind) == ("van-2", "fence-1", EventKind.EXIT),
            ),
            (
                f"from={q(T0 + timedelta(seconds=10))}&to={q(T0 + timedelta(seconds=20))}",
                lambda e: T0 + timedelta(seconds=10) <= e.ts < T0 + timedelta(seconds=20),
            ),
            (f"from={q(T0 + timedelta(minutes=5))}", lambda e: e.ts >= T0 + timedelta(minutes=5)),
            ("device=nobody", lambda e: False),
        ]
        for query, keep in cases:
            items = await every_page(http, f"/api/v1/events?limit=9&{query}")
            assert [i["id"] for i in items] == expect(keep), query
            assert items or query == "device=nobody"


async def test_bad_requests_and_refusals(settings: Settings) -> None:
    await stored(settings)
    token = await make_token(settings, "viewer")
    async with web_client(settings, token) as http:
        for query, words in [
            ("kind=teleport", "enter, exit, dwell"),
            (f"from={q(T0)}&to={q(T0)}", "must be before"),
            ("from=noon", "RFC 3339"),
            ("limit=0", "at least 1"),
            ("limit=1001", "at most 1000"),
            ("after=no-such-event", "no stored event has the id 'no-such-event'"),
            ("device=van%001", "NUL"),
            ("to=", "'to' is empty"),
        ]:
            async with http.get("/api/v1/events?" + query) as resp:
                assert resp.status == 400, query
                assert resp.content_type == "application/problem+json"
                assert words in (await resp.json())["detail"], query
    async with web_client(settings) as anonymous:
        async with anonymous.get("/api/v1/events") as resp:
            assert resp.status == 401
        async with anonymous.get("/api/v1/events", headers={"Authorization": "Bearer x"}) as resp:
            assert resp.status == 401
