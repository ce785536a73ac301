"""PostgreSQL, Redis and the broker restarted under a running pipeline. Every server is
the test's own (started from the project's configurations on free ports); the machine's
shared servers are never touched."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetpulse.app import prepare_database
from fleetpulse.local_servers import Mosquitto, Redis
from tests.conftest import make_settings
from tests.faults.private_postgres import PrivatePostgres
from tests.faults.rig import Rig
from tests.faults.workload import Workload
from tests.publisher import publish_sync

pytestmark = pytest.mark.fault

DEVICES = 100
FIXES_PER_DEVICE = 60
PER_SECOND = 1000.0
# Long enough that both stages notice and retry more than once.
OUTAGE_S = 2.0
QUEUE_SETTLE_S = 0.5


def test_postgresql_restarted_mid_stream_every_fix_stored_once(
    broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    workload = Workload.recent(DEVICES, FIXES_PER_DEVICE)
    sent = len(workload.keys())
    with PrivatePostgres() as postgres:
        url = postgres.url("fleetpulse")
        asyncio.run(prepare_database(make_settings(database_url=url)))
        with Rig(url, broker, fault_redis, tmp_path, workload, PER_SECOND) as rig:
            rig.start_fleet()
            rig.ingester.wait_for(
                lambda t: t.get("fixes_committed", 0) >= sent // 4, "a quarter committed"
            )
            postgres.stop()  # fast: sessions cut, open transactions rolled back
            published_at_stop = rig.fleet.published
            rig.ingester.wait_for(lambda t: t.get("retries", 0) >= 1, "the ingester retrying")
            time.sleep(OUTAGE_S)  # the outage: the fleet goes on publishing meanwhile
            rig.notes["published_during_outage"] = rig.fleet.published - published_at_stop
            rig.notes["retries_during_outage"] = rig.ingester.totals.get("retries", 0)
            postgres.start()
            assert rig.stored() < sent, "the restart must land mid-stream"
            rig.finish(2, "restart PostgreSQL mid-stream (pg_ctl stop -m fast, 2 s, start)")


def test_redis_restarted_with_its_data_hand_off_resumes(
    database_url: str, broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    workload = Workload.recent(DEVICES, FIXES_PER_DEVICE)
    expected = len(workload.expected_event_ids())
    with Rig(database_url, broker, fault_redis, tmp_path, workload, PER_SECOND) as rig:
        rig.start_fleet()
        rig.wait_until(lambda: rig.events_stored() >= expected // 4, "a quarter of the events")
        fault_redis.restart()  # SIGTERM: the append-only file is complete
        rig.notes["events_at_restart"] = rig.events_stored()
        assert rig.notes["events_at_restart"] < expected, "the restart must land mid-stream"
        rig.finish(3, "restart Redis with persistence (appendonly)")


def test_redis_restarted_empty_tracker_rebuilds_from_postgresql(
    database_url: str, broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    workload = Workload.recent(DEVICES, FIXES_PER_DEVICE)
    expected = len(workload.expected_event_ids())
    with Rig(database_url, broker, fault_redis, tmp_path, workload, PER_SECOND) as rig:
        rig.start_fleet()
        rig.wait_until(lambda: rig.events_stored() >= expected // 4, "a quarter of the events")
        fault_redis.kill()
        # Everything Redis had is gone: hand-off streams, live state, epoch, markers.
        shutil.rmtree(fault_redis.data_dir / "appendonlydir", ignore_errors=True)
        (fault_redis.data_dir / "dump.rdb").unlink(missing_ok=True)
        fault_redis.start()
        rig.notes["events_at_restart"] = rig.events_stored()
        assert rig.notes["events_at_restart"] < expected, "the restart must land mid-stream"
        rig.wait_until(lambda: rig.tracker.totals.get("rebuilds", 0) >= 1, "the tracker's rebuild")
        # After a rebuild the bus carries again what it had carried since the watermark:
        # the markers of what was published went with Redis's data. Counted, not failed.
        rig.finish(
            4, "restart Redis losing everything (kill -9, data removed)", bus_replays_allowed=True
        )


def test_broker_restarted_with_persistence_every_fix_stored_once(
    database_url: str, broker: Mosquitto, fault_redis: Redis, tmp_path: Path
) -> None:
    workload = Workload.recent(DEVICES, FIXES_PER_DEVICE)
    sent = len(workload.keys())
    # A lone ingester: a plain subscription, which the broker keeps across its restart
    # (the next test shows why a shared one loses what comes before re-subscribing).
    with Rig(
        database_url, broker, fault_redis, tmp_path, workload, PER_SECOND, share_group=""
    ) as rig:
        rig.start_fleet()
        rig.ingester.wait_for(
            lambda t: t.get("fixes_committed", 0) >= sent // 4, "a quarter committed"
        )
        broker.restart()  # SIGTERM: Mosquitto saves sessions and queues first
        rig.notes["stored_at_restart"] = rig.stored()
        assert rig.notes["stored_at_restart"] < sent, "the restart must land mid-stream"
        rig.ingester.wait_for(lambda t: t.get("reconnects", 0) >= 1, "the ingester reconnecting")
        rig.finish(5, "restart the broker with persistence (SIGTERM, start); lone ingester")


def test_mosquitto_forgets_shared_subscriptions_across_a_restart(broker: Mosquitto) -> None:
    """Why a lone ingester subscribes plainly: Mosquitto 2.0 saves a persistent session's
    queue and its plain subscriptions, but not its shared ones. Until the client subscribes
    again, what devices publish matches nothing and is dropped, though acknowledged to
    them. Should a broker upgrade keep shared subscriptions, this fails: the shared
    subscription is then safe for a lone ingester too."""
    plain = SessionListener(broker, "listener-plain", "fleet/+/telemetry")
    shared = SessionListener(broker, "listener-shared", "$share/ingest/fleet/+/telemetry")
    publish_sync(broker.url, [("fleet/van-1/telemetry", b"before")])
    broker.restart()
    publish_sync(broker.url, [("fleet/van-1/telemetry", b"after")])
    plain.resume()
    shared.resume()
    try:
        assert plain.wait_for(2) == [b"before", b"after"]
        # A resumed session gets its whole queue at once: had "after" been queued for the
        # shared one, it would come with "before".
        assert shared.wait_for(1) == [b"before"]
        time.sleep(QUEUE_SETTLE_S)
        assert shared.received == [b"before"]
    finally:
        plain.close()
        shared.close()


class SessionListener:
    """A persistent MQTT v5 session: subscribed once, then away, then back without
    subscribing again (as the spec allows: the session keeps its subscriptions)."""

    def __init__(self, broker: Mosquitto, client_id: str, topic_filter: str) -> None:
        self._port = broker.port
        self.received: list[bytes] = []
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id, protocol=paho.MQTTv5)
        self._client.on_message = lambda client, userdata, message: self.received.append(
            message.payload
        )
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._connect()
        self._client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(10), f"no SUBACK for {topic_filter}"
        self.close()

    def _connect(self) -> None:
        # Clean start off from the first connection, as the ingester does: Mosquitto saves
        # the subscriptions only of sessions begun that way.
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self._client.connect("127.0.0.1", self._port, clean_start=False, properties=properties)
        self._client.loop_start()

    def resume(self) -> None:
        self._connect()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, count: int, within: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + within
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.received)
