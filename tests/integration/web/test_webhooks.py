"""Webhooks end to end: events stored by the tracker's store reach a real HTTP receiver
(an aiohttp server in the test) through the outbox, signed, retried, dead-lettered and
replayed; two senders at once never send the same delivery twice."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from fleetpulse import cli
from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import WAIT_TIMEOUT_S, eventually, make_token, web_client
from tracker import store as tracker_store
from tracker.events import Event, EventKind
from web import webhook_store
from web.services import open_services
from web.webhooks import WebhookSender

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """An integrator's endpoint: answers 500 while failing, 204 otherwise."""

    fail_first: int = 0
    always_fail: bool = False
    hold_until_concurrent: int = 0  # hold the first requests until this many are open at once
    received: list[Received] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    _enough_open: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            if self.hold_until_concurrent:
                if self.open_now >= self.hold_until_concurrent:
                    self._enough_open.set()
                if not self._enough_open.is_set():
                    await asyncio.wait_for(self._enough_open.wait(), WAIT_TIMEOUT_S)
                await asyncio.sleep(random.uniform(0, 0.003))
            failing = self.always_fail or self.fail_first > 0
            self.fail_first -= 1
            status = 500 if failing else 204
            self.received.append(Received(request.path, dict(request.headers), body, status))
            if failing:
                return web.Response(status=500, text="receiver down for maintenance")
            return web.Response(status=204)
        finally:
            self.open_now -= 1

    def delivered(self, path: str | None = None) -> list[Received]:
        return [r for r in self.received if r.answered == 204 and path in (None, r.path)]


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    """The receiver on a free port; yields its base URL."""
    app = web.Application()
    app.router.add_post("/{name}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_sender(settings: Settings, **options: Any) -> AsyncIterator[WebhookSender]:
    """A sender as a web worker runs it, with its own connection pool."""
    async with open_services(settings) as services:
        sender = WebhookSender(settings, services.pool, **options)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop), name="test-webhook-sender")
        try:
            yield sender
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_TIMEOUT_S)


def fast_retries(settings: Settings, max_attempts: int = 8) -> Settings:
    return dataclasses.replace(
        settings,
        webhook_backoff=timedelta(milliseconds=10),
        webhook_max_attempts=max_attempts,
        webhook_timeout=timedelta(seconds=5),
    )


def event(n: int, kind: EventKind = EventKind.ENTER, device: str = "van-1") -> Event:
    return Event(
        device_id=device,
        kind=kind,
        ts=T0 + timedelta(seconds=n),
        fence_id="depot" if kind in (EventKind.ENTER, EventKind.EXIT) else None,
        lat=38.7223,
        lon=-9.1393,
        detail=f"event {n}",
    )


async def save_events(settings: Settings, events: list[Event]) -> int:
    conn = await connect(settings.database_url)
    try:
        async with conn.transaction():
            return await tracker_store.save_events(conn, events)
    finally:
        await conn.close()


async def subscribe(
    settings: Settings, url: str, kinds: list[str] | None = None
) -> tuple[str, str]:
    conn = await connect(settings.database_url)
    try:
        created, secret = await webhook_store.create(conn, url, kinds or [])
    finally:
        await conn.close()
    return created.id, secret


