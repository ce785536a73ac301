"""The tracker stage: consume the hand-off streams of the partitions this tracker owns,
keep live state and geofence state, store and publish events, checkpoint.

    Redis Streams (partition p) ──▶ LiveTracker (position, status) ──▶ Redis live state
                                └─▶ GeofenceEngine (reorder window) ──▶ events
    events ──▶ PostgreSQL (once each: deterministic ids) ──▶ Redis pub/sub
    every few seconds: checkpoint (stream position, arrival watermark, engines) in PostgreSQL
    (the partitions' silence checks and checkpoints take turns: tracker/rotation.py)

PostgreSQL is the record. If Redis lost its data (its epoch changed) or trimmed entries
this tracker had not read, the tracker re-reads the fixes that arrived after its
watermark from PostgreSQL and rebuilds; everything downstream is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import psycopg
import redis.asyncio as redis

from fleetpulse import gc_tuning
from fleetpulse.database import Conn, connect
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.latencies import LatencySamples
from fleetpulse.settings import Settings
from tracker import delivery_store, profile_store, saved_state, store
from tracker import live as live_state
from tracker.deliveries import Delivery, DeliveryMachine
from tracker.delivery_tracking import DeliveryTracking, EtaUpdate, StateChange
from tracker.eta import DetourModel, EtaEstimator
from tracker.events import Event
from tracker.fence_index import FenceIndex
from tracker.fleet_etas import DroneRules, FleetEtas
from tracker.geofencing import GeofenceEngine, GeofenceRules
from tracker.geojson import parse_feature
from tracker.handoff import Handoff, decode, partition_of, stream_key
from tracker.live import LiveDevice, LiveRules, LiveTracker
from tracker.positions import Fix
from tracker.redis_live import RedisLive
from tracker.roads import RoadGraph, load_roads
from tracker.rotation import Rotation
from tracker.routing import Router
from tracker.speed_profiles import SpeedProfile

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
READ_COUNT = 200  # stream entries per partition per read (each is a batch's share)
TICK_INTERVAL_S = 1.0
CHECKPOINT_INTERVAL_S = 5.0
FENCE_POLL_INTERVAL_S = 5.0
DELIVERY_POLL_INTERVAL_S = 1.0
# Fixes commit some time after they arrive; re-reading this far before the watermark
# covers batches that were slow to commit (the engines drop what they already saw).
REREAD_MARGIN = timedelta(minutes=5)
START_OF_STREAM = "0-0"
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
NO_GROUPS: frozenset[str] = frozenset()


@dataclass
class Partition:
    number: int
    live: LiveTracker
    engine: GeofenceEngine
    deliveries: DeliveryTracking
    stream_id: str = START_OF_STREAM
    watermark: datetime | None = None
    changed: dict[str, LiveDevice] = field(default_factory=dict)
    state_changes: list[StateChange] = field(default_factory=list)
    eta_updates: list[EtaUpdate] = field(default_factory=list)

    def apply(self, handoff: Handoff, groups: dict[str, frozenset[str]]) -> list[Event]:
        events: list[Event] = []
        for fix in handoff.fixes:
            state, device_events = self.live.update(fix)
            if state is not None:
                self.changed[fix.device_id] = state
                delivery_events, changes, etas = self.deliveries.on_fix(fix)
                events.extend(delivery_events)
                self.state_changes.extend(changes)
                self.eta_updates.extend(etas)
            events.extend(device_events)
            events.extend(self.engine.offer(fix, groups.get(fix.device_id, NO_GROUPS)))
            if self.watermark is None or fix.received_at > self.watermark:
                self.watermark = fix.received_at
        events.extend(handoff.events)  # stored by ingest; published with the rest
        for change in handoff.statuses:
            state, device_events = self.live.status_change(change)
            if state is not None:
                self.changed[change.device_id] = state
                events.extend(self.engine.device_offline(change.device_id, change.ts))
            events.extend(device_events)
        return events

    def reconsider(self, vehicles: set[str]) -> list[Event]:
        """Run these vehicles' deliveries again from their last known positions."""
        events: list[Event] = []
        now = datetime.now(UTC)
        for vehicle in vehicles:
            state = self.live.devices.get(vehicle)
            if state is None:
                continue
            fix = Fix(
                vehicle,
                state.ts,
                state.lat,
                state.lon,
                now,
                alt=state.alt,
                rel_alt=state.rel_alt,
                speed=state.speed,
                heading=state.heading,
                battery=state.battery,
                kind=state.kind,
            )
            delivery_events, changes, etas = self.deliveries.on_fix(fix)
            events.extend(delivery_events)
            self.state_changes.extend(changes)
            self.eta_updates.extend(etas)
        return events

    def tick(self, now: datetime) -> list[Event]:
        changed, events = self.live.tick(now)
        for state in changed:
            self.changed[state.device_id] = state
            events.extend(self.engine.device_offline(state.device_id, now))
        return [*events, *self.engine.tick(now)]

    def saved_state(self) -> bytes:
        return saved_state.encode(live_state.snapshot(self.live.devices), self.engine.snapshot())


