"""Fit the battery model on each DJI log with each gauge; evaluate it on the log itself,
on the log's second half when fitted on its first, and on the other log.

The logs are read from the folder FLEETPULSE_DATA_DIR names (default: ../shared/data
beside the repository); nothing is copied into the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tracker.dji_logs import DjiLog, DjiSample, read_dji_log
from tracker.drone_energy import DroneEnergyModel, Evaluation, Gauge, evaluate, fit

DATA_DIR_ENV = "FLEETPULSE_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data"
LOGS = (
    Path("drones/dji_sf/ipad-ios11-phantom4.log"),
    Path("drones/dji_sf/iphone-ios-11-3-matrice.log"),
)


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def missing() -> str | None:
    """Why the DJI logs cannot be read, or None when they can."""
    for path in LOGS:
        if not (data_dir() / path).is_file():
            return f"{data_dir() / path} not found (set {DATA_DIR_ENV} to the shared data folder)"
    return None


def load_logs() -> list[DjiLog]:
    return [read_dji_log(data_dir() / path) for path in LOGS]


@dataclass(frozen=True)
class Row:
    fitted_on: str  # aircraft, or "<aircraft> 1st half"
    gauge: Gauge
    evaluated_on: str
    model: DroneEnergyModel
    result: Evaluation

    @property
    def kind(self) -> str:
        if self.fitted_on == self.evaluated_on:
            return "in-sample"
        return "hold-out" if self.fitted_on.endswith("1st half") else "cross"


def halves(samples: tuple[DjiSample, ...]) -> tuple[list[DjiSample], list[DjiSample]]:
    """Split at the middle of the log's time span."""
    middle = (samples[0].t_s + samples[-1].t_s) / 2
    return [s for s in samples if s.t_s < middle], [s for s in samples if s.t_s >= middle]


def run(logs: list[DjiLog]) -> list[Row]:
    rows: list[Row] = []
    for log in logs:
        name = log.aircraft or log.source
        first, second = halves(log.samples)
        for gauge in Gauge:
            capacity = log.capacity_mah if gauge is Gauge.CURRENT else None
            fitted = fit(log.samples, capacity_mah=capacity)
            assert fitted.gauge is gauge, f"{name}: wanted the {gauge} gauge"
            rows.append(Row(name, gauge, name, fitted.model, fitted.residuals))
            early = fit(first, capacity_mah=capacity).model
            rows.append(
                Row(f"{name} 1st half", gauge, f"{name} 2nd half", early, evaluate(early, second))
            )
            for other in logs:
                if other is not log:
                    target = other.aircraft or other.source
                    rows.append(
                        Row(
                            name, gauge, target, fitted.model, evaluate(fitted.model, other.samples)
                        )
                    )
    return rows
