"""The rest of the machine while a step runs: load average, and the CPU of every process
the benchmark did not start, by command name (from /proc, Linux).

On a shared machine this says how much of the 2 cores the benchmark really had: a step
whose `other` CPU is high was measured against someone else's work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ingest.procstat import CLOCK_TICKS_PER_S, MachineMeter

TOP_OTHERS = 5


def process_cpu() -> dict[int, tuple[str, int]]:
    """Every process's (command name, CPU ticks used so far)."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
    return out


def _kernel_ticks() -> tuple[int, int]:
    """(irq + softirq, steal) ticks since boot over all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[5] + fields[6], fields[7]


def descendants(root: int, table: dict[int, int] | None = None) -> set[int]:
    """`root` and every process below it (its children's children too)."""
    parents = table if table is not None else _parents()
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            out[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    return out


@dataclass
class Background:
    """`start()`, then `stop(ours)`: the machine's busy CPU, and the others' by name."""

    _cpu0: dict[int, tuple[str, int]] = field(default_factory=dict)
    _t0: float = 0.0
    _load0: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _machine: MachineMeter = field(default_factory=MachineMeter)
    _kernel0: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self._cpu0, self._t0 = process_cpu(), time.monotonic()
        self._load0 = os.getloadavg()
        self._kernel0 = _kernel_ticks()
        self._machine.start()

    def stop(self, ours: set[int]) -> dict[str, Any]:
        machine = self._machine.percent()
        now, elapsed = process_cpu(), max(time.monotonic() - self._t0, 1e-9)
        kernel = _kernel_ticks()
        irq, steal = (
            100.0 * (b - a) / CLOCK_TICKS_PER_S / elapsed
            for a, b in zip(self._kernel0, kernel, strict=True)
        )
        ours_pct = 0.0
        others: dict[str, float] = {}
        for pid, (name, ticks) in now.items():
            used = ticks - self._cpu0.get(pid, (name, 0))[1]
            pct = 100.0 * used / CLOCK_TICKS_PER_S / elapsed
            if pid in ours:
                ours_pct += pct
            else:
                others[name] = others.get(name, 0.0) + pct
        top = sorted(others.items(), key=lambda item: -item[1])[:TOP_OTHERS]
        return {
            "loadavg_start": [round(v, 2) for v in self._load0],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "machine_cpu_pct": round(machine, 1),
            "ours_cpu_pct": round(ours_pct, 1),
            # Interrupts (loopback networking is mostly softirq, partly ours) and time
            # the hypervisor gave to other guests: busy, but no process's.
            "irq_cpu_pct": round(irq, 1),
            "steal_cpu_pct": round(steal, 1),
            # Busy time not ours: the rest of the machine. Processes that ended during
            # the interval count here too (they cannot be attributed by name).
            "other_cpu_pct": round(max(0.0, machine - ours_pct - irq - steal), 1),
            "top_others": {k: round(v, 1) for k, v in top if v >= 0.5},
        }