class Tracker:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.owned = [
            p
            for p in range(settings.partitions)
            if p % settings.tracker_count == settings.tracker_index
        ]
        self._live_rules = LiveRules(
            offline_after=settings.offline_after,
            gap_after=settings.gap_after,
            stopped_speed_mps=settings.stopped_speed_mps,
            fine_res=settings.h3_fine_res,
            coarse_res=settings.h3_coarse_res,
        )
        window = settings.reorder_window.total_seconds() if settings.reorder_window else 0.0
        self._geofence_rules = GeofenceRules(
            margin_m=settings.geofence_margin_m,
            confirm_fixes=settings.geofence_confirm_fixes,
            max_speed_mps=settings.max_speed_mps,
            reorder_window_s=window,
        )
        self.index = FenceIndex()
        self._fences_version: tuple[int, datetime | None] = (-1, None)
        self.partitions: dict[int, Partition] = {}
        self._groups: dict[str, frozenset[str]] = {}
        self._deliveries_seen: datetime | None = None
        self._zone = ZoneInfo(settings.timezone)
        self._roads: RoadGraph | None = None
        self._profiles_built: datetime | None = None
        self._profiles_loaded = False
        self.etas = FleetEtas(
            EtaEstimator(SpeedProfile(), DetourModel(), self._zone),
            DroneRules(
                settings.drone_cruise_speed_mps,
                settings.drone_cruise_alt_m,
                settings.drone_reserve_pct,
            ),
        )
        self.counts: Counter[str] = Counter()
        # Hand-off entry written (its stream id's time, Redis's clock) → its fixes' live
        # state published: the tracker's share of the end-to-end latency of positions.
        self.handoff_lag = LatencySamples()
        self.ready = asyncio.Event()
        self._epoch = ""

    def totals(self) -> dict[str, int]:
        """The tracker's counters with its engines': late and duplicate fixes, outliers."""
        totals = Counter(self.counts)
        for partition in self.partitions.values():
            totals.update({f"geofence_{k}": v for k, v in partition.engine.counts.items()})
            totals["live_late"] += partition.live.late
        totals["devices"] = sum(len(p.live.devices) for p in self.partitions.values())
        totals["fences"] = len(self.index)
        return dict(sorted(totals.items()))

    # --- life cycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Track until `stop`. Losing PostgreSQL or Redis restarts from the last checkpoint
        after a pause: the checkpoint, the streams and the telemetry hold everything after
        it, and re-applying it yields the same events."""
        backoff = RESTART_MIN_S
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                await self._run_once(stop)
                return
            except (redis.RedisError, OSError, psycopg.OperationalError, ServiceUnavailable) as exc:
                self.counts["restarts"] += 1
                self.partitions = {}
                self._deliveries_seen = None
                if asyncio.get_running_loop().time() - started > RESTART_MAX_S:
                    backoff = RESTART_MIN_S  # it had been running well: a fresh failure
                log.warning("tracker lost a service (%s); resuming in %.1f s", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, RESTART_MAX_S)

    async def _run_once(self, stop: asyncio.Event) -> None:
        client = redis.Redis.from_url(self._settings.redis_url)
        conn: Conn | None = None
        try:
            conn = await connect(self._settings.database_url)
            live = RedisLive(client)
            await self._reload_fences(conn)
            await self._start(conn, client, live)
            await self._reload_deliveries(conn, live)
            # Every partition has a checkpoint before the first turn of the rotation comes
            # round: one that has none would be seeded from the registry after a restart,
            # and derive its events again from a different starting state.
            await self._checkpoint(conn)
            gc_tuning.settle()
            self.ready.set()
            log.info(
                "tracker %d/%d owns partitions %s",
                self._settings.tracker_index,
                self._settings.tracker_count,
                self.owned,
            )
            await self._loop(stop, conn, client, live)
            # Only a clean stop checkpoints here: after a failure, what was processed since
            # the last checkpoint may not all be stored and published, so it is done again.
            await self._checkpoint(conn)
        finally:
            if conn is not None:
                await conn.close()
            await client.aclose()

    async def _loop(
        self, stop: asyncio.Event, conn: Conn, client: redis.Redis, live: RedisLive
    ) -> None:
        loop = asyncio.get_running_loop()
        next_redis_check = next_fence_poll = next_delivery_poll = loop.time()
        partitions = list(self.partitions.values())
        ticks = Rotation(partitions, TICK_INTERVAL_S, loop.time())
        checkpoints = Rotation(partitions, CHECKPOINT_INTERVAL_S, loop.time())
        while not stop.is_set():
            entries = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None",
                await client.xread(
                    {stream_key(p): s.stream_id for p, s in self.partitions.items()},
                    count=READ_COUNT,
                    block=READ_BLOCK_MS,
                ),
            )
            events: list[Event] = []
            written_ms: list[int] = []
            # A full read means a backlog: silence is then judged only once it is read,
            # or devices whose newer fixes wait in it would look offline.
            behind = any(len(items) >= READ_COUNT for _, items in entries or [])
            for key, items in entries or []:
                partition = self.partitions[int(key.decode().rsplit(":", 1)[1])]
                for entry_id, fields in items:
                    events.extend(partition.apply(decode(fields[b"h"]), self._groups))
                    partition.stream_id = entry_id.decode()
                    written_ms.append(_stream_id_key(partition.stream_id)[0])
                    self.counts["entries"] += 1
            # Positions need nothing stored before them (events do): they go out first,
            # not after the silence checks, the events' storage and the checkpoint.
            await live.write(self._take_changed(), [])
            published_ms = time.time() * 1000.0
            for written in written_ms:
                self.handoff_lag.record(published_ms - written)
            now = loop.time()
            if not behind:
                wall = datetime.now(UTC)
                for partition in ticks.due(now):
                    events.extend(partition.tick(wall))
            await self._emit(conn, live, events)
            if now >= next_fence_poll:
                await self._reload_fences(conn)
                next_fence_poll = now + FENCE_POLL_INTERVAL_S
            if now >= next_delivery_poll:
                await self._reload_deliveries(conn, live)
                next_delivery_poll = now + DELIVERY_POLL_INTERVAL_S
            if now >= next_redis_check:
                await self._check_redis(conn, client, live)
                next_redis_check = now + CHECKPOINT_INTERVAL_S
            await self._checkpoint(conn, checkpoints.due(now))

    async def _check_redis(self, conn: Conn, client: redis.Redis, live: RedisLive) -> None:
        epoch = await live.epoch()
        if epoch != self._epoch:
            log.warning("Redis lost its data; rebuilding live state from PostgreSQL")
            self._epoch = epoch
            await self._rebuild(conn, live, list(self.partitions.values()))
            return
        trimmed = [p for p in self.partitions.values() if await self._trimmed(client, p)]
        if trimmed:
            log.warning("hand-off entries were trimmed before they were read; re-reading")
            self.counts["stream_gaps"] += len(trimmed)
            await self._rebuild(conn, live, trimmed)

    async def _emit(self, conn: Conn, live: RedisLive, events: list[Event]) -> None:
        """Events are stored before they are published, and both before the checkpoint
        moves past the entries that produced them."""
        changed = self._take_changed()
        transitions = [c for p in self.partitions.values() for c in p.state_changes]
        etas = [u for p in self.partitions.values() for u in p.eta_updates]
        for partition in self.partitions.values():
            partition.state_changes.clear()
            partition.eta_updates.clear()
        if events:
            self.counts["events_new"] += await store.save_events(conn, events)
            self.counts["events"] += len(events)
        if transitions or etas:
            async with conn.transaction():
                # ETAs first: an arrival in the same batch settles them.
                await delivery_store.save_etas(conn, etas)
                for transition in transitions:
                    await delivery_store.record_state(
                        conn, transition.delivery, transition.was, transition.at
                    )
            self.counts["eta_updates"] += len(etas)
        await live.write(changed, events, etas)

    def _take_changed(self) -> list[LiveDevice]:
        """The live states changed since the last take, all partitions."""
        changed = [s for p in self.partitions.values() for s in p.changed.values()]
        for partition in self.partitions.values():
            partition.changed.clear()
        return changed

    async def _checkpoint(self, conn: Conn, partitions: Sequence[Partition] | None = None) -> None:
        """Save `partitions` (default all) in one transaction."""
        partitions = list(self.partitions.values()) if partitions is None else partitions
        if not partitions:
            return
        async with conn.transaction():
            for partition in partitions:
                await store.save_checkpoint(
                    conn,
                    store.Checkpoint(
                        partition.number,
                        partition.stream_id,
                        partition.watermark,
                        self._epoch,
                        partition.saved_state(),
                    ),
                )

    # --- recovery -------------------------------------------------------------------

    async def _start(self, conn: Conn, client: redis.Redis, live: RedisLive) -> None:
        """Resume each partition from its checkpoint; where Redis cannot give what came
        after it, re-read PostgreSQL. A partition never checkpointed takes its devices'
        last positions from the device registry."""
        self._epoch = await live.epoch()
        checkpoints = await store.load_checkpoints(conn, self.owned)
        seeds: list[Partition] = []
        stale: list[Partition] = []
        for number in self.owned:
            checkpoint = checkpoints.get(number)
            partition = self._partition(number, checkpoint)
            self.partitions[number] = partition
            if checkpoint is None:
                seeds.append(partition)
            elif checkpoint.redis_epoch != self._epoch or await self._trimmed(client, partition):
                stale.append(partition)
        if seeds:
            await self._seed(conn, seeds)
            await live.write([d for p in seeds for d in p.live.devices.values()], [])
        if stale:
            await self._rebuild(conn, live, stale)

    def _partition(self, number: int, checkpoint: store.Checkpoint | None) -> Partition:
        deliveries = DeliveryTracking(DeliveryMachine(), self.etas)
        if checkpoint is None:
            return Partition(
                number,
                LiveTracker(self._live_rules),
                GeofenceEngine(self.index, self._geofence_rules),
                deliveries,
                watermark=datetime.now(UTC),
            )
        saved = saved_state.decode(checkpoint.state)
        return Partition(
            number,
            LiveTracker(self._live_rules, live_state.restore(saved.live)),
            GeofenceEngine.restore(self.index, self._geofence_rules, saved.geofence),
            deliveries,
            stream_id=checkpoint.stream_id,
            watermark=checkpoint.watermark,
        )

    async def _seed(self, conn: Conn, partitions: list[Partition]) -> None:
        by_number = {p.number: p for p in partitions}
        async for fix in store.latest_fixes(conn):
            partition = by_number.get(partition_of(fix.device_id, self._settings.partitions))
            if partition is not None:
                partition.live.update(fix)

    async def _rebuild(self, conn: Conn, live: RedisLive, partitions: list[Partition]) -> None:
        """Apply again every fix that arrived since the oldest watermark (less a margin),
        then rewrite these partitions' live state. The engines ignore what they had seen."""
        by_number = {p.number: p for p in partitions}
        known = [p.watermark for p in partitions if p.watermark is not None]
        since = min(known) - REREAD_MARGIN if len(known) == len(partitions) else None
        events: list[Event] = []
        reread = 0
        async for fix in store.fixes_received_after(conn, since):
            partition = by_number.get(partition_of(fix.device_id, self._settings.partitions))
            if partition is not None:
                events.extend(partition.apply(Handoff([fix]), self._groups))
                reread += 1
        for partition in partitions:
            partition.stream_id = START_OF_STREAM
            partition.changed.update(partition.live.devices)
        self.counts["rebuilds"] += 1
        self.counts["reread_fixes"] += reread
        log.info("re-read %d fixes from PostgreSQL for partitions %s", reread, sorted(by_number))
        await self._emit(conn, live, events)

    async def _trimmed(self, client: redis.Redis, partition: Partition) -> bool:
        """Whether the stream dropped entries this partition had not read: its oldest
        entry is newer than the partition's position. (MAXLEN trimming does not move
        Redis's max-deleted-entry-id, so that cannot tell.)"""
        if partition.stream_id == START_OF_STREAM:
            return False  # reads whatever the stream holds
        try:
            info = await client.xinfo_stream(stream_key(partition.number))
        except redis.ResponseError:  # no stream: nothing was handed on since
            return False
        first = info.get("first-entry")
        if not first:
            return False
        first_id = first[0].decode() if isinstance(first[0], bytes) else str(first[0])
        return _stream_id_key(first_id) > _stream_id_key(partition.stream_id)

    # --- deliveries -----------------------------------------------------------------

    async def _reload_deliveries(self, conn: Conn, live: RedisLive) -> None:
        """Take what dispatch changed (and, at start, every delivery) into the partitions
        that own the deliveries' vehicles; a change takes effect at once: the vehicles'
        last positions give new ETAs without waiting for their next fix."""
        changed, self._deliveries_seen = await delivery_store.changed_since(
            conn, self._deliveries_seen
        )
        if not changed:
            return
        count = self._settings.partitions
        by_partition: dict[int, list[Delivery]] = {}
        for delivery in changed:
            by_partition.setdefault(partition_of(delivery.vehicle_id, count), []).append(delivery)
        events: list[Event] = []
        for number, partition in self.partitions.items():
            mine = by_partition.get(number, [])
            kept = {d.id for d in mine}
            # A reassigned delivery leaves the partition of its former vehicle.
            partition.deliveries.drop(d.id for d in changed if d.id not in kept)
            events.extend(partition.reconsider(partition.deliveries.load(mine)))
        self.counts["delivery_reloads"] += len(changed)
        await self._emit(conn, live, events)

    # --- fences ---------------------------------------------------------------------

    async def _reload_profiles(self, conn: Conn) -> None:
        """Load the speed profiles and detour factors when they were rebuilt; the
        residuals learned so far are kept."""
        built = await profile_store.built_at(conn)
        first = not self._profiles_loaded
        if built == self._profiles_built and not first:
            return
        if self._settings.osm_pbf and self._roads is None:
            self._roads = await asyncio.to_thread(load_roads, self._settings.osm_pbf)
            log.info("road graph loaded from %s", self._settings.osm_pbf)
        since = datetime.now(UTC) - self._settings.profile_window
        profile, detours = await profile_store.load(conn, self._zone, since)
        router = None if self._roads is None else Router(self._roads, profile, self._zone)
        residuals = self.etas.estimator.residuals
        self.etas.estimator = EtaEstimator(
            profile, detours, self._zone, router=router, residuals=residuals
        )
        if first:  # learn from the arrivals already seen before this process started
            settled = await delivery_store.settled_model_etas(conn)
            for given, arrived_at in reversed(settled):
                self.etas.estimator.record_arrival(given, arrived_at)
            self.counts["residuals_primed"] = len(settled)
            self._profiles_loaded = True
        self._profiles_built = built
        how = "road graph" if router else "H3 grid"
        log.info("ETA model: %d segment speeds, on the %s", profile.samples, how)

    async def _reload_fences(self, conn: Conn) -> None:
        self._groups = await store.device_groups(conn)
        await self._reload_profiles(conn)
        version = await store.fences_version(conn)
        if version == self._fences_version:
            return
        fences = []
        for feature in await store.fence_features(conn):
            try:
                fences.append(parse_feature(feature))
            except ValueError as exc:
                self.counts["fences_unreadable"] += 1
                log.error(
                    "fence %s cannot be used: %s", feature.get("properties", {}).get("id"), exc
                )
        self.index.replace_all(fences)
        self._fences_version = version
        log.info("geofences loaded: %d", len(fences))


def _stream_id_key(stream_id: str) -> tuple[int, int]:
    millis, _, seq = stream_id.partition("-")
    return int(millis), int(seq or 0)
