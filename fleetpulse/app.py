"""Composition root: builds the stages from settings and runs them until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal

from fleetpulse.settings import Settings
from ingest.database import connect
from ingest.ingester import Ingester
from ingest.maintenance import describe, maintain_forever
from ingest.schema import create_database_if_missing, migrate, require_current

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
    ingester: Ingester, every_s: float, as_json: bool, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        report = ingester.stats.report()
        if as_json:
            print(json.dumps(report), flush=True)
        else:
            log.info(
                "ingest: %.0f msg/s, %.0f fixes/s committed, fix age at commit p50 %s ms p99 %s ms",
                report["messages_per_s"],
                report["committed_fixes_per_s"],
                report["commit_latency_p50_ms"],
                report["commit_latency_p99_ms"],
            )


async def run_ingest(
    settings: Settings, *, stats_every_s: float = 60.0, stats_json: bool = False
) -> None:
    """Run the ingest stage, with storage maintenance, until SIGTERM or SIGINT."""
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
    ingester = Ingester(settings)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(maintain_forever(settings, mode, stop), name="storage-maintenance")
            tasks.create_task(
                _report_stats(ingester, stats_every_s, stats_json, stop), name="ingest-stats"
            )
            await ingester.run(stop)
            stop.set()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("ingest stopped; totals %s", dict(sorted(ingester.stats.counts.items())))
