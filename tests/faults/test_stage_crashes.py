"""A stage killed with SIGKILL mid-stream and started again: nothing it held is lost, and
nothing it had already done is done twice where it shows.

The killed ingester is started again by the test; the killed tracker by its supervisor
(`fleetpulse run --trackers 1`), as in production.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpulse.local_servers import Mosquitto, Redis
from tests.faults.rig import Rig
from tests.faults.stages import SupervisedTracker
from tests.faults.workload import Workload

pytestmark = pytest.mark.fault

DEVICES = 100
FIXES_PER_DEVICE = 60
PER_SECOND = 1000.0
PARTITIONS = 16  # the default: every partition holds some of the 100 devices


def test_ingester_killed_mid_stream_then_restarted_stores_every_fix_once(
    database_url: str, broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    workload = Workload.recent(DEVICES, FIXES_PER_DEVICE)
    sent = len(workload.keys())
    with Rig(database_url, broker, fault_redis, tmp_path, workload, PER_SECOND) as rig:
        rig.start_fleet()
        rig.ingester.wait_for(
            lambda t: t.get("fixes_committed", 0) >= sent // 4, "a quarter committed"
        )
        rig.ingester.kill()
        stored_at_kill = rig.stored()
        assert 0 < stored_at_kill < sent, "the kill must land mid-stream"
        rig.notes["stored_at_kill"] = stored_at_kill
        rig.ingester.start()
        rig.finish(1, "kill -9 an ingester mid-stream (QoS 1, persistent session), restart it")


def test_tracker_killed_mid_stream_resumes_its_partitions_from_its_checkpoint(
    database_url: str, broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    # Longer than a checkpoint interval, so that the kill lands after a checkpoint taken
    # mid-stream, with fixes processed since that the restarted tracker must do again.
    workload = Workload.recent(DEVICES, 2 * FIXES_PER_DEVICE)
    expected = len(workload.expected_event_ids())
    with Rig(
        database_url,
        broker,
        fault_redis,
        tmp_path,
        workload,
        PER_SECOND,
        supervised_tracker=True,
    ) as rig:
        tracker = rig.tracker
        assert isinstance(tracker, SupervisedTracker)
        rig.start_fleet()
        rig.wait_until(
            lambda: rig.checkpointed_partitions() == PARTITIONS, "a checkpoint mid-stream"
        )
        at_checkpoint = rig.events_stored()
        rig.wait_until(
            lambda: rig.events_stored() >= at_checkpoint + 100, "events past the checkpoint"
        )
        killed = tracker.kill_child()
        events_at_kill = rig.events_stored()
        assert events_at_kill < expected, "the kill must land mid-stream"
        rig.wait_until(
            lambda: tracker.child().get("starts") == 2 and tracker.child().get("running"),
            "the supervisor restarting the tracker",
        )
        assert tracker.child()["pid"] != killed
        rig.notes.update(
            events_at_checkpoint=at_checkpoint,
            events_at_kill=events_at_kill,
            restarted_by="fleetpulse run --trackers 1 (the supervisor)",
            last_exit=tracker.child().get("last_exit"),
            tracker_child_starts=tracker.child().get("starts"),
        )
        rig.finish(6, "kill -9 a tracker while fixes flow; its supervisor restarts it")
