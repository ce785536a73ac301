"""`fleetpulse ingest --stats-every 1 --stats-json` as a child process, and its figures."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bench.ingest.children import Child

STATS_EVERY_S = 1.0
SUBSCRIBE_TIMEOUT_S = 30.0
# The ingester logs this once its shared subscription is in place (ingest.ingester).
SUBSCRIBED_MARKER = "subscribed as"
POLL_S = 0.1
# After exit, how long the last stdout/stderr lines may take to be read.
OUTPUT_TAIL_TIMEOUT_S = 5.0


def fleetpulse_command() -> str:
    """The console script of the interpreter running the benchmark (the project's venv)."""
    beside = Path(sys.executable).parent / "fleetpulse"
    if beside.exists():
        return str(beside)
    found = shutil.which("fleetpulse")
    if found is None:
        raise RuntimeError("no `fleetpulse` command: install the project (pip install -e .)")
    return found


@dataclass(frozen=True)
class StatLine:
    """One `--stats-json` line, stamped with the time it was read."""

    at: float  # epoch seconds
    committed: int  # fixes committed since start
    messages: int  # messages received since start
    committed_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    totals: dict[str, int]

    @classmethod
    def parse(cls, at: float, report: dict[str, Any]) -> StatLine:
        totals = {str(k): int(v) for k, v in report.get("totals", {}).items()}
        return cls(
            at=at,
            committed=totals.get("fixes_committed", 0),
            messages=totals.get("messages", 0),
            committed_per_s=float(report.get("committed_fixes_per_s") or 0.0),
            p50_ms=report.get("commit_latency_p50_ms"),
            p99_ms=report.get("commit_latency_p99_ms"),
            totals=totals,
        )


class IngesterProcess:
    """Starts the ingester, keeps every stats line, copies its log to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self._log_path = log_path
        self._child: Child | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self.lines: list[StatLine] = []

    @property
    def pid(self) -> int:
        assert self._child is not None
        return self._child.pid

    async def start(self) -> None:
        argv = [fleetpulse_command(), "ingest", f"--stats-every={STATS_EVERY_S}", "--stats-json"]
        self._child = await Child.start("ingester", argv, self._env, asyncio.subprocess.PIPE)
        log = self._log_path.open("a")
        self._tasks = [
            asyncio.create_task(self._read_stats(), name="bench-ingester-stats"),
            asyncio.create_task(self._copy_log(log), name="bench-ingester-log"),
        ]
        subscribed = asyncio.create_task(self._subscribed.wait())
        exited = asyncio.create_task(self._child.process.wait())
        done, _ = await asyncio.wait(
            {subscribed, exited}, timeout=SUBSCRIBE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        subscribed.cancel()
        exited.cancel()
        if subscribed not in done:
            raise RuntimeError(f"the ingester did not subscribe; see {self._log_path}")

    async def _read_stats(self) -> None:
        assert self._child is not None
        while (report := await self._child.read_json_line()) is not None:
            self.lines.append(StatLine.parse(time.time(), report))

    async def _copy_log(self, log: TextIO) -> None:
        assert self._child is not None and self._child.process.stderr is not None
        with log:
            while line := await self._child.process.stderr.readline():
                text = line.decode(errors="replace")
                log.write(text)
                log.flush()
                if SUBSCRIBED_MARKER in text:
                    self._subscribed.set()

    def committed(self) -> int:
        return self.lines[-1].committed if self.lines else 0

    async def wait_committed(self, target: int, timeout_s: float) -> bool:
        """Wait until `target` fixes are committed in total; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.committed() < target:
            if time.monotonic() >= deadline or self.exited():
                return False
            await asyncio.sleep(POLL_S)
        return True

    def exited(self) -> bool:
        return self._child is None or self._child.process.returncode is not None

    async def stop(self) -> int:
        """SIGTERM (the ingester writes what it holds), then the rest of its output."""
        if self._child is None:
            return -1
        code = await self._child.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, OUTPUT_TAIL_TIMEOUT_S)
        return code
