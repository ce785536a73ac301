"""FleetPulse's stages as child processes, each started as the supervisor (`fleetpulse
run --workers`) starts its children, but one by one, so that each can be measured and
profiled on its own: `fleetpulse ingest|tracker|web --stats-every 1 --stats-json` with
the same settings and what must differ per process (ingesters' client ids, trackers'
index and count, web workers' ports).

Every stats line a stage prints is kept with the time it was read; its log goes to a
file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, TextIO

from bench.ingest.children import Child
from bench.ingest.ingester import StatLine, fleetpulse_command

STATS_EVERY_S = 1.0
READY_TIMEOUT_S = 180.0  # a tracker indexes every fence before it owns its partitions
POLL_S = 0.1
OUTPUT_TAIL_TIMEOUT_S = 5.0
# What each stage logs once it is in business.
READY_MARKERS = {
    "ingest": "subscribed as",  # its shared subscription is in place
    "tracker": "owns partitions",  # fences indexed, state recovered
    "web": "",  # checked over HTTP instead (/readyz)
}


class StageProcess:
    """One `fleetpulse <stage>` process: its stats lines, its log, its readiness."""

    def __init__(self, name: str, stage: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.stage = stage
        self._env = env
        self.log_path = log_path
        self._child: Child | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self.lines: list[tuple[float, dict[str, Any]]] = []  # (epoch s read, report)

    @property
    def pid(self) -> int:
        assert self._child is not None
        return self._child.pid

    async def start(self) -> None:
        argv = [fleetpulse_command(), self.stage, f"--stats-every={STATS_EVERY_S}", "--stats-json"]
        self._child = await Child.start(self.name, argv, self._env, asyncio.subprocess.PIPE)
        log = self.log_path.open("a")
        self._tasks = [
            asyncio.create_task(self._read_stats(), name=f"e2e-{self.name}-stats"),
            asyncio.create_task(self._copy_log(log), name=f"e2e-{self.name}-log"),
        ]
        if not READY_MARKERS[self.stage]:
            self._ready.set()

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        assert self._child is not None
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._child.process.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        exited.cancel()
        if ready not in done:
            raise RuntimeError(f"{self.name} did not get ready; see {self.log_path}")

    async def _read_stats(self) -> None:
        assert self._child is not None
        while (report := await self._child.read_json_line()) is not None:
            self.lines.append((time.time(), report))

    async def _copy_log(self, log: TextIO) -> None:
        assert self._child is not None and self._child.process.stderr is not None
        marker = READY_MARKERS[self.stage]
        with log:
            while line := await self._child.process.stderr.readline():
                text = line.decode(errors="replace")
                log.write(text)
                log.flush()
                if marker and marker in text:
                    self._ready.set()

    def exited(self) -> bool:
        return self._child is None or self._child.process.returncode is not None

    async def stop(self) -> int:
        """SIGTERM: ingest writes what it holds, the tracker checkpoints."""
        if self._child is None:
            return -1
        code = await self._child.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, OUTPUT_TAIL_TIMEOUT_S)
        return code

    # --- figures -------------------------------------------------------------------

    def ingest_lines(self) -> list[StatLine]:
        return [StatLine.parse(at, report) for at, report in self.lines]

    def committed(self) -> int:
        if not self.lines:
            return 0
        return int(self.lines[-1][1].get("totals", {}).get("fixes_committed", 0))

    def tracker_samples(self, counter: str) -> list[tuple[float, int]]:
        """(time, running total) of one of the tracker's counters."""
        return [(at, int(r.get("tracker", {}).get(counter, 0))) for at, r in self.lines]

    def tracker_lag_p99(self, start: float, end: float) -> float | None:
        """The worst one-second p99 of hand-off entry → published in [start, end]."""
        p99s = [
            float(r["tracker_lag_p99_ms"])
            for at, r in self.lines
            if start <= at <= end and r.get("tracker_lag_p99_ms") is not None
        ]
        return max(p99s, default=None)

    def tracker_total(self, counter: str) -> int:
        if not self.lines:
            return 0
        return int(self.lines[-1][1].get("tracker", {}).get(counter, 0))


def ingest_env(base: dict[str, str], index: int) -> dict[str, str]:
    """Unique and stable client ids: each ingester keeps its own broker session."""
    return {**base, "FLEETPULSE_CLIENT_ID": f"e2e-ingest-{index}"}


def tracker_env(base: dict[str, str], index: int, count: int) -> dict[str, str]:
    return {**base, "FLEETPULSE_TRACKER_INDEX": str(index), "FLEETPULSE_TRACKER_COUNT": str(count)}


def web_env(base: dict[str, str], port: int) -> dict[str, str]:
    # No access log line per request or socket: that would cost more than serving them.
    return {**base, "FLEETPULSE_WEB_PORT": str(port), "FLEETPULSE_LOG_LEVEL": "WARNING"}
