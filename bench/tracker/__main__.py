"""`python -m bench.tracker`: the tracker stage as a process, fed through its real
hand-off streams with the Porto trips (copied to more devices), against the Porto fences.

It measures the rate from stream entry to stored and published event with live state
written to Redis (coalesced per read), the tracker's CPU and peak memory, and Redis's
and PostgreSQL's CPU. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from bench.geofence import porto
from bench.ingest import database, machine, procstat
from fleetpulse.database import connect
from fleetpulse.local_servers import Redis
from ingest.handoff import StreamHandoff
from tracker import geojson, store
from tracker.positions import Fix

BATCH = 1000  # fixes per hand-off, as the ingester's default batch
STATS_EVERY_S = 0.5
TIMEOUT_S = 600.0
DATABASE = "fleetpulse_bench_tracker"


def copies_of(fixes: list[Fix], copies: int) -> list[Fix]:
    """Each trip driven by `copies` devices at once; arrival = now, so none is offline."""
    now = datetime.now(UTC)
    return [
        msgspec.structs.replace(f, device_id=f"{f.device_id}-{k}", received_at=now)
        for f in fixes
        for k in range(copies)
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fixes = copies_of(porto.load_fixes(), args.copies)
    fences = [porto.load_municipality(), *porto.drawn_fences()]
    with Redis() as redis_server:
        await database.recreate(args.server_url, DATABASE)
        url = database.database_url(args.server_url, DATABASE)
        env = {
            **os.environ,
            "FLEETPULSE_DATABASE_URL": url,
            "FLEETPULSE_REDIS_URL": redis_server.url,
            "FLEETPULSE_PARTITIONS": str(args.partitions),
        }
        fleetpulse = (
            shutil.which("fleetpulse", path=os.path.dirname(sys.executable)) or "fleetpulse"
        )
        await database.migrate(fleetpulse, env)
        conn = await connect(url)
        await store.save_fences(conn, [(f.id, f.name, geojson.to_feature(f)) for f in fences])
        await conn.close()
        tracker = await asyncio.create_subprocess_exec(
            fleetpulse,
            "tracker",
            "--stats-every",
            str(STATS_EVERY_S),
            "--stats-json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert tracker.stdout is not None
        await tracker.stdout.readline()  # the first report: started and recovered
        meter = procstat.CpuMeter([tracker.pid])
        redis_meter = procstat.CpuMeter([redis_server.pid] if redis_server.pid else [])
        busy = procstat.MachineMeter()
        for m in (meter, redis_meter, busy):
            m.start()
        started = time.monotonic()
        entries = 0
        async with StreamHandoff(redis_server.url, args.partitions, 1_000_000) as handoff:
            for i in range(0, len(fixes), BATCH):
                entries += await handoff.send(fixes[i : i + BATCH], [])
        fed = time.monotonic() - started
        totals: dict[str, Any] = {}
        while totals.get("entries", 0) < entries:
            line = await asyncio.wait_for(tracker.stdout.readline(), TIMEOUT_S)
            totals = json.loads(line)["tracker"]
        elapsed = time.monotonic() - started
        figures = {
            "fixes": len(fixes),
            "devices": totals.get("devices"),
            "fences": len(fences),
            "entries": entries,
            "feed_s": round(fed, 2),
            "elapsed_s": round(elapsed, 2),
            "fixes_per_s": round(len(fixes) / elapsed),
            "events": totals.get("events"),
            "events_per_s": round(totals.get("events", 0) / elapsed),
            "tracker_cpu_pct": round(meter.percent()),
            "tracker_peak_rss_mib": procstat.peak_rss_mib(tracker.pid),
            "redis_cpu_pct": round(redis_meter.percent()),
            "machine_cpu_pct": round(busy.percent()),
            "tracker_totals": totals,
        }
        tracker.terminate()
        await tracker.wait()
        return {"benchmark": "tracker", "machine": await machine.describe(url), **figures}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracker", description=__doc__)
    parser.add_argument("--copies", type=int, default=10, help="devices per Porto taxi trip")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    if (why := porto.missing()) is not None:
        print(f"bench.tracker: {why}", file=sys.stderr)
        return 2
    result = asyncio.run(run(args))
    print(
        f"{'fixes':>9} {'devices':>8} {'fences':>6} {'fixes/s':>9} {'events':>7} "
        f"{'events/s':>8} {'tracker CPU%':>12} {'RSS MiB':>8} {'redis CPU%':>10} {'machine%':>8}"
    )
    print(
        f"{result['fixes']:>9,} {result['devices']:>8,} {result['fences']:>6} "
        f"{result['fixes_per_s']:>9,} {result['events']:>7,} {result['events_per_s']:>8,} "
        f"{result['tracker_cpu_pct']:>12} {result['tracker_peak_rss_mib']:>8.0f} "
        f"{result['redis_cpu_pct']:>10} {result['machine_cpu_pct']:>8}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
