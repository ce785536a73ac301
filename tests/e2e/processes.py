"""`fleetpulse` as a separate process, the way an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

FLEETPULSE = [sys.executable, "-m", "fleetpulse"]
ROOT = Path(__file__).resolve().parents[2]


def fleetpulse(
    *args: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETPULSE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        cwd=ROOT,
    )


class IngestProcess:
    """`fleetpulse ingest` with JSON statistics read from its stdout every 0.2 s."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = {**os.environ, **env}
        self.reports: list[dict[str, Any]] = []
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [*FLEETPULSE, "ingest", "--stats-every", "0.2", "--stats-json"],
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        threading.Thread(target=self._read, args=(self._process,), daemon=True).start()
        self.wait_for(lambda totals: True, what="first statistics line")

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.reports.append(json.loads(line))

    @property
    def totals(self) -> dict[str, int]:
        return dict(self.reports[-1]["totals"]) if self.reports else {}

    def wait_for(self, condition: Any, what: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise AssertionError(
                    f"ingester exited ({self._process.returncode}): {self.stderr()}"
                )
            if self.reports and condition(self.totals):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; totals {self.totals}")

    def kill(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(10)

    def terminate(self) -> int:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(30)

    def stderr(self) -> str:
        assert self._process is not None and self._process.stderr is not None
        if self._process.poll() is None:
            return ""
        return self._process.stderr.read()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
