"""`fleetpulse run --workers 2`: two ingesters, two trackers and two web workers under the
supervisor, fed over MQTT by a fleet shuttling in and out of a fence, watched by
websocket clients spread over both web workers.

Checked by count: every fix stored once; every expected enter and exit event stored
once; every client sees every event once, each device's in fix-time order. The second
test kills a tracker with SIGKILL mid-stream: the supervisor restarts it, the tracker
evaluates again what came after its last checkpoint, and still nothing is lost or
doubled, in the database or on the websockets (events are published once per id).

The last tests check the supervisor's own rules (restart, giving up, stopping) with
small child programs in place of the stages: real processes, exiting and ignoring
signals on purpose, which the stages cannot be made to do on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets

from fleetpulse.database import connect
from fleetpulse.settings import Settings, load_settings
from fleetpulse.supervisor import GaveUp, RestartPolicy, Supervisor, UncleanStop, Workers
from tests.conftest import make_token
from tests.e2e.supervised import Supervised
from tests.publisher import PUBLISH_TIMEOUT_S
from tests.publisher import connect as mqtt_connect
from tracker import store
from tracker.events import Event, EventKind
from tracker.handoff import partition_of

CHILDREN = ["ingest-0", "ingest-1", "tracker-0", "tracker-1", "web-0", "web-1"]
FENCE_ID = "yard"
CENTRE = (41.1579, -8.6291)  # Boavista, Porto
RADIUS_M = 150.0
OUTSIDE = (CENTRE[0] + 0.005, CENTRE[1])  # ~550 m north
FENCE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [CENTRE[1], CENTRE[0]]},
    "properties": {"id": FENCE_ID, "name": "Yard", "radius_m": RADIUS_M},
}
DEVICES = 30
STAY = 4  # rounds on one side of the fence's boundary, then on the other
ROUND_S = 0.1
# Clients connected until both web workers serve some (the kernel picks per connection).
MIN_CLIENTS = 4
MAX_CLIENTS = 40
SETTLE_S = 40.0


def inside(k: int) -> bool:
    return (k // STAY) % 2 == 1


def device(i: int) -> str:
    return f"truck-{i:02d}"


@dataclass
class Fleet:
    """Publishes round after round, each fix stamped with the time it is sent (as a
    device does: the trackers' reorder window works in fix time)."""

    mqtt_url: str
    rounds: int
    stamps: list[int] = field(default_factory=list)

    def publish(self) -> None:
        client = mqtt_connect(self.mqtt_url)
        try:
            infos = []
            start = time.monotonic()
            for k in range(self.rounds):
                ts = int(time.time() * 1000)
                self.stamps.append(ts)
                lat, lon = CENTRE if inside(k) else OUTSIDE
                for i in range(DEVICES):
                    payload = json.dumps({"ts": ts, "lat": lat, "lon": lon})
                    infos.append(client.publish(f"fleet/{device(i)}/telemetry", payload, qos=1))
                time.sleep(max(0.0, start + (k + 1) * ROUND_S - time.monotonic()))
            for info in infos:
                info.wait_for_publish(PUBLISH_TIMEOUT_S)
                assert info.is_published(), f"message {info.mid} was not acknowledged"
        finally:
            client.disconnect()
            client.loop_stop()

    def sent(self) -> Counter[tuple[str, datetime]]:
        return Counter((device(i), _time(ts)) for ts in self.stamps for i in range(DEVICES))

    def expected(self) -> dict[str, list[str]]:
        """Each device's enter and exit event ids, in fix-time order: a plain
        point-in-circle replay of what was sent."""
        out: dict[str, list[str]] = {}
        for i in range(DEVICES):
            ids = out[device(i)] = []
            for k in range(1, len(self.stamps)):
                if inside(k) != inside(k - 1):
                    kind = EventKind.ENTER if inside(k) else EventKind.EXIT
                    ids.append(Event(device(i), kind, _time(self.stamps[k]), FENCE_ID).id)
        return out


def _time(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


class Watcher:
    """One dispatch websocket client, recording the events in the order it gets them."""

    def __init__(self, ws: websockets.ClientConnection, worker: str) -> None:
        self.ws = ws
        self.worker = worker
        self.received: list[tuple[str, str]] = []  # (device, event id)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base_url: str, token: str) -> Watcher:
        ws = await websockets.connect(
            base_url.replace("http://", "ws://") + "/ws/dispatch",
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None,
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert first["type"] == "snapshot", first
        return cls(ws, first["worker"])

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "event":
                    event = message["event"]
                    self.received.append((event["device_id"], event["id"]))

    @property
    def pid(self) -> int:
        return int(self.worker.rsplit(":", 1)[1])

    def distinct(self) -> set[str]:
        return {event_id for _, event_id in self.received}

    def first_heard(self) -> dict[str, list[str]]:
        """Each device's events in the order this client first heard them."""
        seen: set[str] = set()
        out: dict[str, list[str]] = {}
        for dev, event_id in self.received:
            if event_id not in seen:
                seen.add(event_id)
                out.setdefault(dev, []).append(event_id)
        return out

    def repeated(self) -> Counter[str]:
        """Devices whose events this client heard more than once, and how many times over."""
        counts = Counter(self.received)
        return Counter({dev: n - 1 for (dev, _), n in counts.items() if n > 1})

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@pytest.fixture
def supervised(settings: Settings, tmp_path: Path) -> Iterator[Supervised]:
    asyncio.run(_add_fence(settings))
    env = {
        "FLEETPULSE_DATABASE_URL": settings.database_url,
        "FLEETPULSE_MQTT_URL": settings.mqtt_url,
        "FLEETPULSE_REDIS_URL": settings.redis_url,
        "FLEETPULSE_WEB_PORT": str(settings.web_port),
        "FLEETPULSE_CLIENT_ID": "e2e-supervised",
        "FLEETPULSE_FLUSH_INTERVAL": "50ms",
        # The fleet jumps across the fence every few tenths of a second.
        "FLEETPULSE_MAX_SPEED_MPS": "0",
        # Silence-driven events depend on the wall clock, not on what was sent.
        "FLEETPULSE_OFFLINE_AFTER": "1h",
        "FLEETPULSE_GAP_AFTER": "1h",
        "FLEETPULSE_PROFILE_REFRESH": "0",
    }
    process = Supervised(env, tmp_path, ["--workers", "2"])
    process.start()
    try:
        process.wait_for(lambda: process.ready(CHILDREN), "every child to be ready")
        yield process
    finally:
        process.stop()


async def _add_fence(settings: Settings) -> None:
    conn = await connect(settings.database_url)
    try:
        await store.save_fences(conn, [(FENCE_ID, "Yard", FENCE)])
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def watchers(settings: Settings, supervised: Supervised) -> AsyncIterator[list[Watcher]]:
    """Dispatch clients, connected one by one until both web workers serve some."""
    token = await make_token(settings, "viewer")
    web_pids = {supervised.child(f"web-{i}")["pid"] for i in range(2)}
    clients: list[Watcher] = []
    try:
        while len(clients) < MIN_CLIENTS or {c.pid for c in clients} != web_pids:
            assert len(clients) < MAX_CLIENTS, (
                f"{MAX_CLIENTS} clients, all served by {sorted({c.pid for c in clients})};"
                f" web workers {sorted(web_pids)}"
            )
            clients.append(await Watcher.connect(settings.web_base_url, token))
        yield clients
    finally:
        for client in clients:
            await client.close()


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


async def _settle(
    settings: Settings, supervised: Supervised, fleet: Fleet, clients: list[Watcher]
) -> None:
    """Until every event is stored and every client heard it (or the time is up: the
    checks that follow then say what is missing)."""
    expected = {e for ids in fleet.expected().values() for e in ids}
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        assert supervised.running, supervised.log_tail()
        stored = _query(settings.database_url, "SELECT count(*) FROM events")[0][0]
        if stored >= len(expected) and all(c.distinct() >= expected for c in clients):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything doubled or extra would show up by now


def _check_fixes(settings: Settings, fleet: Fleet) -> None:
    rows = _query(settings.database_url, "SELECT device_id, ts FROM telemetry")
    stored = Counter((dev, ts) for dev, ts in rows)
    sent = fleet.sent()
    assert len(sent) == DEVICES * len(fleet.stamps)
    assert sent - stored == Counter(), "fixes lost"
    assert stored - sent == Counter(), "fixes stored twice or never sent"
    assert _query(settings.database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def _check_events(settings: Settings, fleet: Fleet, clients: list[Watcher]) -> None:
    expected = fleet.expected()
    every = Counter(e for ids in expected.values() for e in ids)
    assert len(every) >= DEVICES * 10  # the workload must make events to check
    stored = Counter(
        event_id for (event_id,) in _query(settings.database_url, "SELECT id FROM events")
    )
    assert every - stored == Counter(), "events lost"
    assert stored - every == Counter(), "events doubled or unexpected"
    for client in clients:
        assert client.distinct() == set(every), f"client on {client.worker}"
        heard = client.first_heard()
        for dev, ids in expected.items():
            assert heard.get(dev) == ids, f"{dev} on {client.worker}: order or content differs"


def _check_stopped_cleanly(supervised: Supervised) -> None:
    assert supervised.terminate() == 0, supervised.log_tail()
    lines = supervised.log_lines()
    for name in CHILDREN:
        assert any(f"{name} stopped (exited with status 0)" in text for _, text in lines), name
    assert supervised.status()["state"] == "stopped"


async def test_two_of_each_stage_store_every_fix_once_and_every_client_hears_every_event(
    settings: Settings, supervised: Supervised
) -> None:
    fleet = Fleet(settings.mqtt_url, rounds=60)
    async with watchers(settings, supervised) as clients:
        await asyncio.to_thread(fleet.publish)
        await _settle(settings, supervised, fleet, clients)
        _check_fixes(settings, fleet)
        _check_events(settings, fleet, clients)
        for client in clients:
            assert client.repeated() == Counter(), f"client on {client.worker} heard doubles"
    # Both ingesters took a share of the shared subscription; together exactly once each.
    sent = DEVICES * len(fleet.stamps)
    supervised.wait_for(
        lambda: (
            sum(
                supervised.stats()
                .get(f"ingest-{i}", {})
                .get("totals", {})
                .get("fixes_committed", 0)
                for i in range(2)
            )
            == sent
        ),
        "the ingesters' statistics to add up to what was sent",
    )
    stats = supervised.stats()
    assert all(stats[f"ingest-{i}"]["totals"]["fixes_committed"] > 0 for i in range(2)), stats
    assert all(stats[f"tracker-{i}"]["tracker"]["entries"] > 0 for i in range(2)), stats
    assert all(supervised.child(name)["starts"] == 1 for name in CHILDREN)
    _check_stopped_cleanly(supervised)


async def test_a_tracker_killed_mid_stream_is_restarted_and_nothing_is_lost_or_doubled(
    settings: Settings, supervised: Supervised
) -> None:
    victim = "tracker-0"
    # Tracker i of 2 owns the partitions p with p mod 2 = i.
    owned = {
        device(i) for i in range(DEVICES) if partition_of(device(i), settings.partitions) % 2 == 0
    }
    assert owned, "the killed tracker must own some of the fleet"
    fleet = Fleet(settings.mqtt_url, rounds=100)
    async with watchers(settings, supervised) as clients:
        publishing = asyncio.create_task(asyncio.to_thread(fleet.publish))

        def heard_from_victim() -> bool:
            return sum(dev in owned for dev, _ in clients[0].received) >= 2 * len(owned)

        while not heard_from_victim():
            assert not publishing.done(), "the fleet finished before the tracker was killed"
            await asyncio.sleep(0.05)
        killed = supervised.kill_child(victim)
        assert not publishing.done(), "the kill must land mid-stream"
        await asyncio.to_thread(
            supervised.wait_for,
            lambda: (
                supervised.child(victim).get("starts") == 2
                and supervised.child(victim).get("running") is True
            ),
            "the supervisor to restart the tracker",
        )
        restarted = supervised.child(victim)
        assert restarted["pid"] != killed
        assert restarted["crashes"] == 1 and restarted["last_exit"] == -9
        await publishing
        await _settle(settings, supervised, fleet, clients)
        _check_fixes(settings, fleet)
        _check_events(settings, fleet, clients)
        for client in clients:
            assert client.repeated() == Counter(), f"client on {client.worker} heard doubles"
    assert any(
        f"{victim} killed by SIGKILL" in text and "restart 1" in text
        for _, text in supervised.log_lines()
    ), supervised.log_tail()
    assert all(supervised.child(n)["starts"] == 1 for n in CHILDREN if n != victim)
    _check_stopped_cleanly(supervised)


# --- the supervisor's rules, with small child programs ----------------------------------

QUICK = RestartPolicy(
    backoff_min_s=0.05, backoff_max_s=0.2, max_crashes=3, crash_window_s=60.0, stop_timeout_s=1.0
)


def _supervisor(script: str, output: io.StringIO, status_file: Path) -> Supervisor:
    """One child running `script` (its stage's name as argv[1]) in place of `ingest`."""
    return Supervisor(
        load_settings({"FLEETPULSE_CLIENT_ID": "rules"}),
        Workers(ingesters=1, trackers=0, web=0),
        policy=QUICK,
        command=(sys.executable, "-c", script),
        status_file=status_file,
        stdout=output,
        stderr=output,
    )


async def _until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_child_crashing_again_and_again_makes_it_give_up(tmp_path: Path) -> None:
    output = io.StringIO()
    script = "import sys; print('crashing', sys.argv[1]); sys.exit(3)"
    supervisor = _supervisor(script, output, tmp_path / "status.json")
    with pytest.raises(GaveUp, match="ingest-0 exited with status 3; it crashed 4 times"):
        await asyncio.wait_for(supervisor.run(), 30)
    child = supervisor.children["ingest-0"]
    assert (child.starts, child.crashes, child.last_exit) == (4, 4, 3)
    assert output.getvalue().count("ingest-0 | crashing ingest\n") == 4
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "gave_up"
    assert status["children"]["ingest-0"]["starts"] == 4


async def test_a_refused_configuration_is_not_restarted(tmp_path: Path) -> None:
    supervisor = _supervisor("raise SystemExit(2)", io.StringIO(), tmp_path / "status.json")
    with pytest.raises(GaveUp, match="ingest-0 refused its configuration"):
        await asyncio.wait_for(supervisor.run(), 30)
    assert supervisor.children["ingest-0"].starts == 1


async def test_the_stop_signal_is_passed_on_and_a_restarted_child_keeps_running(
    tmp_path: Path,
) -> None:
    output = io.StringIO()
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda n, f: (print('got', n, flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    supervisor = _supervisor(script, output, tmp_path / "status.json")
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: output.getvalue().count("| ready") == 1)
    first = supervisor.children["ingest-0"].pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await _until(lambda: output.getvalue().count("| ready") == 2)
    assert supervisor.children["ingest-0"].pid != first
    assert supervisor.status()["children"]["ingest-0"]["crashes"] == 1
    supervisor.stop(signal.SIGINT)
    await asyncio.wait_for(running, 30)
    assert f"ingest-0 | got {int(signal.SIGINT)}\n" in output.getvalue()
    assert supervisor.children["ingest-0"].last_exit == 0


async def test_a_child_ignoring_the_stop_is_killed_and_the_stop_reported(
    tmp_path: Path,
) -> None:
    output = io.StringIO()
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    supervisor = _supervisor(script, output, tmp_path / "status.json")
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: "| ready" in output.getvalue())
    supervisor.stop()
    with pytest.raises(UncleanStop, match="ingest-0 did not stop within 1 s"):
        await asyncio.wait_for(running, 30)
    assert supervisor.children["ingest-0"].last_exit == -signal.SIGKILL


ORPHAN_CHECK = """
import asyncio, sys
from pathlib import Path
from fleetpulse.settings import load_settings
from fleetpulse.supervisor import Supervisor, Workers
child = "import time; print('ready', flush=True); time.sleep(60)"
supervisor = Supervisor(
    load_settings({}),
    Workers(ingesters=0, trackers=0, web=1),
    command=(sys.executable, "-c", child),
    status_file=Path(sys.argv[1]),
)
asyncio.run(supervisor.run())
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
async def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN_CHECK, str(status_file), cwd=Path(__file__).parents[2]
    )
    try:

        def child_pid() -> int | None:
            try:
                pid = json.loads(status_file.read_text())["children"]["web-0"]["pid"]
            except (FileNotFoundError, ValueError, KeyError):
                return None
            return pid if isinstance(pid, int) else None

        await _until(lambda: child_pid() is not None)
        pid = child_pid()
        assert pid is not None and _alive(pid)
        supervisor.kill()
        await supervisor.wait()
        await _until(lambda: not _alive(pid))
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
