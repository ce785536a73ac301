"""`fleetpulse run --workers N` as a process, the way an operator runs it: its output in
files (a pipe nobody reads would fill up and stall every child), its children found
through its status file (fleetpulse/supervisor.py documents both)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.e2e.processes import FLEETPULSE, ROOT

STOP_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 4000
# What each stage logs once it is ready for work.
READY_MARKERS = {
    "ingest": "subscribed as",
    "tracker": "owns partitions",
    "web": "web app listening",
}


class Supervised:
    def __init__(self, env: dict[str, str], workdir: Path, args: Sequence[str]) -> None:
        self._env = {**os.environ, **env}
        self._args = list(args)
        self.status_path = workdir / "supervisor-status.json"
        self.stdout_path = workdir / "supervisor.out"
        self.stderr_path = workdir / "supervisor.err"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._process = subprocess.Popen(
                [
                    *FLEETPULSE,
                    "run",
                    *self._args,
                    "--status-file",
                    str(self.status_path),
                    "--stats-every",
                    "0.5",
                    "--stats-json",
                ],
                env=self._env,
                stdout=out,
                stderr=err,
                cwd=ROOT,
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- what it says -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def child(self, name: str) -> dict[str, Any]:
        return dict(self.status().get("children", {}).get(name, {}))

    def log_lines(self) -> list[tuple[str, str]]:
        """(child name, line) for the children's log lines; ("", line) for its own."""
        lines = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            name, bar, rest = line.partition(" | ")
            lines.append((name.strip(), rest) if bar and " " not in name.strip() else ("", line))
        return lines

    def log_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Each child's last `--stats-json` line (they carry a `worker` field)."""
        last: dict[str, dict[str, Any]] = {}
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if isinstance(entry, dict) and "worker" in entry:
                last[entry["worker"]] = entry
        return last

    def ready(self, names: Sequence[str]) -> bool:
        lines = self.log_lines()
        for name in names:
            marker = READY_MARKERS[name.rsplit("-", 1)[0]]
            if not any(n == name and marker in text for n, text in lines):
                return False
        return True

    # --- waiting and stopping ---------------------------------------------------------

    def wait_for(self, condition: Callable[[], bool], what: str, within: float = 40.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if not self.running:
                raise AssertionError(f"the supervisor exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill_child(self, name: str) -> int:
        """kill -9 one child; returns its pid."""
        pid = self.child(name).get("pid")
        assert isinstance(pid, int), f"{name} is not running: {self.status()}"
        os.kill(pid, signal.SIGKILL)
        return pid

    def terminate(self) -> int:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Whatever state it is in, for the end of a test: SIGTERM, then SIGKILL."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT_S)
