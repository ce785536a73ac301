"""The dispatch hub: per web worker ONE Redis pub/sub subscription to the positions,
events, ETAs and acknowledgements channels, fanned out to every dispatch websocket.

A message is decoded and encoded once; each client then gets it through its own
bounded outbox (web.client_queue), filtered by what it watches. The hub never awaits a
client: putting into an outbox is synchronous, each client's writer sends on its own,
so one slow client never slows the others. A client that stays too slow is cut off
with close code 4000 and counted.

Pub/sub loses what is published while the subscription is down. So when the
subscription breaks, every client is closed with 1013 (try again later) and the hub
resubscribes: clients reconnect with `since` and get what they missed from PostgreSQL.
The hub's Redis client does not retry on its own, so no break goes unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
import redis.asyncio as redis
from aiohttp import web
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fleetpulse.settings import mask_url
from tracker.live import LiveDevice
from tracker.redis_live import (
    ETAS_CHANNEL,
    EVENTS_CHANNEL,
    POSITIONS_CHANNEL,
    EtaMessage,
    EventMessage,
)
from web.alert_store import ACKS_CHANNEL, Ack
from web.client_queue import Frame, Outbox, Position, Positions
from web.dispatch_filter import DispatchFilter

log = logging.getLogger(__name__)

CHANNELS = (POSITIONS_CHANNEL, EVENTS_CHANNEL, ETAS_CHANNEL, ACKS_CHANNEL)
CLOSE_TOO_SLOW = 4000
CLOSE_FEED_INTERRUPTED = 1013  # try again later
CLOSE_GOING_AWAY = 1001
SUBSCRIBE_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0
# The listener lets the clients' writers run after this many bus messages.
YIELD_EVERY = 16
SWEEP_MAX_S = 0.5
# How the subscription shows in Redis's CLIENT LIST.
REDIS_CLIENT_NAME = "fleetpulse-dispatch-hub"

_positions = msgspec.json.Decoder(list[LiveDevice])
_event = msgspec.json.Decoder(EventMessage)
_eta = msgspec.json.Decoder(EtaMessage)
_ack = msgspec.json.Decoder(Ack)
_json = msgspec.json.Encoder()


@dataclass
class HubStats:
    """The hub's numbers, for /metrics: `clients` and `queued` are levels, the rest
    running totals since the worker started."""

    clients: int = 0  # dispatch websockets connected now
    queued: int = 0  # frames waiting in all outboxes (as of the last sweep)
    connections: int = 0
    messages_sent: int = 0
    positions_coalesced: int = 0
    states_superseded: int = 0
    duplicates_dropped: int = 0
    slow_disconnects: int = 0
    feed_interruptions: int = 0
    bus_messages: int = 0
    bad_bus_messages: int = 0
    resumes: int = 0


class Subscriber:
    """One client as the hub sees it: its filter, its outbox, how to wake its writer,
    and how to close it (code, reason)."""

    __slots__ = ("close", "filter", "outbox", "wake")

    def __init__(
        self, filter: DispatchFilter, outbox: Outbox, close: Callable[[int, str], None]
    ) -> None:
        self.filter = filter
        self.outbox = outbox
        self.close = close
        self.wake = asyncio.Event()


class Hub:
    def __init__(self, redis_url: str, *, queue_size: int, slow_after_s: float) -> None:
        self.redis_url = redis_url
        self.queue_size = queue_size
        self.slow_after_s = slow_after_s
        self.stats = HubStats()
        self.live = False
        self._subscribers: set[Subscriber] = set()
        self._handlers: dict[bytes, Callable[[bytes, float], None]] = {
            POSITIONS_CHANNEL.encode(): self._positions,
            EVENTS_CHANNEL.encode(): self._event,
            ETAS_CHANNEL.encode(): self._eta,
            ACKS_CHANNEL.encode(): self._ack,
        }
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- clients -------------------------------------------------------------------

    def join(self, filter: DispatchFilter, close: Callable[[int, str], None]) -> Subscriber:
        """A new client, held until its snapshot is released into its outbox."""
        outbox = Outbox(self.queue_size, self.slow_after_s, self.stats, held=True)
        subscriber = Subscriber(filter, outbox, close)
        self._subscribers.add(subscriber)
        self.stats.clients = len(self._subscribers)
        self.stats.connections += 1
        return subscriber

    def leave(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        self.stats.clients = len(self._subscribers)

    def close_all(self, code: int, reason: str) -> None:
        for subscriber in list(self._subscribers):
            self.leave(subscriber)
            subscriber.close(code, reason)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def _cut_off(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self.leave(subscriber)
            self.stats.slow_disconnects += 1
            log.info(
                "a dispatch client was too slow; disconnected (%d so far)",
                self.stats.slow_disconnects,
            )
            subscriber.close(CLOSE_TOO_SLOW, "too slow")

    def _deliver(self, subscriber: Subscriber) -> None:
        subscriber.wake.set()
        if subscriber.outbox.overflowing:
            self._cut_off(subscriber)

    # --- fan-out -------------------------------------------------------------------

    def dispatch(self, channel: bytes, data: bytes, now: float) -> None:
        """One bus message to every client that wants it."""
        self.stats.bus_messages += 1
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(data, now)
        except msgspec.DecodeError as exc:
            self.stats.bad_bus_messages += 1
            log.warning("unreadable message on %s skipped: %s", channel.decode(), exc)

    def _positions(self, data: bytes, now: float) -> None:
        states = {
            d.device_id: Position(d.device_id, d.ts, d.lat, d.lon, _json.encode(d))
            for d in _positions.decode(data)
        }
        if not states:
            return
        whole = Positions(states)
        for subscriber in list(self._subscribers):
            wanted = subscriber.filter
            if wanted.every_position:
                subscriber.outbox.put_positions(whole, now)
            else:
                picked = {k: s for k, s in states.items() if wanted.position(k, s.lat, s.lon)}
                if not picked:
                    continue
                subscriber.outbox.put_positions(Positions(picked), now)
            self._deliver(subscriber)

    def _event(self, data: bytes, now: float) -> None:
        event = _event.decode(data)
        frame = Frame(b'{"type":"event","event":' + data + b"}", event.id)
        for subscriber in list(self._subscribers):
            if subscriber.filter.event(event.device_id, event.kind):
                subscriber.outbox.put(frame, now)
                self._deliver(subscriber)

    def _eta(self, data: bytes, now: float) -> None:
        _eta.decode(data)
        self._everyone(Frame(b'{"type":"eta","eta":' + data + b"}"), now)

    def _ack(self, data: bytes, now: float) -> None:
        ack = _ack.decode(data)
        self._everyone(Frame(ack_frame(ack)), now)

    def _everyone(self, frame: Frame, now: float) -> None:
        for subscriber in list(self._subscribers):
            subscriber.outbox.put(frame, now)
            self._deliver(subscriber)

    def sweep(self, now: float) -> None:
        """Cut off the clients that have stayed too slow; refresh the queued level."""
        queued = 0
        for subscriber in list(self._subscribers):
            if subscriber.outbox.too_slow(now):
                self._cut_off(subscriber)
            else:
                queued += len(subscriber.outbox)
        self.stats.queued = queued

    # --- the subscription ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Subscribed (or retrying, logged) for the block; stopped after it."""
        first_attempt = asyncio.Event()
        listener = asyncio.create_task(self._subscribe_forever(first_attempt), name="ws-hub-bus")
        sweeper = asyncio.create_task(self._sweep_forever(), name="ws-hub-sweeper")
        try:
            waiter = asyncio.create_task(first_attempt.wait())
            await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if listener.done():
                listener.result()
            yield
        finally:
            for task in (listener, sweeper):
                task.cancel()
            for task in (listener, sweeper):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _sweep_forever(self) -> None:
        interval = min(SWEEP_MAX_S, self.slow_after_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep(self.now())

    async def _subscribe_forever(self, first_attempt: asyncio.Event) -> None:
        delay = RECONNECT_MIN_S
        while True:
            client = redis.Redis.from_url(
                self.redis_url,
                retry=Retry(NoBackoff(), 0),
                socket_keepalive=True,
                client_name=REDIS_CLIENT_NAME,
            )
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*CHANNELS)
                await self._confirm(pubsub)
                self.live = True
                first_attempt.set()
                delay = RECONNECT_MIN_S
                log.info("dispatch hub subscribed to %s", ", ".join(CHANNELS))
                await self._listen(pubsub)
            except (redis.RedisError, OSError, TimeoutError) as exc:
                first_attempt.set()
                if self.live:
                    self._interrupted(exc)
                else:
                    log.warning(
                        "dispatch hub cannot subscribe at %s (%s); retrying in %.1f s",
                        mask_url(self.redis_url),
                        exc,
                        delay,
                    )
            finally:
                self.live = False
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _interrupted(self, exc: BaseException) -> None:
        self.stats.feed_interruptions += 1
        log.warning(
            "dispatch hub lost its Redis subscription (%s); closing %d clients so they "
            "resume from PostgreSQL",
            exc,
            len(self._subscribers),
        )
        self.live = False
        self.close_all(CLOSE_FEED_INTERRUPTED, "live feed interrupted; reconnect with since")

    async def _confirm(self, pubsub: PubSub) -> None:
        """Wait until Redis has confirmed every channel: from then on nothing published
        is missed. Messages on channels confirmed earlier are delivered meanwhile."""
        pending = {c.encode() for c in CHANNELS}
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while pending:
                message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    pending.discard(message["channel"])
                elif message["type"] == "message":
                    self.dispatch(message["channel"], message["data"], self.now())

    async def _listen(self, pubsub: PubSub) -> None:
        count = 0
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            self.dispatch(message["channel"], message["data"], self.now())
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        raise redis.ConnectionError("the subscription ended")


def ack_frame(ack: Ack) -> bytes:
    return _json.encode({"type": "ack", **msgspec.structs.asdict(ack)})


HUB = web.AppKey("dispatch_hub", Hub)
