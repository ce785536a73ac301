"""FleetPulse's stages as separate processes, the way an operator runs them: `fleetpulse
ingest`, `fleetpulse tracker`, or a stage under the supervisor (`fleetpulse run
--trackers 1 ...`). Each prints its JSON statistics every 0.2 s (read here from stdout)
and keeps its log in a file: a pipe nobody reads would fill up and stall the stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.e2e.processes import FLEETPULSE, ROOT

STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 3000
STATS = ("--stats-every", "0.2", "--stats-json")


class StageProcess:
    """One stage (`ingest` or `tracker`); `start()` again after `kill()` is a restart with
    the same settings: the same MQTT client id (its persistent session), the same
    tracker index (its checkpoints)."""

    def __init__(
        self,
        stage: str,
        env: dict[str, str],
        log_dir: Path,
        command: Sequence[str] | None = None,
    ) -> None:
        self.stage = stage
        self._env = {**os.environ, **env}
        self._command = [*FLEETPULSE, *(command or [stage]), *STATS]
        self._log_path = log_dir / f"{stage}.log"
        self._process: subprocess.Popen[str] | None = None
        self._reports: list[dict[str, Any]] = []
        self.starts = 0
        # False once the test stopped it on purpose: an exit is then no failure.
        self.expected_running = False

    def start(self) -> None:
        self._reports = []
        with self._log_path.open("a") as log:
            log.write(f"--- start {self.starts + 1}\n")
            log.flush()
            self._process = subprocess.Popen(
                self._command,
                env=self._env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=ROOT,
            )
        self.starts += 1
        self.expected_running = True
        threading.Thread(
            target=self._read, args=(self._process, self._reports, self.stage), daemon=True
        ).start()

    @staticmethod
    def _read(process: subprocess.Popen[str], into: list[dict[str, Any]], stage: str) -> None:
        key = "tracker" if stage == "tracker" else "totals"
        assert process.stdout is not None
        for line in process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue  # a supervisor passes on its children's other lines too
            if isinstance(report, dict) and key in report:
                into.append(report)

    @property
    def totals(self) -> dict[str, int]:
        """The stage's counters as last reported (a restart starts them from zero)."""
        if not self._reports:
            return {}
        last = self._reports[-1]
        return dict(last["tracker"] if self.stage == "tracker" else last["totals"])

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_for(
        self, condition: Callable[[dict[str, int]], bool], what: str, within: float = 30.0
    ) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"the {self.stage} exited: {self.log_tail()}")
            if self._reports and condition(self.totals):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; {self.stage} totals {self.totals}")

    def kill(self) -> None:
        """kill -9: nothing is flushed, acknowledged or checkpointed on the way out."""
        assert self._process is not None
        self.expected_running = False
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(STOP_TIMEOUT_S)

    def terminate(self) -> int:
        """SIGTERM: the stage stops cleanly; returns its exit status."""
        assert self._process is not None
        self.expected_running = False
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Whatever state it is in: for the end of a test."""
        self.expected_running = False
        if self.running:
            assert self._process is not None
            self._process.kill()
            self._process.wait(STOP_TIMEOUT_S)

    def log_tail(self) -> str:
        return self._log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]


class SupervisedTracker(StageProcess):
    """One tracker as a child of `fleetpulse run --trackers 1` (no other stage): the
    supervisor, not the test, restarts it when it dies. Its status file names the child's
    pid and how often it was started."""

    CHILD = "tracker-0"

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.status_file = log_dir / "supervisor-status.json"
        command = ["run", "--ingesters", "0", "--trackers", "1", "--web-workers", "0"]
        super().__init__(
            "tracker", env, log_dir, [*command, "--status-file", str(self.status_file)]
        )

    def child(self) -> dict[str, Any]:
        try:
            status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):  # not written yet
            return {}
        return dict(status.get("children", {}).get(self.CHILD, {}))

    def kill_child(self) -> int:
        """kill -9 the tracker itself, not its supervisor; returns its pid."""
        child = self.child()
        assert child.get("running") and child.get("pid"), f"no running tracker: {child}"
        os.kill(int(child["pid"]), signal.SIGKILL)
        return int(child["pid"])
