"""One fault test's whole pipeline: its own broker, Redis and database, an ingester and a
tracker as processes, the fleet publishing, a subscriber on the bus, and the count at the
end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis

from fleetpulse.database import connect
from fleetpulse.local_servers import Mosquitto, Redis
from tests.faults import checker
from tests.faults.bus import EventBus
from tests.faults.devices import PacedPublisher
from tests.faults.stages import StageProcess, SupervisedTracker
from tests.faults.workload import FENCE, FENCE_ID, Workload
from tracker import store

# Each fault test is bounded: the pipeline must have caught up within this after the
# fleet's last acknowledgement, or the test fails with its counts.
SETTLE_TIMEOUT_S = 45.0
PUBLISH_TIMEOUT_S = 60.0
# What the notes keep of each stage's counters (those of its last run only).
INGEST_COUNTERS = (
    "messages",
    "fixes_committed",
    "duplicates",
    "acked",
    "acks_lost_to_reconnect",
    "retries",
    "reconnects",
)
TRACKER_COUNTERS = ("entries", "events", "events_new", "restarts", "rebuilds", "reread_fixes")


class Rig:
    def __init__(
        self,
        database_url: str,
        broker: Mosquitto,
        redis_server: Redis,
        workdir: Path,
        workload: Workload,
        per_second: float,
        *,
        supervised_tracker: bool = False,
        **settings: str,
    ) -> None:
        self.database_url = database_url
        self.broker = broker
        self.redis = redis_server
        self.workload = workload
        self.env = {
            "FLEETPULSE_DATABASE_URL": database_url,
            "FLEETPULSE_MQTT_URL": broker.url,
            "FLEETPULSE_REDIS_URL": redis_server.url,
            # Stable across restarts: the broker keeps this session's queue and in-flight.
            "FLEETPULSE_CLIENT_ID": "fault-ingest",
            "FLEETPULSE_FLUSH_INTERVAL": "50ms",
            # The workload's fixes come in fix-time order per device; no wait is needed,
            # and a wait would only slow the test down.
            "FLEETPULSE_REORDER_WINDOW": "0",
            # Silence-driven events depend on wall-clock time, not on the workload.
            "FLEETPULSE_OFFLINE_AFTER": "1h",
            "FLEETPULSE_GAP_AFTER": "1h",
            "FLEETPULSE_PROFILE_REFRESH": "0",
            **{f"FLEETPULSE_{name.upper()}": value for name, value in settings.items()},
        }
        self.ingester = StageProcess("ingest", self.env, workdir)
        self.tracker = (
            SupervisedTracker(self.env, workdir)
            if supervised_tracker
            else StageProcess("tracker", self.env, workdir)
        )
        self.fleet = PacedPublisher(broker.url, workload.messages(), per_second)
        self.bus = EventBus(redis_server.url)
        self.notes: dict[str, Any] = {}

    # --- life cycle -----------------------------------------------------------------

    def __enter__(self) -> Rig:
        asyncio.run(self._add_fence())
        self.bus.__enter__()
        try:
            self.ingester.start()
            self.tracker.start()
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.fleet.close()
        self.ingester.stop()
        self.tracker.stop()
        self.bus.__exit__()

    async def _add_fence(self) -> None:
        conn = await connect(self.database_url)
        try:
            await store.save_fences(conn, [(FENCE_ID, "Depot", FENCE)])
        finally:
            await conn.close()

    def wait_ready(self) -> None:
        self.ingester.wait_for(lambda t: True, "the ingester's first report")
        self.tracker.wait_for(lambda t: t.get("fences", 0) >= 1, "the tracker's fences")

    def start_fleet(self) -> None:
        self.fleet.start()

    # --- observing ------------------------------------------------------------------

    def stored(self) -> int:
        return self._scalar("SELECT count(*) FROM telemetry")

    def events_stored(self) -> int:
        return self._scalar("SELECT count(*) FROM events")

    def checkpointed_partitions(self) -> int:
        """Partitions whose checkpoint is past some hand-off entries."""
        return self._scalar("SELECT count(*) FROM tracker_checkpoints WHERE stream_id <> '0-0'")

    def _scalar(self, query: str) -> int:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0

    def check_stages(self) -> None:
        """A stage that exits on its own is a failure, whatever else is going on."""
        for stage in (self.ingester, self.tracker):
            if stage.expected_running and not stage.running:
                raise AssertionError(f"the {stage.stage} exited: {stage.log_tail()}")

    def wait_until(self, condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            self.check_stages()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    # --- the end --------------------------------------------------------------------

    def finish(self, number: int, fault: str, *, bus_replays_allowed: bool = False) -> None:
        """Wait for the fleet's acknowledgements and for the pipeline to catch up, stop
        both stages cleanly, count, record the row, and fail on any loss or doubling."""
        self.fleet.wait(PUBLISH_TIMEOUT_S)
        sent = len(self.workload.keys())
        expected = len(self.workload.expected_event_ids())
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_stages()
            try:
                caught_up = self.stored() >= sent and self.events_stored() >= expected
                if caught_up and self._live_caught_up():
                    break
            except (psycopg.OperationalError, redis.ConnectionError):
                pass  # a server the test restarted is still coming back
            time.sleep(0.1)
        self.notes["ingester_starts"] = self.ingester.starts
        self.notes["tracker_starts"] = self.tracker.starts
        self.notes["ingester_last_run"] = _pick(self.ingester.totals, INGEST_COUNTERS)
        self.notes["tracker_last_run"] = _pick(self.tracker.totals, TRACKER_COUNTERS)
        self.notes["bus_reconnects"] = self.bus.reconnects
        self.notes["acked_without_subscriber"] = self.fleet.unmatched
        for stage in (self.ingester, self.tracker):
            if stage.running:
                assert stage.terminate() == 0, stage.log_tail()
        tally = checker.count(
            fault, self.workload, self.database_url, self.redis.url, self.bus.barrier(), self.notes
        )
        checker.record(number, tally)
        problems = tally.problems(bus_replays_allowed=bus_replays_allowed)
        assert not problems, f"{fault}: {problems}; {tally}\n{self.tracker.log_tail()}"

    def _live_caught_up(self) -> bool:
        return checker.live_wrong(self.workload, self.redis.url) == 0


def _pick(totals: dict[str, int], names: tuple[str, ...]) -> dict[str, int]:
    return {name: totals.get(name, 0) for name in names}