async def rows(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = await connect(settings.database_url)
    try:
        cur = await conn.execute(query, params or None)
        return list(await cur.fetchall())
    finally:
        await conn.close()


def signature_ok(secret: str, received: Received) -> bool:
    """Checked as the docs tell receivers to, independently of web.webhooks."""
    timestamp = received.headers["X-FleetPulse-Timestamp"]
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest("sha256=" + expected, received.headers["X-FleetPulse-Signature"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_stored_event_reaches_the_receiver_signed(settings: Settings) -> None:
    receiver = Receiver()
    admin = await make_token(settings, "admin")
    async with serving(receiver) as base, web_client(settings, admin) as http:
        async with http.post(
            "/api/v1/webhooks",
            json={"url": f"{base}/hook", "kinds": ["enter"], "description": "ops"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
            assert resp.headers["Location"] == f"/api/v1/webhooks/{created['id']}"
        secret = created["secret"]
        assert secret.startswith("whsec_")
        stored = event(1)
        assert await save_events(settings, [stored]) == 1

        await eventually(lambda: receiver.delivered())
        got = receiver.delivered()[0]
        assert signature_ok(secret, got)
        assert not signature_ok(secret + "x", got)
        assert got.headers["X-FleetPulse-Event"] == "enter"
        assert got.headers["Content-Type"] == "application/json"
        body = json.loads(got.body)
        assert body["id"] == int(got.headers["X-FleetPulse-Delivery"])
        assert body["webhook_id"] == created["id"]
        assert body["event"] == {
            "id": stored.id,
            "device_id": "van-1",
            "kind": "enter",
            "ts": "2026-11-27T09:00:01.000000Z",
            "fence_id": "depot",
            "delivery_id": None,
            "lat": 38.7223,
            "lon": -9.1393,
            "alt": None,
            "detail": "event 1",
        }

        async def delivered() -> list[dict[str, Any]]:
            async with http.get(
                f"/api/v1/webhooks/{created['id']}/deliveries", params={"status": "delivered"}
            ) as resp:
                assert resp.status == 200
                found: list[dict[str, Any]] = await resp.json()
                return found

        listed = (await eventually(delivered))[0]
        assert listed["id"] == body["id"]
        assert listed["attempts"] == 1 and listed["last_status"] == 204
        assert listed["event"]["id"] == stored.id
        assert listed["delivered_at"] is not None

        # The secret is shown once: no later answer carries it.
        async with http.get(f"/api/v1/webhooks/{created['id']}") as resp:
            assert "secret" not in await resp.json()
        async with http.get("/api/v1/webhooks") as resp:
            assert [w["id"] for w in await resp.json()] == [created["id"]]
            assert "whsec_" not in await resp.text()


async def test_a_receiver_that_recovers_gets_the_delivery_once(settings: Settings) -> None:
    settings = fast_retries(settings)
    receiver = Receiver(fail_first=3)
    async with serving(receiver) as base, running_sender(settings) as sender:
        _, secret = await subscribe(settings, f"{base}/hook")
        await save_events(settings, [event(1)])

        found = await eventually(
            lambda: rows(
                settings,
                "SELECT id, attempts, last_status, last_error FROM webhook_deliveries"
                " WHERE status = 'delivered'",
            )
        )
    delivery_id, attempts, last_status, last_error = found[0]
    assert (attempts, last_status, last_error) == (4, 204, None)
    assert [r.answered for r in receiver.received] == [500, 500, 500, 204]
    assert {r.headers["X-FleetPulse-Delivery"] for r in receiver.received} == {str(delivery_id)}
    assert all(signature_ok(secret, r) for r in receiver.received)
    assert (sender.stats.delivered, sender.stats.retried, sender.stats.dead) == (1, 3, 0)
    assert sender.stats.attempts == 4


async def test_dead_letter_is_listed_and_replay_delivers_it(settings: Settings) -> None:
    settings = fast_retries(settings, max_attempts=3)
    receiver = Receiver(always_fail=True)
    admin = await make_token(settings, "admin")
    async with serving(receiver) as base, web_client(settings, admin) as http:
        async with http.post("/api/v1/webhooks", json={"url": f"{base}/hook"}) as resp:
            webhook = await resp.json()
        await save_events(settings, [event(1, EventKind.OFFLINE)])
        deliveries = f"/api/v1/webhooks/{webhook['id']}/deliveries"

        async def dead() -> list[dict[str, Any]]:
            async with http.get(deliveries, params={"status": "dead"}) as resp:
                found: list[dict[str, Any]] = await resp.json()
                return found

        letter = (await eventually(dead))[0]
        assert letter["attempts"] == 3
        assert letter["last_status"] == 500
        assert "receiver down for maintenance" in letter["last_error"]
        assert letter["event_kind"] == "offline"
        assert len(receiver.received) == 3
        async with http.get(deliveries, params={"status": "pending"}) as resp:
            assert await resp.json() == []

        receiver.always_fail = False
        async with http.post(f"/api/v1/webhooks/deliveries/{letter['id']}/replay") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["status"] == "pending"

        async def delivered() -> list[dict[str, Any]]:
            async with http.get(deliveries, params={"status": "delivered"}) as resp:
                found: list[dict[str, Any]] = await resp.json()
                return found

        replayed = (await eventually(delivered))[0]
        assert replayed["id"] == letter["id"]
        assert replayed["attempts"] == 1  # a replay starts a fresh count
        assert [r.answered for r in receiver.received] == [500, 500, 500, 204]
        assert receiver.delivered()[0].headers["X-FleetPulse-Delivery"] == str(letter["id"])

        # Delivered ones may be replayed too; pending ones are refused.
        await save_events(settings, [event(2, EventKind.OFFLINE)])
        async with http.post(f"/api/v1/webhooks/deliveries/{letter['id']}/replay") as resp:
            assert resp.status == 200
        await eventually(lambda: len(receiver.delivered()) == 3)
    audit = await rows(
        settings, "SELECT action, target FROM audit_log WHERE action LIKE 'webhook.%' ORDER BY id"
    )
    assert audit == [
        ("webhook.create", webhook["id"]),
        ("webhook.replay", str(letter["id"])),
        ("webhook.replay", str(letter["id"])),
    ]


async def test_two_senders_never_send_one_delivery_twice(settings: Settings) -> None:
    settings = fast_retries(settings)
    per_sender = 4
    # Eight requests open at once can only happen with both senders sending together.
    receiver = Receiver(hold_until_concurrent=2 * per_sender)
    async with serving(receiver) as base:
        for name in ("a", "b"):
            await subscribe(settings, f"{base}/{name}")
        async with (
            running_sender(settings, max_in_flight=per_sender) as first,
            running_sender(settings, max_in_flight=per_sender) as second,
        ):
            for batch in range(10):
                await save_events(settings, [event(batch * 100 + n) for n in range(30)])
            await eventually(lambda: len(receiver.received) >= 600, within=60)
            await eventually(
                lambda: rows(
                    settings,
                    "SELECT 1 WHERE NOT EXISTS"
                    " (SELECT 1 FROM webhook_deliveries WHERE status <> 'delivered')",
                )
            )
    assert receiver.most_open >= 2 * per_sender
    sent = Counter(r.headers["X-FleetPulse-Delivery"] for r in receiver.received)
    assert len(sent) == 600
    assert set(sent.values()) == {1}
    assert first.stats.delivered + second.stats.delivered == 600
    assert first.stats.lease_lost == second.stats.lease_lost == 0
    stored = await rows(settings, "SELECT id::text FROM webhook_deliveries")
    assert {row[0] for row in stored} == set(sent)


async def test_storing_an_event_wakes_the_senders(settings: Settings) -> None:
    unused, _ = await subscribe(settings, "http://127.0.0.1:9/unused")
    listener = await connect(settings.database_url)
    try:
        await listener.execute("LISTEN fleetpulse_webhooks")
        await save_events(settings, [event(1)])
        notified = [
            n.channel async for n in listener.notifies(timeout=WAIT_TIMEOUT_S, stop_after=1)
        ]
        await webhook_store.remove(listener, unused)  # its retries would wake the sender
    finally:
        await listener.close()
    assert notified == ["fleetpulse_webhooks"]

    # With polling an hour apart, only the notification can wake the sender in time.
    settings = fast_retries(settings)
    receiver = Receiver()
    async with serving(receiver) as base, running_sender(settings, poll_interval_s=3600):
        await subscribe(settings, f"{base}/hook")
        await save_events(settings, [event(2)])
        await eventually(
            lambda: rows(settings, "SELECT 1 FROM webhook_deliveries WHERE status = 'delivered'")
        )
        await save_events(settings, [event(3)])
        await eventually(lambda: len(receiver.delivered()) == 2)


async def test_subscriptions_get_only_their_kinds(settings: Settings) -> None:
    settings = fast_retries(settings)
    receiver = Receiver()
    async with serving(receiver) as base:
        await subscribe(settings, f"{base}/enter-only", ["enter"])
        await subscribe(settings, f"{base}/everything")
        await subscribe(settings, f"{base}/exit-only", ["exit"])
        paused, _ = await subscribe(settings, f"{base}/paused")
        conn = await connect(settings.database_url)
        try:
            await webhook_store.update(conn, paused, active=False)
        finally:
            await conn.close()
        async with running_sender(settings):
            await save_events(
                settings, [event(1, EventKind.ENTER), event(2, EventKind.OFFLINE, "van-2")]
            )
            await eventually(lambda: len(receiver.delivered("/everything")) == 2)
            await eventually(lambda: len(receiver.delivered("/enter-only")) == 1)
    assert [r.headers["X-FleetPulse-Event"] for r in receiver.delivered("/enter-only")] == ["enter"]
    assert sorted(r.headers["X-FleetPulse-Event"] for r in receiver.delivered("/everything")) == [
        "enter",
        "offline",
    ]
    queued = await rows(
        settings,
        "SELECT s.url, d.event_kind, d.status FROM webhook_deliveries d"
        " JOIN webhook_subscriptions s ON s.id = d.subscription_id ORDER BY s.url, d.event_kind",
    )
    assert [(url.rsplit("/", 1)[1], kind, status) for url, kind, status in queued] == [
        ("enter-only", "enter", "delivered"),
        ("everything", "enter", "delivered"),
        ("everything", "offline", "delivered"),
    ]
    assert receiver.delivered("/exit-only") == receiver.delivered("/paused") == []


async def test_an_event_stored_again_is_not_queued_again(settings: Settings) -> None:
    await subscribe(settings, "http://127.0.0.1:9/unused")
    await subscribe(settings, "http://127.0.0.1:9/unused-too", ["enter"])
    first = [event(1), event(2, EventKind.EXIT)]
    assert await save_events(settings, first) == 2
    # The tracker re-evaluating the same fixes after a restart stores the same events.
    assert await save_events(settings, [*first, event(3)]) == 1
    queued = await rows(
        settings,
        "SELECT event_id, count(*) FROM webhook_deliveries GROUP BY event_id ORDER BY event_id",
    )
    assert dict(queued) == {first[0].id: 2, first[1].id: 1, event(3).id: 2}


async def test_only_admins_manage_webhooks(settings: Settings) -> None:
    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher")
    webhook_id, _ = await subscribe(settings, "https://example.com/hook")
    requests = [
        ("GET", "/api/v1/webhooks", None),
        ("POST", "/api/v1/webhooks", {"url": "https://example.com/other"}),
        ("GET", f"/api/v1/webhooks/{webhook_id}", None),
        ("PATCH", f"/api/v1/webhooks/{webhook_id}", {"active": False}),
        ("DELETE", f"/api/v1/webhooks/{webhook_id}", None),
        ("GET", f"/api/v1/webhooks/{webhook_id}/deliveries", None),
        ("POST", "/api/v1/webhooks/deliveries/1/replay", None),
    ]
    async with web_client(settings) as http:
        for method, path, body in requests:
            async with http.request(method, path, json=body) as resp:
                assert resp.status == 401, (method, path)
            for token in (viewer, dispatcher):
                async with http.request(method, path, json=body, headers=auth(token)) as resp:
                    assert resp.status == 403, (method, path)
                    assert "admin role" in (await resp.json())["detail"]
    assert len(await rows(settings, "SELECT 1 FROM webhook_subscriptions")) == 1


async def test_bad_requests_are_precise_problems(settings: Settings) -> None:
    admin = await make_token(settings, "admin")
    async with web_client(settings, admin) as http:
        for body, says in (
            ({"url": "ftp://example.com/x"}, "http:// or https://"),
            ({"url": "https://"}, "names no host"),
            ({"url": "https://example.com", "kinds": ["entered"]}, "kinds"),
            ({"url": "https://example.com", "secret": "mine"}, "unknown field `secret`"),
            ({"kinds": ["enter"]}, "missing required field `url`"),
        ):
            async with http.post("/api/v1/webhooks", json=body) as resp:
                assert resp.status == 422, body
                assert resp.content_type == "application/problem+json"
                assert says in (await resp.json())["detail"], body
        # Nothing listens on port 9: the app's sender fails and retries much later.
        async with http.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}) as resp:
            webhook = await resp.json()
        path = f"/api/v1/webhooks/{webhook['id']}"
        async with http.patch(path, json={}) as resp:
            assert resp.status == 422
            assert "nothing to change" in (await resp.json())["detail"]
        async with http.patch(path, json={"kinds": ["exit", "enter"], "active": False}) as resp:
            assert resp.status == 200
            changed = await resp.json()
            assert (changed["kinds"], changed["active"]) == (["enter", "exit"], False)
        async with http.get(f"{path}/deliveries", params={"status": "lost"}) as resp:
            assert resp.status == 400
            assert "pending, delivered, dead" in (await resp.json())["detail"]
        async with http.get(f"{path}/deliveries", params={"limit": "0"}) as resp:
            assert resp.status == 400
        async with http.get("/api/v1/webhooks/whk_nothing/deliveries") as resp:
            assert resp.status == 404
        async with http.post("/api/v1/webhooks/deliveries/abc/replay") as resp:
            assert resp.status == 400
            assert "delivery_id" in (await resp.json())["detail"]
        async with http.post("/api/v1/webhooks/deliveries/99999999999999999999/replay") as resp:
            assert resp.status == 404
        await save_events(settings, [event(1)])
        async with http.patch(path, json={"active": True}) as resp:
            assert resp.status == 200
        await save_events(settings, [event(2)])
        pending = await rows(settings, "SELECT id FROM webhook_deliveries")
        assert len(pending) == 1  # event 1 arrived while the subscription was paused
        async with http.post(f"/api/v1/webhooks/deliveries/{pending[0][0]}/replay") as resp:
            assert resp.status == 409
            assert "pending" in (await resp.json())["detail"]
        async with http.delete(path) as resp:
            assert resp.status == 204
        async with http.delete(path) as resp:
            assert resp.status == 404
        assert await rows(settings, "SELECT 1 FROM webhook_deliveries") == []


def test_cli_adds_lists_replays_and_removes(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", settings.database_url]
    assert (
        cli.main([*db, "webhooks", "add", "https://example.com/h", "--kinds", "exit", "enter"]) == 0
    )
    added = json.loads(capsys.readouterr().out)
    assert added["kinds"] == ["enter", "exit"] and added["secret"].startswith("whsec_")
    assert cli.main([*db, "webhooks", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["id"] == added["id"] and "secret" not in listed
    asyncio.run(save_events(settings, [event(1)]))
    asyncio.run(rows(settings, "UPDATE webhook_deliveries SET status = 'dead' RETURNING id"))
    assert cli.main([*db, "webhooks", "deliveries", "--status", "dead"]) == 0
    dead = json.loads(capsys.readouterr().out)
    assert (dead["subscription_id"], dead["status"]) == (added["id"], "dead")
    assert cli.main([*db, "webhooks", "replay", str(dead["id"])]) == 0
    assert cli.main([*db, "webhooks", "deliveries", "--status", "pending"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == dead["id"]
    assert cli.main([*db, "webhooks", "replay", str(dead["id"])]) == 1
    assert "it will be sent" in capsys.readouterr().err
    assert cli.main([*db, "webhooks", "add", "mailto:x@example.com"]) == 1
    assert "http:// or https://" in capsys.readouterr().err
    assert cli.main([*db, "webhooks", "remove", added["id"]]) == 0
    assert cli.main([*db, "webhooks", "remove", added["id"]]) == 1
    assert cli.main([*db, "webhooks", "list"]) == 0
    assert capsys.readouterr().out == ""
