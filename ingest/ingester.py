"""The ingest stage: receive, decode, batch, commit, and only then acknowledge.

    broker ──▶ Subscription (manual ack) ──▶ Codec + FixRules ──▶ Batch
          ◀── ack, in arrival order ◀── hand-off (Redis Streams) ◀── commit ◀──┘

Nothing is acknowledged before it is committed and handed on to the trackers: a crash
at any point makes the broker redeliver, the writer makes a redelivery harmless, and
the trackers are idempotent. The broker's in-flight window
(Receive Maximum) bounds what is held; receiving pauses while two batches wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import aiomqtt
import psycopg
import redis

from fleetpulse.database import connect
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.settings import Settings
from ingest.batch import Batch
from ingest.flood import FloodGuard
from ingest.handoff import StreamHandoff
from ingest.partitions import Partitions
from ingest.schema import StorageMode, require_current
from ingest.stats import IngestStats
from ingest.validation import FixRules
from ingest.writer import TelemetryWriter
from mqtt.client import Subscription
from mqtt.codec import Codec
from mqtt.topics import TopicScheme
from tracker.handoff import StatusChange

log = logging.getLogger(__name__)
T = TypeVar("T")

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
# Receiving pauses while this many batches' worth of messages wait to be written.
HELD_BATCHES = 2


def effective_max_age(settings: Settings) -> FixRules:
    """A fix older than the retention window would be deleted as soon as it was stored,
    so it is refused up front, whatever the maximum fix age says."""
    limits = [d for d in (settings.max_fix_age, settings.retention) if d is not None]
    return FixRules(min(limits) if limits else None)


class Ingester:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        scheme = TopicScheme(settings.topic_prefix, settings.owntracks_prefix)
        # Mosquitto 2.0 does not save shared subscriptions with a persistent session: after
        # a broker restart, what devices publish before the ingesters subscribe again
        # matches no subscription and is dropped (though acknowledged to the device). A
        # lone ingester avoids that gap with a plain subscription, which the broker keeps.
        group = settings.share_group
        self._filters = scheme.shared_filters(group) if group else scheme.filters()
        self._codec = Codec(scheme, effective_max_age(settings))
        rate = settings.device_max_rate
        self._flood = FloodGuard(rate) if rate is not None else None
        self._batch = Batch()
        self._batch_size = settings.batch_size
        self._hold_limit = HELD_BATCHES * settings.batch_size
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._draining = False
        self.stats = IngestStats()
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set, then write and acknowledge what is held."""
        conn = await connect(self._settings.database_url)
        try:
            mode = await require_current(conn)
        finally:
            await conn.close()
        chunk = self._settings.chunk_interval
        partitions = Partitions(chunk) if mode is StorageMode.PLAIN else None
        handoff = StreamHandoff(
            self._settings.redis_url, self._settings.partitions, self._settings.stream_maxlen
        )
        async with TelemetryWriter(self._settings.database_url, partitions) as writer, handoff:
            flusher = asyncio.create_task(self._flush_loop(writer, handoff), name="ingest-flush")
            try:
                await self._sessions(stop, flusher)
            finally:
                if not flusher.done():
                    self._draining = True
                    self._full.set()
                    await flusher

    async def _sessions(self, stop: asyncio.Event, flusher: asyncio.Task[None]) -> None:
        backoff = RECONNECT_MIN_S
        while not stop.is_set():
            subscription = Subscription(
                self._settings.mqtt_url,
                self._settings.client_id,
                self._filters,
                self._settings.receive_maximum,
                self._settings.session_expiry,
            )
            try:
                async with subscription:
                    self.connected.set()
                    backoff = RECONNECT_MIN_S
                    log.info("subscribed as %s to %s", self._settings.client_id, self._filters)
                    if await self._consume_until(subscription, stop, flusher):
                        return
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self.stats.counts["reconnects"] += 1
                log.warning("broker connection lost (%s); retrying in %.1f s", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _consume_until(
        self, subscription: Subscription, stop: asyncio.Event, flusher: asyncio.Task[None]
    ) -> bool:
        """Consume until the connection fails (raises), or until stop: then drain while
        still connected, so the last acknowledgements reach the broker (returns True)."""
        consumer = asyncio.create_task(self._consume(subscription), name="ingest-consume")
        stopping = asyncio.create_task(stop.wait(), name="ingest-stop")
        try:
            await asyncio.wait({consumer, stopping, flusher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not consumer.done():
                consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        if flusher.done():
            flusher.result()
            raise RuntimeError("the flush task ended on its own")
        if not stop.is_set():
            consumer.result()  # the connection's error, for the reconnect loop
            return False
        self._draining = True
        self._full.set()
        await flusher
        return True

    async def _consume(self, subscription: Subscription) -> None:
        counts = self.stats.counts
        async for delivery in subscription:
            counts["messages"] += 1
            received_at = datetime.now(UTC)
            items = self._codec.decode(delivery.topic, delivery.payload, received_at)
            if self._flood is not None:
                items = self._flood.admit(
                    delivery.topic, delivery.payload, items, received_at, self._batch.counts
                )
            self._batch.add(delivery, items)
            if len(self._batch) >= self._batch_size or len(self._batch.fixes) >= self._batch_size:
                self._full.set()
            if len(self._batch) >= self._hold_limit:
                self._room.clear()
                subscription.hold_reading()
                await self._room.wait()
                subscription.release_reading()

    async def _flush_loop(self, writer: TelemetryWriter, handoff: StreamHandoff) -> None:
        interval = self._settings.flush_interval.total_seconds()
        while True:
            if not self._draining:
                # The interval counts from the batch's first message, not from the end
                # of the last commit: what arrived during a slow commit goes next.
                opened = self._batch.opened_at
                wait = interval if opened is None else opened + interval - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), wait)
                self._full.clear()
            if len(self._batch):
                batch, self._batch = self._batch, Batch()
                self._room.set()
                await self._commit(writer, handoff, batch)
            elif self._draining:
                return

    async def _commit(self, writer: TelemetryWriter, handoff: StreamHandoff, batch: Batch) -> None:
        """Write, hand on, and only then acknowledge. Each step retries until it succeeds,
        except while stopping: then what is unacknowledged comes back from the broker."""
        result = await self._retrying(
            "database write",
            lambda: writer.write(batch),
            (psycopg.OperationalError, psycopg.InterfaceError, ServiceUnavailable),
            writer.reconnect,
            len(batch),
        )
        if result is None:
            return
        fixes = [f for key, f in batch.fixes.items() if key not in result.refused]
        statuses = [StatusChange(s.device_id, s.status, s.received_at) for s in batch.statuses]
        if (
            await self._retrying(
                "hand-off to the trackers",
                lambda: handoff.send(fixes, statuses, result.events),
                (redis.RedisError, OSError),
                None,
                len(batch),
            )
            is None
        ):
            return
        committed_at = datetime.now(UTC)
        acked = sum(1 for delivery in batch.deliveries if delivery.ack())
        counts = self.stats.counts
        counts.update(batch.counts)
        counts["fixes_committed"] += result.inserted
        counts["fixes_handed_on"] += len(fixes)
        counts["duplicates"] += result.duplicates
        counts["status_changes"] += result.status_changes
        counts["acked"] += acked
        counts["acks_lost_to_reconnect"] += len(batch.deliveries) - acked
        for reason, n in result.quarantined.items():
            counts["quarantined_" + reason] += n
        for fix in fixes:
            self.stats.record_latency((committed_at - fix.ts).total_seconds() * 1000.0)

    async def _retrying(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        errors: tuple[type[BaseException], ...],
        recover: Callable[[], Awaitable[None]] | None,
        held: int,
    ) -> T | None:
        backoff = RETRY_MIN_S
        while True:
            try:
                return await operation()
            except errors as exc:
                if self._draining:
                    log.error(
                        "stopping with %d messages not through %s (%s); they stay"
                        " unacknowledged and the broker will deliver them again",
                        held,
                        what,
                        exc,
                    )
                    return None
                self.stats.counts["retries"] += 1
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                if recover is not None:
                    with contextlib.suppress(*errors, psycopg.Error):
                        await recover()
