"""Alerts and their acknowledgement: through the REST API and through the dispatch
websocket, stored once, audited, and announced to every dispatch client of every
worker."""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import quote

from aiohttp import ClientSession

from fleetpulse.database import connect as db_connect
from fleetpulse.local_servers import free_port
from fleetpulse.settings import Settings
from tests.conftest import make_token
from tests.integration.web.dispatch_support import (
    dispatch,
    fleet,
    make_event,
    receive,
    receive_until,
    served,
)
from tracker.events import EventKind


def base(settings: Settings) -> str:
    return f"http://{settings.web_host}:{settings.web_port}"


def ack_path(event_id: str) -> str:
    return f"/api/v1/alerts/{quote(event_id, safe='')}/ack"


async def test_unacknowledged_alerts_are_listed_newest_last(settings: Settings) -> None:
    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher")
    events = [
        make_event("van-1", EventKind.ENTER, second=1),
        make_event("van-2", EventKind.LATE_RISK, second=2),
        make_event("van-1", EventKind.EXIT, second=3),
    ]
    async with fleet(settings) as fl, served(settings):
        await fl.store(*events)
        async with ClientSession(
            base(settings), headers={"Authorization": f"Bearer {viewer}"}
        ) as http:
            async with http.get("/api/v1/alerts") as resp:
                assert resp.status == 200
                assert [a["id"] for a in await resp.json()] == [e.id for e in events]
            async with http.get("/api/v1/alerts", params={"device": "van-1"}) as resp:
                assert [a["id"] for a in await resp.json()] == [events[0].id, events[2].id]
            async with http.get("/api/v1/alerts", params={"kind": "late_risk"}) as resp:
                assert [a["kind"] for a in await resp.json()] == ["late_risk"]
            async with http.get("/api/v1/alerts", params={"limit": "2"}) as resp:
                assert [a["id"] for a in await resp.json()] == [events[1].id, events[2].id]
            for params, detail in (
                ({"kind": "geofence_enter"}, "expected one of"),
                ({"limit": "0"}, "at least 1"),
                ({"device": "van 1"}, "not a device id"),
                ({"since": "yesterday"}, "RFC 3339"),
            ):
                async with http.get("/api/v1/alerts", params=params) as resp:
                    assert resp.status == 400, params
                    assert detail in (await resp.json())["detail"]

        async with ClientSession(
            base(settings), headers={"Authorization": f"Bearer {dispatcher}"}
        ) as http:
            async with http.post(ack_path(events[0].id), json={"note": "seen"}) as resp:
                assert resp.status == 201
            async with http.get("/api/v1/alerts") as resp:
                assert [a["id"] for a in await resp.json()] == [events[1].id, events[2].id]


async def test_acknowledging_over_rest_is_stored_audited_and_broadcast(
    settings: Settings,
) -> None:
    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher", name="alice")
    alert = make_event("van-1", EventKind.ENTER)
    other_worker = dataclasses.replace(settings, web_port=free_port())
    async with fleet(settings) as fl:
        await fl.store(alert)
    async with (
        served(settings),
        served(other_worker),
        dispatch(settings, viewer) as here,
        dispatch(other_worker, viewer) as there,
    ):
        for ws in (here, there):
            assert [a["id"] for a in (await receive(ws))["alerts"]] == [alert.id]

        async with ClientSession(base(settings)) as http:
            path = ack_path(alert.id)
            async with http.post(path, json={"note": "driver called"}) as resp:
                assert resp.status == 401
            viewer_auth = {"Authorization": f"Bearer {viewer}"}
            async with http.post(path, json={}, headers=viewer_auth) as resp:
                assert resp.status == 403
            auth = {"Authorization": f"Bearer {dispatcher}"}
            async with http.post(path, json={"note": "x" * 1001}, headers=auth) as resp:
                assert resp.status == 422
            async with http.post(path, data=b"{", headers=auth) as resp:
                assert resp.status == 400
            async with http.post(
                ack_path("van-1|-|enter|1"), json={"note": ""}, headers=auth
            ) as resp:
                assert resp.status == 404
                assert "van-1|-|enter|1" in (await resp.json())["detail"]
            async with http.post(path, json={"note": "driver called"}, headers=auth) as resp:
                assert resp.status == 201
                ack = await resp.json()
            assert ack["event_id"] == alert.id
            assert (ack["acked_by"], ack["note"]) == ("alice", "driver called")
            async with http.post(path, json={"note": "again"}, headers=auth) as resp:
                assert resp.status == 409
                assert "already acknowledged by alice" in (await resp.json())["detail"]

        for ws in (here, there):
            assert await receive(ws) == {"type": "ack", **ack}

    conn = await db_connect(settings.database_url)
    try:
        cur = await conn.execute("SELECT acked_by, note FROM alert_acks")
        assert await cur.fetchall() == [("alice", "driver called")]
        cur = await conn.execute(
            "SELECT action, target, detail->>'note' FROM audit_log WHERE action = 'alert.ack'"
        )
        assert await cur.fetchall() == [("alert.ack", alert.id, "driver called")]
    finally:
        await conn.close()


async def test_acknowledging_over_the_websocket_needs_a_dispatcher(settings: Settings) -> None:
    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher", name="bob")
    alert = make_event("drone-7", EventKind.BATTERY_INFEASIBLE)
    async with (
        fleet(settings) as fl,
        served(settings),
        dispatch(settings, viewer) as watcher,
        dispatch(settings, dispatcher) as acker,
    ):
        await fl.store(alert)
        await receive(watcher)
        await receive(acker)

        await watcher.send(json.dumps({"type": "ack", "event_id": alert.id}))
        refused = await receive(watcher)
        assert refused["type"] == "error"
        assert "dispatcher role" in refused["detail"]

        await acker.send(json.dumps({"type": "ack", "event_id": "nope|-|enter|1"}))
        unknown = await receive(acker)
        assert unknown["type"] == "error" and "no event has the id" in unknown["detail"]

        await acker.send(json.dumps({"type": "ack", "event_id": alert.id, "note": "on it"}))
        for ws in (acker, watcher):
            ack = await receive(ws)
            assert ack["type"] == "ack"
            assert (ack["event_id"], ack["acked_by"], ack["note"]) == (alert.id, "bob", "on it")
            assert ack["acked_at"]

        await acker.send(json.dumps({"type": "ack", "event_id": alert.id}))
        again = await receive_until(acker, lambda m: m["type"] == "error")
        assert "already acknowledged by bob" in again[-1]["detail"]

    # A fresh snapshot no longer lists it.
    async with served(settings), dispatch(settings, viewer) as ws:
        assert (await receive(ws))["alerts"] == []
