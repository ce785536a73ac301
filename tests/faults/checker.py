"""Counting, after a fault: every fix sent against what PostgreSQL holds, every expected
event against the events table and against what the bus carried, and each device's live
state against its last fix. One row per fault goes into `<artifacts>/faults.json`, from
which the release note's table is made."""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.e2e.processes import ROOT
from tests.faults.workload import Workload
from tracker.redis_live import DEVICE_KEY_PREFIX

RESULTS_FILE = "faults.json"


@dataclass
class Tally:
    fault: str
    fixes_sent: int
    stored: int  # sent fixes found in telemetry
    lost: int  # sent fixes not found
    duplicated: int  # telemetry rows beyond one per (device, fix time)
    unexpected_rows: int  # rows that match no sent fix
    redelivered: int  # copies the ingesters received again and dropped (ingest_counters)
    events_expected: int
    events_stored: int  # expected ids in the events table
    events_lost: int  # expected ids missing from the table
    events_doubled: int  # rows beyond one per id, plus events no replay explains
    events_published: int  # distinct expected ids the bus carried
    events_bus_lost: int  # expected ids the bus never carried
    events_bus_doubled: int  # deliveries beyond one per id on the bus
    live_wrong: int  # devices whose live state is not their last fix
    notes: dict[str, Any] = field(default_factory=dict)

    def problems(self, *, bus_replays_allowed: bool = False) -> list[str]:
        found = []
        for name in ("lost", "duplicated", "unexpected_rows", "events_lost", "events_doubled"):
            if getattr(self, name):
                found.append(f"{name}={getattr(self, name)}")
        if self.events_bus_lost:
            found.append(f"events_bus_lost={self.events_bus_lost}")
        if self.events_bus_doubled and not bus_replays_allowed:
            found.append(f"events_bus_doubled={self.events_bus_doubled}")
        if self.live_wrong:
            found.append(f"live_wrong={self.live_wrong}")
        return found


def count(
    fault: str,
    workload: Workload,
    database_url: str,
    redis_url: str,
    bus: Counter[str],
    notes: dict[str, Any] | None = None,
) -> Tally:
    sent = workload.keys()
    expected = workload.expected_event_ids()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT device_id, floor(extract(epoch FROM ts) * 1000 + 0.5)::int8 FROM telemetry"
        ).fetchall()
        redelivered = conn.execute(
            "SELECT coalesce(sum(value), 0) FROM ingest_counters WHERE name = 'duplicates'"
        ).fetchone()
        event_ids = [str(r[0]) for r in conn.execute("SELECT id FROM events").fetchall()]
    stored_keys = Counter((str(d), int(ms)) for d, ms in rows)
    stored_ids = Counter(event_ids)
    return Tally(
        fault=fault,
        fixes_sent=len(sent),
        stored=len(sent & stored_keys.keys()),
        lost=len(sent - stored_keys.keys()),
        duplicated=sum(n - 1 for n in stored_keys.values()),
        unexpected_rows=sum(n for k, n in stored_keys.items() if k not in sent),
        redelivered=int(redelivered[0]) if redelivered else 0,
        events_expected=len(expected),
        events_stored=len(expected & stored_ids.keys()),
        events_lost=len(expected - stored_ids.keys()),
        events_doubled=sum(n - 1 for n in stored_ids.values()) + len(stored_ids.keys() - expected),
        events_published=len(expected & bus.keys()),
        events_bus_lost=len(expected - bus.keys()),
        events_bus_doubled=sum(n - 1 for n in bus.values()) + len(bus.keys() - expected),
        live_wrong=live_wrong(workload, redis_url),
        notes=notes or {},
    )


def live_wrong(workload: Workload, redis_url: str) -> int:
    latest = workload.latest()
    with redis.Redis.from_url(redis_url) as client:
        raws = client.mget([DEVICE_KEY_PREFIX + d for d in latest])
    wrong = 0
    for (ts, lat, lon), raw in zip(latest.values(), raws, strict=True):
        if raw is None:
            wrong += 1
            continue
        state = json.loads(raw)
        at = datetime.fromisoformat(state["ts"].replace("Z", "+00:00"))
        if at != ts or abs(state["lat"] - lat) > 1e-9 or abs(state["lon"] - lon) > 1e-9:
            wrong += 1
    return wrong


def results_path() -> Path:
    folder = Path(os.environ.get("FLEETPULSE_ARTIFACTS", "artifacts"))
    return (folder if folder.is_absolute() else ROOT / folder) / RESULTS_FILE


def record(number: int, tally: Tally) -> None:
    """Put this fault's row into the results file, replacing the one of an earlier run."""
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        rows: list[dict[str, Any]] = json.loads(text)["faults"] if text.strip() else []
        rows = [r for r in rows if r["number"] != number]
        rows.append({"number": number, **asdict(tally)})
        rows.sort(key=lambda r: int(r["number"]))
        f.seek(0)
        f.truncate()
        json.dump({"faults": rows}, f, indent=2)
        f.write("\n")
