"""Composition root: builds the stages from settings and runs them until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import psycopg

from fleetpulse import gc_tuning, process_stats
from fleetpulse.database import connect
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.settings import Settings
from ingest.ingester import Ingester
from ingest.maintenance import describe, maintain_forever
from ingest.schema import create_database_if_missing, migrate, require_current
from tracker import profile_store
from tracker.service import Tracker
from web import app as web_app

log = logging.getLogger("fleetpulse")


async def prepare_database(settings: Settings) -> None:
    """Create the database if it is missing and bring the schema up to date."""
    if await create_database_if_missing(settings.database_url):
        log.info("created the database")
    conn = await connect(settings.database_url)
    try:
        status = await migrate(conn)
    finally:
        await conn.close()
    log.info("schema version %d, storage mode %s", status.version, status.mode)


async def _report_stats(
    ingester: Ingester | None,
    tracker: Tracker | None,
    every_s: float,
    as_json: bool,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        report = ingester.stats.report() if ingester is not None else {}
        if tracker is not None:
            report["tracker"] = tracker.totals()
            lag_p50, lag_p99 = tracker.handoff_lag.take()
            report["tracker_lag_p50_ms"], report["tracker_lag_p99_ms"] = lag_p50, lag_p99
        if as_json:
            print(json.dumps(report), flush=True)
            continue
        if ingester is not None:
            log.info(
                "ingest: %.0f msg/s, %.0f fixes/s committed, fix age at commit p50 %s ms p99 %s ms",
                report["messages_per_s"],
                report["committed_fixes_per_s"],
                report["commit_latency_p50_ms"],
                report["commit_latency_p99_ms"],
            )
        if tracker is not None:
            log.info(
                "tracker: hand-off → published p50 %s ms p99 %s ms; %s",
                report["tracker_lag_p50_ms"],
                report["tracker_lag_p99_ms"],
                report["tracker"],
            )


def _stats_snapshots(
    ingester: Ingester | None, tracker: Tracker | None
) -> dict[str, process_stats.Snapshot]:
    """What this process publishes for `/metrics` (see `fleetpulse.process_stats`)."""
    snapshots: dict[str, process_stats.Snapshot] = {}
    if ingester is not None:
        snapshots["ingest"] = lambda: ingester.stats.counts
    if tracker is not None:
        snapshots["tracker"] = tracker.totals
    return snapshots


def _refresh_profiles(settings: Settings) -> None:
    """A refresh (a rebuild once a day) in its own thread and event loop: most of it is
    Python computation that would otherwise hold up the tracker's loop."""

    async def refresh() -> None:
        conn = await connect(settings.database_url)
        try:
            since = datetime.now(UTC) - settings.profile_window
            done = await profile_store.refresh_or_rebuild(conn, since)
            if done is not None:
                log.info(
                    "speed profiles: %s counted %d fixes (%d late, skipped), %d segments",
                    done.kind,
                    done.fixes,
                    done.late_fixes,
                    done.segments,
                )
        finally:
            await conn.close()

    asyncio.run(refresh())


async def refresh_profiles_forever(settings: Settings, stop: asyncio.Event) -> None:
    assert settings.profile_refresh is not None
    while not stop.is_set():
        try:
            await asyncio.to_thread(_refresh_profiles, settings)
        except (psycopg.Error, ServiceUnavailable) as exc:
            log.warning("speed profile refresh failed (%s); next try in an interval", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.profile_refresh.total_seconds())


async def run_stages(
    settings: Settings,
    *,
    ingest: bool,
    tracker: bool,
    web: bool = False,
    stats_every_s: float = 60.0,
    stats_json: bool = False,
) -> None:
    """Run the chosen stages in this process until SIGTERM or SIGINT; each stops cleanly
    (ingest writes and acknowledges what it holds, the tracker checkpoints)."""
    gc_tuning.tune()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    conn = await connect(settings.database_url)
    try:
        mode = await require_current(conn)
    finally:
        await conn.close()
    log.info(describe(mode, settings))
    ingester = Ingester(settings) if ingest else None
    tracking = Tracker(settings) if tracker else None

    async def until_stopped(stage: Coroutine[Any, Any, None]) -> None:
        try:
            await stage
        finally:
            stop.set()  # one stage ending ends the process: no half-running pipeline

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(
                _report_stats(ingester, tracking, stats_every_s, stats_json, stop), name="stats"
            )
            tasks.create_task(
                process_stats.publish_forever(
                    settings.redis_url, _stats_snapshots(ingester, tracking), stop
                ),
                name="stats-publish",
            )
            if ingester is not None:
                tasks.create_task(maintain_forever(settings, mode, stop), name="storage-upkeep")
                tasks.create_task(until_stopped(ingester.run(stop)), name="ingest")
            if tracking is not None:
                tasks.create_task(until_stopped(tracking.run(stop)), name="tracker")
                if settings.profile_refresh and settings.tracker_index == 0:
                    tasks.create_task(refresh_profiles_forever(settings, stop), name="profiles")
            if web:
                tasks.create_task(until_stopped(web_app.serve(settings, stop)), name="web")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if ingester is not None:
        log.info("ingest stopped; totals %s", dict(sorted(ingester.stats.counts.items())))
    if tracking is not None:
        log.info("tracker stopped; totals %s", tracking.totals())
