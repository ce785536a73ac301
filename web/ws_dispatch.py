"""`/ws/dispatch`: the fleet live for dispatch, as docs/websockets.md specifies.

A connection goes: token and filter checked before the upgrade (refusals are problem
documents); joined to the hub, held; snapshot read (and, with `since`, the events
stored after that one read from PostgreSQL); released into the outbox as snapshot,
replayed events, `resumed`; then live. Joining before reading means nothing published
meanwhile falls between the snapshot and the live stream; what both carry is sent once.

`setup(app)` registers the route and runs the worker's hub for the app's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import psycopg_pool
import redis.asyncio as redis
from aiohttp import WSMsgType, web

from fleetpulse import process_stats
from fleetpulse.errors import ServiceUnavailable
from tracker.live import LiveDevice
from tracker.redis_live import DEVICE_KEY_PREFIX, LIVE_GEO_KEY, EventMessage
from web import alert_store, dispatch_filter
from web.api import authenticate
from web.auth import Principal, Role
from web.client_queue import Frame
from web.dispatch_filter import DispatchFilter, FilterError
from web.hub import CLOSE_GOING_AWAY, HUB, Hub, Subscriber
from web.problems import Problem
from web.services import SERVICES, Services, services

log = logging.getLogger(__name__)

PATH = "/ws/dispatch"
# Events commit out of order across trackers: a reconnect replays this much before the
# last event the client saw, so that one committed late is not skipped.
RESUME_OVERLAP = timedelta(seconds=5)
MAX_REPLAY = 10_000
MAX_SINCE_CHARS = 512
MAX_CLIENT_MESSAGE_BYTES = 1024 * 1024
HEARTBEAT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
SNAPSHOT_CHUNK = 1000
# Redis's GEOSEARCH boxes are metric around a centre, which fits a city or a region;
# a box spanning more degrees (a map zoomed out) is cut from all devices instead.
GEO_BOX_MAX_DEG = 20.0

# Failures of PostgreSQL or Redis, which a connection survives or reports, not bugs.
SERVICE_ERRORS = (
    redis.RedisError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    ServiceUnavailable,
    OSError,
)
CLOSE_UNAVAILABLE = 1011
_UNAVAILABLE = "a service FleetPulse needs is unavailable; retry shortly"

_json = msgspec.json.Encoder()
_device = msgspec.json.Decoder(LiveDevice)


class FilterCommand(msgspec.Struct, tag="filter", tag_field="type", forbid_unknown_fields=True):
    bbox: list[float] | None = None
    devices: list[str] | None = None
    kinds: list[str] | None = None


class AckCommand(msgspec.Struct, tag="ack", tag_field="type", forbid_unknown_fields=True):
    event_id: str
    note: str = ""


class PingCommand(msgspec.Struct, tag="ping", tag_field="type"):
    pass


_commands = msgspec.json.Decoder(FilterCommand | AckCommand | PingCommand)


def error_frame(detail: str) -> Frame:
    return Frame(_json.encode({"type": "error", "detail": detail}))


def event_frame(event: EventMessage) -> Frame:
    return Frame(b'{"type":"event","event":' + _json.encode(event) + b"}", event.id)


# --- reading what a snapshot holds ----------------------------------------------------


async def _live_states(svc: Services, wanted: DispatchFilter) -> list[LiveDevice]:
    """The live states the filter lets through, read from Redis."""
    box = wanted.bbox
    if wanted.devices is not None:
        ids = sorted(wanted.devices)
    elif box is not None and max(box.north - box.south, box.east - box.west) <= GEO_BOX_MAX_DEG:
        return await svc.live.in_box(box.south, box.west, box.north, box.east)
    else:
        members = await svc.redis.zrange(LIVE_GEO_KEY, 0, -1)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    states = []
    for start in range(0, len(ids), SNAPSHOT_CHUNK):
        keys = [DEVICE_KEY_PREFIX + i for i in ids[start : start + SNAPSHOT_CHUNK]]
        for raw in await svc.redis.mget(keys):
            if raw is not None:
                state = _device.decode(raw)
                if wanted.position(state.device_id, state.lat, state.lon):
                    states.append(state)
    return states


class _Snapshot:
    def __init__(self, devices: list[LiveDevice], alerts: list[EventMessage]) -> None:
        self.devices = devices
        self.alerts = alerts

    @property
    def frame(self) -> Frame:
        return Frame(
            b'{"type":"snapshot","devices":'
            + _json.encode(self.devices)
            + b',"alerts":'
            + _json.encode(self.alerts)
            + b',"worker":'
            # Which web worker serves the connection: with several behind one port, what
            # an operator (or a test) needs to tell them apart.
            + _json.encode(process_stats.process_name())
            + b"}"
        )

    @property
    def newest(self) -> dict[str, datetime]:
        return {d.device_id: d.ts for d in self.devices}


async def _snapshot(svc: Services, wanted: DispatchFilter) -> _Snapshot:
    devices = await _live_states(svc, wanted)
    async with svc.db() as conn:
        alerts = await alert_store.unacknowledged(
            conn,
            since=datetime.now(UTC) - alert_store.RECENT_ALERTS,
            devices=wanted.devices,
            kinds=wanted.kinds,
        )
    return _Snapshot(devices, alerts)


# --- one connection ---------------------------------------------------------------------


class _Session:
    def __init__(
        self,
        request: web.Request,
        hub: Hub,
        ws: web.WebSocketResponse,
        principal: Principal,
        wanted: DispatchFilter,
    ) -> None:
        self.request = request
        self.svc = services(request)
        self.hub = hub
        self.ws = ws
        self.principal = principal
        self.subscriber: Subscriber = hub.join(wanted, self.close)
        self._writer = asyncio.create_task(self._write(), name="ws-dispatch-writer")
        self._closing: asyncio.Task[None] | None = None

    def send(self, frame: Frame) -> None:
        self.subscriber.outbox.put(frame, self.hub.now())
        self.subscriber.wake.set()

    async def _write(self) -> None:
        outbox, wake, stats = self.subscriber.outbox, self.subscriber.wake, self.hub.stats
        try:
            while True:
                data = outbox.take(self.hub.now())
                if data is None:
                    wake.clear()
                    await wake.wait()
                    continue
                await self.ws.send_frame(data, WSMsgType.TEXT)
                stats.messages_sent += 1
        except ConnectionError:
            return  # the client went away; the receive loop ends too

    def close(self, code: int, reason: str) -> None:
        """Called by the hub (too slow, feed interrupted, shutting down): never waits."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(code, reason), name="ws-dispatch-close")

    async def _close(self, code: int, reason: str) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason.encode(), drain=False), CLOSE_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError):
            # It reads nothing, not even the close frame: drop the connection.
            transport = self.request.transport
            if transport is not None:
                transport.abort()

    async def finish(self) -> None:
        self.hub.leave(self.subscriber)
        if self._closing is not None:
            await self._closing
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    # --- the start: snapshot, missed events, live -----------------------------------

    async def start(self, since: str | None) -> None:
        snapshot = await _snapshot(self.svc, self.subscriber.filter)
        first = [snapshot.frame]
        skip = {a.id for a in snapshot.alerts}
        if since is not None:
            self.hub.stats.resumes += 1
            replayed = await self._missed(since)
            ids = [f.event_id for f in replayed if f.event_id is not None]
            first.extend(replayed)
            first.append(Frame(_json.encode({"type": "resumed", "missed": len(ids)})))
            skip.update(ids)
        self.subscriber.outbox.release(
            first,
            self.hub.now(),
            newer_than=snapshot.newest,
            skip_ids=skip,
            skip_for_s=RESUME_OVERLAP.total_seconds(),
        )
        self.subscriber.wake.set()

    async def _missed(self, since: str) -> list[Frame]:
        """The events stored after `since`, with the overlap; an `error` first when the
        id is unknown (the snapshot's alerts then stand in for them) or when more were
        missed than one reconnect replays."""
        wanted = self.subscriber.filter
        async with self.svc.db() as conn:
            at = await alert_store.recorded_at(conn, since)
            if at is None:
                return [
                    error_frame(
                        f"since: no stored event has the id {since!r}, so the events missed "
                        "cannot be found; the snapshot's alerts list the unacknowledged ones"
                    )
                ]
            events, truncated = await alert_store.recorded_after(
                conn,
                at - RESUME_OVERLAP,
                exclude_id=since,
                devices=wanted.devices,
                kinds=wanted.kinds,
                limit=MAX_REPLAY,
            )
        frames = [event_frame(e) for e in events]
        if truncated:
            frames.insert(
                0,
                error_frame(
                    f"since: more than {MAX_REPLAY} events were missed; only the newest "
                    f"{MAX_REPLAY} follow, older ones are in the events API"
                ),
            )
        return frames

    # --- client messages ------------------------------------------------------------

    async def handle(self, text: str) -> None:
        try:
            command = _commands.decode(text)
        except msgspec.DecodeError as exc:
            self.send(error_frame(f"message not understood: {exc}"))
            return
        if isinstance(command, PingCommand):
            self.send(Frame(b'{"type":"pong"}'))
        elif isinstance(command, FilterCommand):
            await self._refilter(command)
        else:
            await self._ack(command)

    async def _refilter(self, command: FilterCommand) -> None:
        try:
            wanted = dispatch_filter.from_message(command.bbox, command.devices, command.kinds)
        except FilterError as exc:
            self.send(error_frame(f"filter: {exc}"))
            return
        self.subscriber.outbox.hold()
        self.subscriber.filter = wanted
        try:
            snapshot = await _snapshot(self.svc, wanted)
        except SERVICE_ERRORS as exc:
            log.warning("dispatch snapshot failed: %s", exc)
            # The new filter stands; what arrived meanwhile follows the error.
            self.subscriber.outbox.release([error_frame(f"filter: {_UNAVAILABLE}")], self.hub.now())
            self.subscriber.wake.set()
            return
        self.subscriber.outbox.release(
            [snapshot.frame],
            self.hub.now(),
            newer_than=snapshot.newest,
            skip_ids={a.id for a in snapshot.alerts},
            skip_for_s=RESUME_OVERLAP.total_seconds(),
        )
        self.subscriber.wake.set()

    async def _ack(self, command: AckCommand) -> None:
        if self.principal.role < Role.DISPATCHER:
            self.send(
                error_frame(
                    f"ack: acknowledging alerts needs the dispatcher role; the token "
                    f"{self.principal.token_id} is a {self.principal.role.label}"
                )
            )
            return
        if len(command.note) > alert_store.MAX_NOTE_CHARS:
            self.send(error_frame(f"ack: a note has at most {alert_store.MAX_NOTE_CHARS} chars"))
            return
        try:
            async with self.svc.db() as conn:
                ack = await alert_store.acknowledge(
                    conn, command.event_id, self.principal, command.note
                )
        except alert_store.UnknownEvent:
            self.send(error_frame(f"ack: no event has the id {command.event_id!r}"))
            return
        except alert_store.AlreadyAcknowledged as exc:
            self.send(error_frame(f"ack: {exc}"))
            return
        except SERVICE_ERRORS as exc:
            log.warning("dispatch ack failed: %s", exc)
            self.send(error_frame(f"ack: {_UNAVAILABLE}"))
            return
        # Everyone, this client included, hears of it through the hub.
        await alert_store.announce(self.svc.redis, ack)


