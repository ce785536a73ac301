"""Child processes of the benchmark: started here, always stopped here.

Each child is a separate OS process so that publishers, the baseline subscriber and the
ingester each have their own interpreter (and GIL), as they would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# A child that ignores SIGTERM this long gets SIGKILL.
TERMINATE_GRACE_S = 15.0
# Publishers: time to start the interpreter and connect before the common start time.
PUBLISHER_START_DELAY_S = 1.5
# Beyond the publishing time: PUBACK wait at the end plus start-up.
PUBLISHER_EXTRA_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class Child:
    """One started process; `stop()` is idempotent and always leaves it reaped."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, name: str, argv: list[str], env: dict[str, str] | None = None, stderr: Any = None
    ) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        return cls(name, process)

    async def read_json_line(self) -> dict[str, Any] | None:
        """The next stdout line as JSON; None at end of output."""
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
        return None

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), TERMINATE_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode if self.process.returncode is not None else -1


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


async def run_publishers(
    url: str,
    rate_per_s: float,
    duration_s: float,
    publishers: int,
    devices: int,
    seed: int,
    start_at: float,
) -> list[dict[str, Any]]:
    """Start `publishers` processes sharing the rate and the devices, publishing from
    `start_at` (epoch s); their reports."""
    children: list[Child] = []
    try:
        for index in range(publishers):
            argv = python_module(
                "bench.ingest.publisher",
                f"--url={url}",
                f"--rate={rate_per_s / publishers}",
                f"--duration={duration_s}",
                f"--start-at={start_at}",
                f"--index={index}",
                f"--publishers={publishers}",
                f"--devices={devices}",
                f"--seed={seed}",
            )
            children.append(await Child.start(f"publisher-{index}", argv))
        timeout = max(0.0, start_at - time.time()) + duration_s + PUBLISHER_EXTRA_TIMEOUT_S
        reads = [asyncio.create_task(c.read_json_line()) for c in children]
        try:
            _, late = await asyncio.wait(reads, timeout=timeout)
        finally:
            for read in reads:
                read.cancel()
        if late:
            raise RuntimeError(f"publishers still running after {timeout:.0f} s")
        reports = [read.result() for read in reads]
        for child in children:
            if await child.process.wait() != 0:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}")
        if any(r is None for r in reports):
            raise RuntimeError("a publisher exited without a report")
        return [r for r in reports if r is not None]
    finally:
        for child in children:
            await child.stop()


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
