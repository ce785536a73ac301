"""/ws/dispatch against the really served app, real Redis and PostgreSQL, with the
`websockets` library as the client: snapshot then deltas, filters, resuming with
`since`, slow clients cut off without slowing others, refusals, several workers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from datetime import datetime, timedelta

import pytest
import redis.asyncio as redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from fleetpulse.local_servers import free_port
from fleetpulse.settings import Settings
from tests.conftest import eventually, make_token
from tests.integration.web.dispatch_support import (
    T0,
    Message,
    dispatch,
    event_ids,
    fleet,
    hub_of,
    is_event,
    live_state,
    make_event,
    receive,
    receive_until,
    served,
    ws_url,
)
from tracker.events import EventKind
from web import ws_dispatch
from web.hub import REDIS_CLIENT_NAME


def devices_in(message: Message) -> dict[str, Message]:
    return {d["device_id"]: d for d in message["devices"]}


async def test_snapshot_then_deltas(settings: Settings) -> None:
    token = await make_token(settings, "viewer")
    async with fleet(settings) as fl, served(settings):
        await fl.publish([live_state("van-1", 38.72, -9.14), live_state("drone-2", 38.70, -9.10)])
        alert = make_event("van-1", EventKind.ENTER)
        await fl.store(alert)
        async with dispatch(settings, token) as ws:
            snapshot = await receive(ws)
            assert snapshot["type"] == "snapshot"
            assert set(devices_in(snapshot)) == {"van-1", "drone-2"}
            state = devices_in(snapshot)["van-1"]
            assert (state["lat"], state["lon"], state["status"]) == (38.72, -9.14, "moving")
            assert [a["id"] for a in snapshot["alerts"]] == [alert.id]

            moved = live_state("van-1", 38.73, -9.15, T0 + timedelta(seconds=5))
            await fl.publish([moved])
            delta = await receive(ws)
            assert delta["type"] == "positions"
            assert devices_in(delta)["van-1"]["lat"] == 38.73

            late = make_event("van-1", EventKind.EXIT, second=5)
            await fl.emit(late)
            message = await receive(ws)
            assert message["type"] == "event"
            assert message["event"]["id"] == late.id
            assert message["event"]["kind"] == "exit"
            assert message["event"]["fence_id"] == "depot"

            await ws.send(json.dumps({"type": "ping"}))
            assert await receive(ws) == {"type": "pong"}
            await ws.send("not json")
            error = await receive(ws)
            assert error["type"] == "error"
            assert "not understood" in error["detail"]


async def test_access_token_in_the_query_for_browsers(settings: Settings) -> None:
    token = await make_token(settings, "viewer")
    async with served(settings), connect(ws_url(settings, access_token=token)) as ws:
        assert (await receive(ws))["type"] == "snapshot"


async def test_filters_from_the_query_and_from_a_filter_message(settings: Settings) -> None:
    token = await make_token(settings, "viewer")
    inside, outside = live_state("van-1", 38.72, -9.14), live_state("van-2", 41.15, -8.61)
    async with fleet(settings) as fl, served(settings):
        await fl.publish([inside, outside])
        query = {"bbox": "38.6,-9.3,38.8,-9.0", "kinds": "enter,dwell"}
        async with dispatch(settings, token, **query) as ws:
            snapshot = await receive(ws)
            assert set(devices_in(snapshot)) == {"van-1"}

            # Filtered out: van-2's position (outside the box), an exit (kind).
            # Then a marker that passes: nothing filtered may arrive before it.
            later = T0 + timedelta(seconds=1)
            await fl.publish([live_state("van-2", 41.16, -8.6, later)])
            await fl.emit(make_event("van-1", EventKind.EXIT, second=1))
            marker = make_event("van-2", EventKind.DWELL, second=1)
            await fl.emit(marker)
            first = await receive(ws)
            assert (first["type"], first["event"]["id"]) == ("event", marker.id)

            await fl.publish(
                [live_state("van-1", 38.75, -9.1, later), live_state("van-2", 41.2, -8.6, later)]
            )
            assert set(devices_in(await receive(ws))) == {"van-1"}

            # A new filter: devices only; a new snapshot follows.
            await ws.send(
                json.dumps({"type": "filter", "bbox": None, "devices": ["van-2"], "kinds": None})
            )
            seen = await receive_until(ws, lambda m: m["type"] == "snapshot")
            snapshot = seen[-1]
            assert set(devices_in(snapshot)) == {"van-2"}
            assert devices_in(snapshot)["van-2"]["lat"] == 41.2
            assert {a["device_id"] for a in snapshot["alerts"]} == {"van-2"}

            await fl.emit(make_event("van-1", EventKind.ENTER, second=2))
            exit_event = make_event("van-2", EventKind.EXIT, second=2)
            await fl.emit(exit_event)
            assert (await receive(ws))["event"]["id"] == exit_event.id

            await ws.send(json.dumps({"type": "filter", "bbox": [1, 2, 3]}))
            error = await receive(ws)
            assert error["type"] == "error"
            assert "bbox" in error["detail"] and "4 numbers" in error["detail"]

            # A map zoomed out past the world: every device, however far apart.
            await ws.send(json.dumps({"type": "filter", "bbox": [-100, -250, 100, 250]}))
            snapshot = (await receive_until(ws, lambda m: m["type"] == "snapshot"))[-1]
            assert set(devices_in(snapshot)) == {"van-1", "van-2"}


async def test_reconnect_with_since_gets_the_missed_events_from_postgresql(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Wide enough that the test's own pace never outlasts it.
    monkeypatch.setattr(ws_dispatch, "RESUME_OVERLAP", timedelta(minutes=2))
    token = await make_token(settings, "viewer")
    async with fleet(settings) as fl, served(settings):
        seen_last = make_event("van-1", EventKind.ENTER, second=1)
        async with dispatch(settings, token) as ws:
            await receive(ws)
            await fl.emit(seen_last)
            assert (await receive(ws))["event"]["id"] == seen_last.id

        # While the client is away: stored, and published to nobody it could hear.
        missed = [
            make_event("van-1", EventKind.DWELL, second=2),
            make_event("van-2", EventKind.ENTER, second=3),
            make_event("van-1", EventKind.EXIT, second=4),
        ]
        for event in missed:
            await fl.emit(event)
        # Stored before the reconnect, published after it: sent once.
        straddling = make_event("van-3", EventKind.ENTER, second=5)
        await fl.store(straddling)

        async with dispatch(settings, token, since=seen_last.id) as ws:
            assert (await receive(ws))["type"] == "snapshot"
            replay = await receive_until(ws, lambda m: m["type"] == "resumed")
            assert event_ids(replay) == [e.id for e in [*missed, straddling]]
            assert replay[-1] == {"type": "resumed", "missed": 4}

            await fl.publish([], [straddling])
            live = make_event("van-1", EventKind.ENTER, second=6)
            await fl.emit(live)
            assert event_ids(await receive_until(ws, is_event(live.id))) == [live.id]

        async with dispatch(settings, token, since=seen_last.id, kinds="exit") as ws:
            await receive(ws)
            replay = await receive_until(ws, lambda m: m["type"] == "resumed")
            assert event_ids(replay) == [missed[2].id]

        async with dispatch(settings, token, since="van-9|-|enter|1") as ws:
            assert (await receive(ws))["type"] == "snapshot"
            error = await receive(ws)
            assert error["type"] == "error"
            assert "no stored event has the id" in error["detail"]
            assert await receive(ws) == {"type": "resumed", "missed": 0}


async def _slow_socket(settings: Settings) -> socket.socket:
    """A client socket with a small receive buffer, so that not reading backs up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (settings.web_host, settings.web_port))
    return sock


