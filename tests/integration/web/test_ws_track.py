"""`/ws/track/{token}` with the `websockets` client against a served app, real PostgreSQL
and Redis: the view at once, a push on every ETA or state change, the vehicle's moves
only once revealed, one Redis subscription per worker whatever the number of customers,
and the socket closed when its token stops working."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as redis
import websockets

from fleetpulse.settings import Settings
from tests.conftest import WAIT_TIMEOUT_S, eventually, running_web
from tests.integration.web.tracking_setup import (
    FAR,
    NEAR,
    database,
    give_eta,
    move,
    new_delivery,
    report,
    vehicle_state,
)
from tracker import delivery_store
from tracker.deliveries import DeliveryState
from tracker.redis_live import ETAS_CHANNEL, EVENTS_CHANNEL, POSITIONS_CHANNEL
from web.ws_track import CLOSE_EXPIRED

Socket = websockets.ClientConnection


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[str]:
    async with running_web(settings) as base:
        yield base.replace("http://", "ws://")


@asynccontextmanager
async def follow(base: str, token: str) -> AsyncIterator[Socket]:
    async with websockets.connect(f"{base}/ws/track/{token}") as ws:
        yield ws


async def next_view(ws: Socket) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S))
    assert message["type"] == "track", message
    return message["delivery"]  # type: ignore[no-any-return]


async def view_where(ws: Socket, check: Any) -> dict[str, Any]:
    """The first pushed view that passes `check` (others may come first: positions)."""
    while True:
        view = await next_view(ws)
        if check(view):
            return view


async def subscribers(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        counts = dict(await client.pubsub_numsub(ETAS_CHANNEL, EVENTS_CHANNEL, POSITIONS_CHANNEL))
    finally:
        await client.aclose()
    assert len(set(counts.values())) == 1, counts  # the three channels go together
    return int(next(iter(counts.values())))


async def test_the_view_comes_at_once_and_again_on_every_eta_change(settings: Settings) -> None:
    token = await new_delivery(settings, "p-1", "van-1")
    first = await give_eta(settings, "p-1", 40)
    async with served(settings) as base, follow(base, token) as ws:
        view = await next_view(ws)
        assert view["delivery_id"] == "p-1"
        assert datetime.fromisoformat(view["eta"]["p50"]) == first.p50
        later = await give_eta(settings, "p-1", 55)
        view = await next_view(ws)
        assert datetime.fromisoformat(view["eta"]["p50"]) == later.p50
        assert datetime.fromisoformat(view["eta"]["p90"]) == later.p90


async def test_a_state_change_is_pushed_and_a_final_one_hides_the_vehicle(
    settings: Settings,
) -> None:
    token = await new_delivery(settings, "p-1", "van-1")
    await move(settings, vehicle_state("van-1", NEAR))
    async with served(settings) as base, follow(base, token) as ws:
        view = await next_view(ws)
        assert view["revealed"] and view["position"] is not None  # the next stop
        await report(settings, "p-1", DeliveryState.DELIVERED)
        view = await view_where(ws, lambda v: v["state"] == "delivered")
        assert (view["position"], view["area"], view["eta"]) == (None, None, None)


async def test_moves_inside_the_coarse_cell_are_no_news_until_revealed(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, reveal_eta=timedelta(minutes=10), reveal_stops=0)
    await new_delivery(settings, "p-1", "van-1", sequence=1)
    token = await new_delivery(settings, "p-2", "van-1", sequence=2)
    t0 = datetime.now(UTC)
    await move(settings, vehicle_state("van-1", FAR, t0))
    await give_eta(settings, "p-2", 30)
    async with served(settings) as base, follow(base, token) as ws:
        view = await next_view(ws)
        assert not view["revealed"] and view["area"] is not None
        # A move of a few metres: the same coarse cell, so nothing to push. The ETA
        # published after it is the next thing this customer hears.
        nudged = (FAR[0] + 0.0003, FAR[1] + 0.0003)
        await move(settings, vehicle_state("van-1", nudged, t0 + timedelta(seconds=5)))
        eta = await give_eta(settings, "p-2", 20)
        view = await next_view(ws)
        assert datetime.fromisoformat(view["eta"]["p50"]) == eta.p50
        assert view["position"] is None
        # Close now: the exact position is shown, and each move is pushed.
        await give_eta(settings, "p-2", 6)
        view = await view_where(ws, lambda v: v["revealed"])
        assert view["area"] is None
        await move(settings, vehicle_state("van-1", NEAR, t0 + timedelta(seconds=10)))
        view = await view_where(ws, lambda v: v["position"]["lat"] == NEAR[0])
        assert (view["position"]["lat"], view["position"]["lon"]) == NEAR


async def test_dispatch_changes_announced_by_no_message_are_pushed(settings: Settings) -> None:
    token = await new_delivery(settings, "p-2", "van-1", sequence=2)
    async with served(settings) as base, follow(base, token) as ws:
        view = await next_view(ws)
        assert view["stops_before"] == 0
        # A new window, straight into the row (as the CLI does): no message announces it.
        start = datetime.now(UTC) + timedelta(hours=3)
        async with database(settings) as conn:
            await delivery_store.change(
                conn, "p-2", delivery_store.Change(window=(start, start + timedelta(hours=1)))
            )
        view = await view_where(ws, lambda v: datetime.fromisoformat(v["window"]["start"]) == start)
        # Another stop inserted before this one.
        await new_delivery(settings, "p-1", "van-1", sequence=1)
        view = await view_where(ws, lambda v: v["stops_before"] == 1)
        assert datetime.fromisoformat(view["window"]["end"]) == start + timedelta(hours=1)


async def test_a_customer_hears_nothing_of_another_delivery(settings: Settings) -> None:
    mine = await new_delivery(settings, "p-1", "van-1", sequence=1)
    await new_delivery(settings, "p-2", "van-1", sequence=2)
    async with served(settings) as base, follow(base, mine) as ws:
        await next_view(ws)
        await give_eta(settings, "p-2", 50)  # the other customer's news
        own = await give_eta(settings, "p-1", 12)
        raw = await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S)
        assert "p-2" not in raw
        view = json.loads(raw)["delivery"]
        assert view["delivery_id"] == "p-1"
        assert datetime.fromisoformat(view["eta"]["p50"]) == own.p50


async def test_one_subscription_serves_every_customer_of_a_worker(settings: Settings) -> None:
    tokens = [await new_delivery(settings, f"p-{i}", f"van-{i % 3}") for i in range(25)]
    async with served(settings) as base, AsyncExitStack() as stack:
        first = await stack.enter_async_context(follow(base, tokens[0]))
        await next_view(first)
        with_one = await eventually(lambda: subscribers(settings))
        sockets = [await stack.enter_async_context(follow(base, t)) for t in tokens[1:]]
        for ws in sockets:
            await next_view(ws)
        assert await subscribers(settings) == with_one
        # ... and it still reaches each of them.
        eta = await give_eta(settings, "p-24", 15)
        view = await view_where(sockets[-1], lambda v: v["eta"] is not None)
        assert datetime.fromisoformat(view["eta"]["p50"]) == eta.p50


async def test_two_sockets_on_one_delivery_both_hear_it(settings: Settings) -> None:
    token = await new_delivery(settings, "p-1", "van-1")
    async with served(settings) as base, follow(base, token) as a, follow(base, token) as b:
        await next_view(a)
        await next_view(b)
        eta = await give_eta(settings, "p-1", 33)
        for ws in (a, b):
            view = await view_where(ws, lambda v: v["eta"] is not None)
            assert datetime.fromisoformat(view["eta"]["p50"]) == eta.p50


async def test_what_was_missed_while_redis_was_away_is_read_again(settings: Settings) -> None:
    token = await new_delivery(settings, "p-1", "van-1")
    await give_eta(settings, "p-1", 40)
    async with served(settings) as base, follow(base, token) as ws:
        await next_view(ws)
        await eventually(lambda: subscribers(settings))
        # An ETA stored but never heard (published while nobody listened), then the
        # subscription is cut: when it is back, the record is read again.
        missed = await give_eta(settings, "p-1", 25, publish=False)
        client = redis.Redis.from_url(settings.redis_url)
        try:
            assert await client.client_kill_filter(_type="pubsub") >= 1
        finally:
            await client.aclose()
        await view_where(ws, lambda v: datetime.fromisoformat(v["eta"]["p50"]) == missed.p50)


async def test_the_socket_closes_when_its_token_expires(settings: Settings) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    token = await new_delivery(settings, "p-1", expires_at=expires)
    async with served(settings) as base, follow(base, token) as ws:
        await next_view(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CLOSE_EXPIRED
        assert datetime.now(UTC) >= expires
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with follow(base, token):
                pass
        assert refused.value.response.status_code == 404


async def test_a_reissued_token_closes_the_old_links_socket(settings: Settings) -> None:
    token = await new_delivery(settings, "p-1")
    async with served(settings) as base, follow(base, token) as ws:
        await next_view(ws)
        async with database(settings) as conn:
            await conn.execute(
                "UPDATE deliveries SET token_hash = %s WHERE id = 'p-1'",
                (delivery_store.hash_token("a-new-token-for-p-1"),),
            )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_EXPIRED


async def test_unknown_tokens_are_refused_before_the_upgrade(settings: Settings) -> None:
    async with served(settings) as base:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with follow(base, "not-a-token"):
                pass
    assert refused.value.response.status_code == 404


async def test_pings_are_answered_and_anything_else_is_an_error(settings: Settings) -> None:
    token = await new_delivery(settings, "p-1")
    async with served(settings) as base, follow(base, token) as ws:
        await next_view(ws)
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S)) == {"type": "pong"}
        await ws.send("hello")
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S))
        assert reply["type"] == "error"
