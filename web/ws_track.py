"""The customer's live side: `/ws/track/{token}` and the tracking page that opens it.

One hub per web worker follows every customer socket of that worker through ONE Redis
pub/sub subscription (ETAs, events, positions), keyed by delivery id and by vehicle id,
so that 10,000 customers cost one subscription, not 10,000. For each delivery the hub
holds what the reveal rules need, renders the customer's view when something changes
and pushes it only when the view differs from the last one pushed: a vehicle that moves
inside its coarse cell is no news to a customer who may not see it yet.

Pub/sub loses what is published while nobody listens, so whenever the subscription
starts or restarts, and whenever a socket joins, the deliveries concerned are re-read
from PostgreSQL (the record) and Redis' live state. A periodic poll catches what no
message announces: dispatch's changes to a delivery, another stop of the vehicle added
or reordered, the ETA falling under the reveal threshold as time passes, and the token's
expiry, which closes the socket with code 4001.

Each socket has one pending-message slot, newest wins (a `track` message is a full
state, so an older one is worth nothing once a newer exists; overwrites are counted). A
socket whose send stays blocked for FLEETPULSE_WS_SLOW_AFTER is closed with 4000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import psycopg_pool
import redis.asyncio as redis
from aiohttp import WSMsgType, web

from fleetpulse.database import Conn
from tracker.live import LiveDevice
from tracker.redis_live import (
    ETAS_CHANNEL,
    EVENTS_CHANNEL,
    POSITIONS_CHANNEL,
    EtaMessage,
    EventMessage,
)
from tracker.reveal import TrackView
from web import tracking
from web.services import SERVICES, Services, services
from web.tracking import Tracked

log = logging.getLogger("fleetpulse.web.track")

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 30.0  # pings keep mobile carriers' NAT from dropping an idle socket
MAX_CLIENT_MESSAGE_BYTES = 1024  # clients send only pings
TICK_S = 1.0  # token expiry is checked this often
POLL_EVERY_TICKS = 5  # ... and changed rows, stop counts, time-based reveal this often
RESUBSCRIBE_MIN_S = 0.5
RESUBSCRIBE_MAX_S = 10.0
RELOAD_BATCH = 100  # deliveries re-read per pooled connection
CLOSE_TOO_SLOW = 4000
CLOSE_EXPIRED = 4001
CLOSE_GOING_AWAY = 1001

_positions = msgspec.json.Decoder(list[LiveDevice])
_eta = msgspec.json.Decoder(EtaMessage)
_event = msgspec.json.Decoder(EventMessage)
_json = msgspec.json.Encoder()


class TrackMessage(msgspec.Struct, frozen=True, tag_field="type", tag="track"):
    delivery: TrackView


class _Control(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    detail: str | None = None


class Subscriber:
    """One customer socket: a slot for the newest `track` message, one for a reply to
    the client (pong or error), and a close request. Its own task does the sending."""

    __slots__ = ("close_code", "close_reason", "control", "pending", "wake", "ws")

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.pending: str | None = None
        self.control: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.wake = asyncio.Event()

    def offer(self, text: str) -> bool:
        """Queue `text`; True when it overwrote one not yet sent."""
        overwrote = self.pending is not None
        self.pending = text
        self.wake.set()
        return overwrote

    def reply(self, message: _Control) -> None:
        self.control = _json.encode(message).decode()
        self.wake.set()

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.wake.set()

    async def run(self, hub: TrackHub, slow_after_s: float) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.close_code is not None:
                # Bounded: a client that reads nothing would block the close frame too;
                # aiohttp drops the connection when the close is cut short.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(slow_after_s):
                        await self.ws.close(
                            code=self.close_code, message=self.close_reason.encode()
                        )
                return
            for text in self._take():
                try:
                    async with asyncio.timeout(slow_after_s):
                        await self.ws.send_str(text)
                except TimeoutError:
                    hub.counts["closed_slow"] += 1
                    self.close(CLOSE_TOO_SLOW, "too slow")
                    break
                except ConnectionError:
                    return  # the client is gone; the reading side ends the socket
                hub.counts["sent"] += 1

    def _take(self) -> list[str]:
        texts = [t for t in (self.control, self.pending) if t is not None]
        self.control = self.pending = None
        return texts


@dataclass(eq=False)
class Watch:
    """One followed delivery and the sockets following it."""

    token: str
    tracked: Tracked
    subscribers: set[Subscriber] = field(default_factory=set)
    last: str | None = None  # the last message pushed
    revealed: bool = False  # in the last message pushed


class TrackHub:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.watches: dict[str, Watch] = {}
        self.by_vehicle: dict[str, set[str]] = {}
        self.counts = {
            "sent": 0,
            "coalesced": 0,
            "closed_slow": 0,
            "closed_expired": 0,
            "bad_messages": 0,
            "subscriptions": 0,
            "reloads": 0,
            "reload_errors": 0,
        }
        self._dirty: set[str] = set()
        self._dirty_added = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # the pub/sub subscription is live

    @property
    def clients(self) -> int:
        return sum(len(w.subscribers) for w in self.watches.values())

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._reload_loop(), name="track-hub-reload"),
            asyncio.create_task(self._tick_loop(), name="track-hub-tick"),
        ]

    def close_all(self, code: int, reason: str) -> None:
        for watch in self.watches.values():
            for subscriber in watch.subscribers:
                subscriber.close(code, reason)

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._listener = [], None

    # --- sockets ---------------------------------------------------------------------

    def join(self, token: str, tracked: Tracked, ws: web.WebSocketResponse) -> Subscriber:
        """Follow the delivery `tracked` (just loaded for `token`) on this socket; the
        current view is queued for it at once."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="track-hub-pubsub")
        delivery_id = tracked.delivery.id
        watch = self.watches.get(delivery_id)
        if watch is None:
            watch = self.watches[delivery_id] = Watch(token, tracked)
            self.by_vehicle.setdefault(tracked.delivery.vehicle_id, set()).add(delivery_id)
        else:
            watch.token = token
            self._replace(watch, _merged(tracked, watch.tracked))
        subscriber = Subscriber(ws)
        watch.subscribers.add(subscriber)
        self._render(watch)
        if watch.last is not None and subscriber.pending is None:
            subscriber.offer(watch.last)
        # Whatever was published between loading and joining would be missed: re-read.
        self._mark_dirty([delivery_id])
        return subscriber

    def leave(self, subscriber: Subscriber, delivery_id: str) -> None:
        watch = self.watches.get(delivery_id)
        if watch is None:
            return
        watch.subscribers.discard(subscriber)
        if not watch.subscribers:
            self._forget(watch)

    def _forget(self, watch: Watch) -> None:
        delivery = watch.tracked.delivery
        self.watches.pop(delivery.id, None)
        self._dirty.discard(delivery.id)
        ids = self.by_vehicle.get(delivery.vehicle_id)
        if ids is not None:
            ids.discard(delivery.id)
            if not ids:
                del self.by_vehicle[delivery.vehicle_id]

    def _replace(self, watch: Watch, tracked: Tracked) -> None:
        old_vehicle = watch.tracked.delivery.vehicle_id
        watch.tracked = tracked
        new_vehicle = tracked.delivery.vehicle_id
        if new_vehicle != old_vehicle:  # reassigned: follow the new vehicle
            ids = self.by_vehicle.get(old_vehicle, set())
            ids.discard(tracked.delivery.id)
            if not ids:
                self.by_vehicle.pop(old_vehicle, None)
            self.by_vehicle.setdefault(new_vehicle, set()).add(tracked.delivery.id)

    def _render(self, watch: Watch, now: datetime | None = None) -> None:
        view = tracking.view(watch.tracked, self.settings, now)
        text = _json.encode(TrackMessage(view)).decode()
        watch.revealed = view.revealed
        if text == watch.last:
            return
        watch.last = text
        for subscriber in watch.subscribers:
            if subscriber.offer(text):
                self.counts["coalesced"] += 1

    def _expire(self, watch: Watch) -> None:
        for subscriber in watch.subscribers:
            subscriber.close(CLOSE_EXPIRED, "this tracking link has expired")
            self.counts["closed_expired"] += 1
        self._forget(watch)

    # --- the shared subscription -----------------------------------------------------

    async def _listen(self) -> None:
        delay = RESUBSCRIBE_MIN_S
        while True:
            pubsub = self.services.redis.pubsub()
            try:
                await pubsub.subscribe(ETAS_CHANNEL, EVENTS_CHANNEL, POSITIONS_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._on_message(message["channel"], message["data"])
                    elif message["type"] == "subscribe":
                        # Also after redis-py reconnected and subscribed again by itself:
                        # what was published meanwhile was missed, so re-read it all.
                        self._subscribed(message["channel"])
                        delay = RESUBSCRIBE_MIN_S
            except redis.RedisError as exc:
                self.subscribed.clear()
                log.warning(
                    "customer tracking lost its Redis subscription (%s); retry in %.1f s",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_MAX_S)
            finally:
                with contextlib.suppress(redis.RedisError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _subscribed(self, channel: bytes | str) -> None:
        if _name(channel) == ETAS_CHANNEL:
            self.counts["subscriptions"] += 1
        self.subscribed.set()
        self._mark_dirty(list(self.watches))

    def _on_message(self, channel: bytes | str, data: bytes | str) -> None:
        name = _name(channel)
        try:
            if name == POSITIONS_CHANNEL:
                if self.by_vehicle:
                    self._on_positions(_positions.decode(data))
            elif name == ETAS_CHANNEL:
                self._on_eta(_eta.decode(data))
            elif name == EVENTS_CHANNEL:
                self._on_event(_event.decode(data))
        except (msgspec.DecodeError, ValueError) as exc:  # a bad payload or a bad time
            self.counts["bad_messages"] += 1
            log.warning("a message on %s is not understood: %s", name, exc)

    def _on_positions(self, devices: Iterable[LiveDevice]) -> None:
        for device in devices:
            for delivery_id in self.by_vehicle.get(device.device_id, ()):
                watch = self.watches[delivery_id]
                moved = watch.tracked.with_vehicle(device)
                if moved is not watch.tracked:
                    watch.tracked = moved
                    self._render(watch)

    def _on_eta(self, message: EtaMessage) -> None:
        watch = self.watches.get(message.delivery_id)
        if watch is None:
            return
        delivery = watch.tracked.delivery
        if message.state != delivery.state or message.late_risk != delivery.late_risk:
            self._mark_dirty([delivery.id])  # the row says which state is settled
        updated = watch.tracked.with_eta(tracking.eta_facts(message), message.vehicle_id)
        if updated is not watch.tracked:
            watch.tracked = updated
            self._render(watch)

    def _on_event(self, message: EventMessage) -> None:
        if message.delivery_id is None:
            return  # a geofence or device event: nothing a customer sees
        # This delivery changed, or another stop of its vehicle did (the count before).
        concerned = set(self.by_vehicle.get(message.device_id, ()))
        if message.delivery_id in self.watches:
            concerned.add(message.delivery_id)
        self._mark_dirty(concerned)

    # --- re-reading the record -------------------------------------------------------

    def _mark_dirty(self, delivery_ids: Iterable[str]) -> None:
        before = len(self._dirty)
        self._dirty.update(i for i in delivery_ids if i in self.watches)
        if len(self._dirty) != before:
            self._dirty_added.set()

    async def _reload_loop(self) -> None:
        delay = RESUBSCRIBE_MIN_S
        while True:
            await self._dirty_added.wait()
            self._dirty_added.clear()
            while self._dirty:
                batch = [self._dirty.pop() for _ in range(min(RELOAD_BATCH, len(self._dirty)))]
                try:
                    async with self.services.db() as conn:
                        for delivery_id in batch:
                            await self._reload_one(conn, delivery_id)
                    delay = RESUBSCRIBE_MIN_S
                except (psycopg.Error, psycopg_pool.PoolTimeout, redis.RedisError) as exc:
                    log.warning("customer tracking could not re-read deliveries: %s", exc)
                    self._dirty.update(i for i in batch if i in self.watches)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESUBSCRIBE_MAX_S)

    async def _reload_one(self, conn: Conn, delivery_id: str) -> None:
        try:
            await self._reload(conn, delivery_id)
        except (psycopg.OperationalError, redis.RedisError):
            raise  # a service is down: the whole batch waits and is tried again
        except Exception:
            # A row this code cannot read must not stop the others from being read.
            self.counts["reload_errors"] += 1
            log.exception("customer tracking could not re-read delivery %s", delivery_id)

    async def _reload(self, conn: Conn, delivery_id: str) -> None:
        watch = self.watches.get(delivery_id)
        if watch is None:
            return
        fresh = await tracking.load(conn, self.services.live, watch.token, datetime.now(UTC))
        self.counts["reloads"] += 1
        if self.watches.get(delivery_id) is not watch:
            return  # everyone left while it loaded
        if fresh is None or fresh.delivery.id != delivery_id:
            self._expire(watch)
            return
        self._replace(watch, _merged(fresh, watch.tracked))
        self._render(watch)

    async def _tick_loop(self) -> None:
        ticks = 0
        since: datetime | None = None
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1
            now = datetime.now(UTC)
            # Re-check expired tokens against the record rather than closing on the
            # time held here: a token's expiry may have been extended.
            self._mark_dirty([i for i, w in self.watches.items() if w.tracked.expires_at <= now])
            if ticks % POLL_EVERY_TICKS or not self.watches:
                continue
            try:
                since = await self._poll(since)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                log.warning("customer tracking could not poll deliveries: %s", exc)
            now = datetime.now(UTC)
            for watch in list(self.watches.values()):
                eta = watch.tracked.eta
                if (
                    not watch.revealed
                    and eta is not None
                    and eta.p50 - self.settings.reveal_eta < now
                ):
                    self._render(watch, now)  # the ETA fell under the threshold as time passed

    async def _poll(self, since: datetime | None) -> datetime:
        """Tokens no longer valid, rows changed since the last poll, and every followed
        delivery's stop count."""
        async with self.services.db() as conn:
            cur = await conn.execute("SELECT clock_timestamp()")
            row = await cur.fetchone()
            assert row is not None
            polled_at: datetime = row[0]
            # A token re-issued by dispatch stops working at once: close its sockets.
            valid = await tracking.valid_tokens(conn, [w.token for w in self.watches.values()])
            self._mark_dirty(i for i, w in self.watches.items() if w.token not in valid)
            if since is not None:
                changed = await tracking.changed_since(conn, list(self.watches), since)
                self._mark_dirty(
                    i
                    for i, at in changed.items()
                    if i in self.watches and at != self.watches[i].tracked.updated_at
                )
            counts = await tracking.stops_before(
                conn, [w.tracked.delivery for w in self.watches.values()]
            )
        for delivery_id, count in counts.items():
            watch = self.watches.get(delivery_id)
            if watch is not None and watch.tracked.stops_before != count:
                self._replace(watch, tracking.with_stops(watch.tracked, count))
                self._render(watch)
        return polled_at


def _name(channel: bytes | str) -> str:
    return channel.decode() if isinstance(channel, bytes) else channel


def _merged(fresh: Tracked, held: Tracked) -> Tracked:
    """The record just read, but whatever newer the subscription brought meanwhile."""
    if held.vehicle is not None:
        fresh = fresh.with_vehicle(held.vehicle)
    if held.eta is not None:
        fresh = fresh.with_eta(held.eta, held.delivery.vehicle_id)
    return fresh


# --- handlers ----------------------------------------------------------------------------

TRACK_HUB = web.AppKey("track_hub", TrackHub)


async def track_socket(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    tracked = await tracking.open_token(services(request), token)  # 404 before upgrading
    hub = request.app[TRACK_HUB]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_CLIENT_MESSAGE_BYTES)
    await ws.prepare(request)
    subscriber = hub.join(token, tracked, ws)
    slow_after_s = hub.settings.ws_slow_after.total_seconds()
    sender = asyncio.create_task(subscriber.run(hub, slow_after_s), name="track-socket-send")
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT and _is_ping(message.data):
                subscriber.reply(_Control("pong"))
            elif message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                subscriber.reply(_Control("error", 'this stream takes only {"type": "ping"}'))
    finally:
        hub.leave(subscriber, tracked.delivery.id)
        if subscriber.close_code is None or sender.done():
            sender.cancel()
        # A close the server started finishes its handshake; one the client started
        # needs no more sending.
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    return ws


def _is_ping(data: str) -> bool:
    try:
        return bool(msgspec.json.decode(data, type=_Control).type == "ping")
    except msgspec.DecodeError:
        return False


_PAGE_HEADERS = {
    # The token is in the page's URL: never hand it to another site.
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


async def track_page(request: web.Request) -> web.StreamResponse:
    """The page reads the token from its own URL; it shows "no such link" itself, so
    serving it says nothing about whether a token exists."""
    return web.FileResponse(STATIC / "track.html", headers=_PAGE_HEADERS)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    hub = app[TRACK_HUB]
    hub.start()
    yield
    await hub.stop()


async def _close_sockets(app: web.Application) -> None:
    app[TRACK_HUB].close_all(CLOSE_GOING_AWAY, "server shutting down")


def setup(app: web.Application) -> None:
    app[TRACK_HUB] = TrackHub(app[SERVICES])
    app.router.add_get("/ws/track/{token}", track_socket)
    # Its script and style are static files, served by web.pages under /static/.
    app.router.add_get("/track/{token}", track_page)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_sockets)