async def test_a_slow_client_is_cut_off_and_never_slows_the_others(settings: Settings) -> None:
    settings = dataclasses.replace(settings, ws_queue=8, ws_slow_after=timedelta(seconds=2))
    token = await make_token(settings, "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    devices = [f"van-{i}" for i in range(200)]
    async with fleet(settings) as fl, served(settings) as app:
        hub = hub_of(app)
        slow = await connect(
            ws_url(settings),
            additional_headers=headers,
            sock=await _slow_socket(settings),
            max_queue=2,
            ping_interval=None,
        )
        normal = await connect(ws_url(settings), additional_headers=headers, max_size=None)
        assert (await receive(slow))["type"] == "snapshot"
        assert (await receive(normal))["type"] == "snapshot"

        newest: dict[str, datetime] = {}
        got_events: list[str] = []

        async def read_normally(ws: ClientConnection) -> None:
            while True:
                message = await receive(ws)
                if message["type"] == "positions":
                    for state in message["devices"]:
                        newest[state["device_id"]] = datetime.fromisoformat(state["ts"])
                elif message["type"] == "event":
                    got_events.append(message["event"]["id"])
                    if message["event"]["kind"] == "offline":
                        return

        reader = asyncio.create_task(read_normally(normal))
        sent_events: list[str] = []
        published = hub.stats.bus_messages
        step = 0
        # Bursts until the slow client is cut off; the bound only stops a broken test.
        while hub.stats.slow_disconnects == 0:
            assert step < 2000, "the slow client was never cut off"
            # One event per burst: few enough that the slow client's outbox stays under
            # its hard limit, so it is the time spent full that cuts it off.
            event = make_event("van-0", EventKind.DWELL, second=step)
            await fl.publish([], [event])
            sent_events.append(event.id)
            published += 1
            for _ in range(10):
                step += 1
                ts = T0 + timedelta(milliseconds=step)
                await fl.publish([live_state(d, 38.7, -9.1, ts) for d in devices])
                published += 1
            # The hub keeps up with the bus whatever the slow client does.
            await eventually(lambda total=published: hub.stats.bus_messages >= total)
            await asyncio.sleep(0.05)
        final_ts = T0 + timedelta(milliseconds=step)

        # The slow client reads at last: what was queued for it, then the close.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 20)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "too slow")

        end = make_event("van-0", EventKind.OFFLINE, second=step + 1)
        await fl.publish([], [end])
        await asyncio.wait_for(reader, 60)
        assert got_events == [*sent_events, end.id]  # every event, in order
        assert newest == {d: final_ts for d in devices}  # every device's newest state
        assert normal.state is State.OPEN
        assert hub.stats.slow_disconnects == 1
        assert hub.stats.messages_sent > 0
        await normal.close()
        await eventually(lambda: hub.stats.clients == 0)


async def test_refused_upgrades_are_problem_documents(settings: Settings) -> None:
    viewer = await make_token(settings, "viewer")
    async with served(settings):
        cases = [
            (None, {}, 401, "bearer token is required"),
            ("fpt_wrong", {}, 401, "unknown or revoked"),
            (viewer, {"bbox": "1,2,3"}, 400, "4 numbers"),
            (viewer, {"kinds": "geofence_enter"}, 400, "unknown event kind"),
            (viewer, {"devices": "van 1"}, 400, "not a device id"),
            (viewer, {"since": "x" * 600}, 400, "since"),
        ]
        for token, query, status, detail in cases:
            with pytest.raises(InvalidStatus) as refused:
                async with dispatch(settings, token, **query):
                    pass
            response = refused.value.response
            assert response.status_code == status, (query, response.body)
            assert response.headers["Content-Type"].startswith("application/problem+json")
            problem = json.loads(response.body)
            assert problem["status"] == status
            assert detail in problem["detail"]


async def test_plain_http_on_the_websocket_is_a_problem(settings: Settings) -> None:
    from aiohttp import ClientSession

    viewer = await make_token(settings, "viewer")
    async with served(settings), ClientSession() as http:
        url = f"http://{settings.web_host}:{settings.web_port}/ws/dispatch"
        async with http.get(url, headers={"Authorization": f"Bearer {viewer}"}) as resp:
            assert resp.status == 426
            assert "websocket" in (await resp.json())["detail"]


async def test_two_workers_both_deliver_every_event(settings: Settings) -> None:
    other = dataclasses.replace(settings, web_port=free_port())
    token = await make_token(settings, "viewer")
    async with (
        fleet(settings) as fl,
        served(settings),
        served(other),
        dispatch(settings, token) as first,
        dispatch(other, token) as second,
    ):
        await receive(first)
        await receive(second)
        events = [make_event(f"van-{i}", EventKind.ENTER, second=i) for i in range(20)]
        for event in events:
            await fl.emit(event)
        for ws in (first, second):
            seen = await receive_until(ws, is_event(events[-1].id))
            assert event_ids(seen) == [e.id for e in events]


async def test_a_lost_subscription_closes_clients_so_they_resume(settings: Settings) -> None:
    token = await make_token(settings, "viewer")
    async with served(settings) as app:
        hub = hub_of(app)
        async with dispatch(settings, token) as ws:
            await receive(ws)
            async with redis.Redis.from_url(settings.redis_url) as admin:
                [subscription] = [
                    c for c in await admin.client_list() if c["name"] == REDIS_CLIENT_NAME
                ]
                assert await admin.client_kill_filter(_id=subscription["id"]) == 1
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
        assert hub.stats.feed_interruptions == 1
        await eventually(lambda: hub.live)
        async with dispatch(settings, token) as ws:
            assert (await receive(ws))["type"] == "snapshot"