# --- the handler ------------------------------------------------------------------------


def _since(request: web.Request) -> str | None:
    since = request.query.get("since") or None
    if since is not None and len(since) > MAX_SINCE_CHARS:
        raise Problem(
            400, f"query parameter 'since': an event id has at most {MAX_SINCE_CHARS} chars"
        )
    return since


async def dispatch_socket(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request, Role.VIEWER, allow_query=True)
    try:
        wanted = dispatch_filter.from_query(
            request.query.get("bbox"), request.query.get("devices"), request.query.get("kinds")
        )
    except FilterError as exc:
        raise Problem(400, f"query parameter {exc}") from None
    since = _since(request)
    hub = request.app[HUB]
    ws = web.WebSocketResponse(
        compress=False, heartbeat=HEARTBEAT_S, max_msg_size=MAX_CLIENT_MESSAGE_BYTES
    )
    if not ws.can_prepare(request).ok:
        raise Problem(426, f"{PATH} is a websocket: connect with a websocket client")
    if not hub.live:
        raise Problem(503, "the live feed is reconnecting to Redis; retry shortly")
    await ws.prepare(request)
    session = _Session(request, hub, ws, principal, wanted)
    try:
        await session.start(since)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await session.handle(message.data)
            elif message.type is WSMsgType.BINARY:
                session.send(error_frame("messages are JSON text frames"))
    except SERVICE_ERRORS as exc:
        log.warning("dispatch websocket closed: %s", exc)
        session.close(CLOSE_UNAVAILABLE, _UNAVAILABLE)
    finally:
        await session.finish()
    return ws


# --- wiring -----------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    settings = app[SERVICES].settings
    hub = Hub(
        settings.redis_url,
        queue_size=settings.ws_queue,
        slow_after_s=settings.ws_slow_after.total_seconds(),
    )
    app[HUB] = hub
    app.router.add_get(PATH, dispatch_socket)

    async def run_hub(app: web.Application) -> AsyncIterator[None]:
        async with hub.running():
            yield

    async def close_clients(app: web.Application) -> None:
        hub.close_all(CLOSE_GOING_AWAY, "server shutting down")

    app.cleanup_ctx.append(run_hub)
    app.on_shutdown.append(close_clients)
