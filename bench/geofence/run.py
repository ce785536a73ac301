"""Measure the geofence engine on the Porto trips: (a) how its rate holds as fences are
added elsewhere, (b) how it falls as fences crowd the city."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.geofence import porto, synthetic
from tracker.fence_index import FenceIndex
from tracker.fences import Fence
from tracker.geofencing import GeofenceEngine, GeofenceRules
from tracker.positions import Fix

SCALING_EXTRA = (0, 1_000, 10_000, 100_000)
QUICK_SCALING_EXTRA = (0, 1_000, 10_000)
DENSITY = (10, 100, 1_000)
REPEATS = 5
QUICK_REPEATS = 1
# The tracker's settings: hysteresis and the outlier filter off, a 5 s reorder window.
RULES = GeofenceRules()
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024


@dataclass
class Row:
    part: str  # "scaling" or "density"
    fences: int  # in the index
    added: int  # scaling: fences elsewhere; density: fences over Porto
    cells: int
    build_s: float  # building the index for the fences added since the previous row
    index_mib: float  # resident memory grown since the part started (cumulative)
    fixes_per_s: float  # engine.offer + flush over all trips, median of the repeats
    lookups_per_s: float  # FenceIndex.candidates alone
    events: int
    mean_containing: float  # fences containing a fix, on average
    ratio: float | None = None  # scaling: fixes/s over the Porto-fences-only fixes/s


@dataclass
class Run:
    machine: dict[str, Any]
    config: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    @property
    def scaling_ratio(self) -> float | None:
        ratios = [r.ratio for r in self.rows if r.part == "scaling" and r.ratio is not None]
        return ratios[-1] if ratios else None


def describe() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()[:2]),
    }


def _rss_mib() -> float:
    resident = int(Path("/proc/self/statm").read_text().split()[1])
    return resident * _PAGE / _MIB


def _replay(index: FenceIndex, fixes: list[Fix]) -> tuple[float, int]:
    engine = GeofenceEngine(index, RULES)
    started = time.perf_counter()
    events = 0
    for fix in fixes:
        events += len(engine.offer(fix))
    events += len(engine.flush())
    return len(fixes) / (time.perf_counter() - started), events


def _lookups(index: FenceIndex, fixes: list[Fix]) -> float:
    started = time.perf_counter()
    for fix in fixes:
        index.candidates(fix.lat, fix.lon)
    return len(fixes) / (time.perf_counter() - started)


def _mean_containing(index: FenceIndex, fixes: list[Fix]) -> float:
    total = 0
    for fix in fixes:
        for fence, certain in index.candidates(fix.lat, fix.lon):
            total += certain or fence.shape.contains(fix.lat, fix.lon)
    return total / len(fixes)


def _add(index: FenceIndex, fences: list[Fence]) -> float:
    started = time.perf_counter()
    for fence in fences:
        index.add(fence)
    return time.perf_counter() - started


def _measure(
    part: str,
    index: FenceIndex,
    added: int,
    build_s: float,
    base_mib: float,
    fixes: list[Fix],
    repeats: int,
    reference: FenceIndex | None = None,
) -> Row:
    """Replay the trips `repeats` times; with a `reference` index, replay over it in turn
    with each repeat, so the ratio compares runs made under the same machine load."""
    gc.collect()
    index_mib = _rss_mib() - base_mib
    # The index is long-lived: keep the collector from walking it (as a tracker would).
    gc.freeze()
    try:
        rates, reference_rates, events = [], [], 0
        for _ in range(repeats):
            if reference is not None:
                reference_rates.append(_replay(reference, fixes)[0])
            rate, events = _replay(index, fixes)
            rates.append(rate)
        lookups = statistics.median(_lookups(index, fixes) for _ in range(repeats))
    finally:
        gc.unfreeze()
    fixes_per_s = statistics.median(rates)
    return Row(
        part=part,
        fences=len(index),
        added=added,
        cells=index.stats.cells,
        build_s=build_s,
        index_mib=index_mib,
        fixes_per_s=fixes_per_s,
        lookups_per_s=lookups,
        events=events,
        mean_containing=_mean_containing(index, fixes),
        ratio=None if reference is None else fixes_per_s / statistics.median(reference_rates),
    )


def density(fixes: list[Fix], repeats: int, log: Any) -> list[Row]:
    """10, 100, 1,000 fences of block to district size over Porto (nested sets)."""
    gc.collect()
    base = _rss_mib()
    index = FenceIndex()
    fences = synthetic.over_porto(max(DENSITY))
    rows = []
    for count in DENSITY:
        build_s = _add(index, fences[len(index) : count])
        rows.append(_measure("density", index, count, build_s, base, fixes, repeats))
        log(rows[-1])
    return rows


def scaling(fixes: list[Fix], extras: tuple[int, ...], repeats: int, log: Any) -> list[Row]:
    """The Porto fences, plus fences elsewhere in Portugal and Europe (nested sets); the
    ratio is to an index of the Porto fences alone, replayed in turn with each repeat."""
    gc.collect()
    base = _rss_mib()
    porto_fences = [porto.load_municipality(), *porto.drawn_fences()]
    reference = FenceIndex(porto_fences)
    index = FenceIndex()
    build_s = _add(index, porto_fences)
    rows: list[Row] = []
    added = 0
    for extra in extras:
        build_s += _add(index, synthetic.elsewhere(extra - added, start=added))
        added = extra
        row = _measure("scaling", index, extra, build_s, base, fixes, repeats, reference)
        rows.append(row)
        log(row)
        build_s = 0.0
    return rows


def run(quick: bool, log: Any) -> Run:
    repeats = QUICK_REPEATS if quick else REPEATS
    extras = QUICK_SCALING_EXTRA if quick else SCALING_EXTRA
    fixes = porto.load_fixes()
    result = Run(
        machine=describe(),
        config={
            "quick": quick,
            "fixes": len(fixes),
            "devices": len({f.device_id for f in fixes}),
            "repeats": repeats,
            "rules": {
                "margin_m": RULES.margin_m,
                "confirm_fixes": RULES.confirm_fixes,
                "max_speed_mps": RULES.max_speed_mps,
                "reorder_window_s": RULES.reorder_window_s,
            },
        },
    )
    # Density first: it is small, so the memory scaling frees is not reused under it.
    result.rows.extend(density(fixes, repeats, log))
    result.rows.extend(scaling(fixes, extras, repeats, log))
    return result
