"""CPU time and memory of processes, read from /proc (Linux) without a dependency."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# /proc/<pid>/stat fields after the command name (field 3 onwards): utime and stime are
# fields 14 and 15, ppid is field 4.
_PPID, _UTIME, _STIME = 4 - 3, 14 - 3, 15 - 3


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (the gone count as 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[_UTIME]) + int(fields[_STIME])
    return total / CLOCK_TICKS_PER_S


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM: the largest resident set the process has had since it started."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children_named(parent: int, name: str) -> list[int]:
    """Direct children of `parent` whose command name is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = _stat_fields(int(entry.name))
        if comm == name and fields is not None and int(fields[_PPID]) == parent:
            found.append(int(entry.name))
    return found


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds summed over cores, wall seconds) since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    ticks = [int(v) for v in first[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS_PER_S, time.monotonic()


@dataclass
class CpuMeter:
    """CPU % of a set of processes between `start()` and `stop()` (100 % = one core)."""

    pids: list[int]
    _cpu0: float = 0.0
    _t0: float = 0.0

    def start(self) -> None:
        self._cpu0, self._t0 = cpu_seconds(self.pids), time.monotonic()

    def percent(self) -> float:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        return 100.0 * (cpu_seconds(self.pids) - self._cpu0) / elapsed


@dataclass
class MachineMeter:
    """Busy % of the whole machine over an interval (100 % = one core busy)."""

    _busy0: float = 0.0
    _t0: float = 0.0

    def start(self) -> None:
        self._busy0, self._t0 = machine_busy_s()

    def percent(self) -> float:
        busy, now = machine_busy_s()
        return 100.0 * (busy - self._busy0) / max(now - self._t0, 1e-9)
