"""Sampling profiles of stage processes with py-spy (the `bench` extra), while a step
runs: the frames where the samples fall.

py-spy reads the process's memory from outside (ptrace), so the stage runs unmodified;
`--nonblocking` keeps it from pausing the process at each sample, at the price of an
occasional torn stack.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_S = 100
TOP = 8
# Frames of our own code, for the inclusive list (the rest is the event loop, libraries);
# py-spy names a frame `function (package/module.py:line)`.
PROJECT_PACKAGES = tuple(f" ({p}/" for p in ("ingest", "tracker", "web", "mqtt", "fleetpulse"))
# Frames under which nearly every sample falls (the process's main, the stage's loop)
# say nothing about where the time goes.
ENTRY_POINT_SHARE = 0.9
EXTRA_WAIT_S = 30.0


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass(frozen=True)
class Profile:
    process: str
    samples: int
    self_pct: list[tuple[str, float]]  # leaf frames: where the time is spent
    inclusive_pct: list[tuple[str, float]]  # our frames with everything they call
    error: str | None = None


async def record(binary: str, pid: int, duration_s: float, out: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        binary,
        "record",
        f"--pid={pid}",
        f"--duration={max(1, round(duration_s))}",
        f"--rate={SAMPLES_PER_S}",
        "--format=raw",
        "--function",  # frames by function (with its first line), not by line
        "--nonblocking",
        f"--output={out}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(
    name: str, process: asyncio.subprocess.Process, out: Path, duration_s: float
) -> Profile:
    try:
        _, err = await asyncio.wait_for(process.communicate(), duration_s + EXTRA_WAIT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        return Profile(name, 0, [], [], "py-spy did not finish")
    raw = await asyncio.to_thread(_read, out)
    if process.returncode != 0 or raw is None:
        detail = err.decode(errors="replace").strip().splitlines()
        return Profile(name, 0, [], [], detail[-1] if detail else f"exit {process.returncode}")
    return summarize(name, raw)


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def summarize(name: str, raw: str, top: int = TOP) -> Profile:
    """py-spy's raw (collapsed) stacks, `outer;...;inner count` per line, ranked."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # The first frame names the thread ("process 123:\"python\"" or a thread id).
        frames = [f for f in frames if " (" in f]
        if not frames:
            continue
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            if any(package in frame for package in PROJECT_PACKAGES):
                inclusive[frame] += count

    def ranked(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100.0 * n / total, 1)) for f, n in counter.most_common(top)]

    for frame, n in list(inclusive.items()):
        if n >= ENTRY_POINT_SHARE * total:
            del inclusive[frame]
    return Profile(name, total, ranked(leaves), ranked(inclusive) if total else [])
