"""The real data the geofence benchmark and the Porto replay test share: the Porto taxi
trips, the municipality boundary, and a dozen fences drawn along the city's landmarks.

Read from the folder FLEETPULSE_DATA_DIR names (default: ../shared/data beside the
repository); nothing is copied into the repository.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tracker.fences import Fence
from tracker.positions import DeviceKind, Fix
from tracker.shapes import Circle, Corridor, MultiPolygon, Polygon, Position, Ring

DATA_DIR_ENV = "FLEETPULSE_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data"
TRIPS = Path("porto/trips_dev.csv")
BOUNDARIES = Path("porto/porto_admin_boundaries.geojson")
MUNICIPALITY_OSM_ID = 3372453  # Porto municipality (concelho); 3459013 is the district
FIX_INTERVAL = timedelta(seconds=15)  # the trips carry one fix every 15 s


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def missing() -> str | None:
    """Why the Porto data cannot be read, or None when it can."""
    root = data_dir()
    for path in (TRIPS, BOUNDARIES):
        if not (root / path).is_file():
            return f"{root / path} not found (set {DATA_DIR_ENV} to the shared data folder)"
    return None


def load_fixes(root: Path | None = None) -> list[Fix]:
    """Every fix of every trip, device = taxi, fix time = TIMESTAMP + 15 s x index, in
    fix-time order (stable: trips in file order)."""
    fixes: list[Fix] = []
    with open((root or data_dir()) / TRIPS, newline="") as f:
        for row in csv.DictReader(f):
            start = datetime.fromtimestamp(int(row["TIMESTAMP"]), UTC)
            for i, (lon, lat) in enumerate(json.loads(row["POLYLINE"])):
                ts = start + FIX_INTERVAL * i
                fixes.append(
                    Fix(
                        device_id=row["TAXI_ID"],
                        ts=ts,
                        lat=float(lat),
                        lon=float(lon),
                        received_at=ts,
                        kind=DeviceKind.VEHICLE,
                    )
                )
    fixes.sort(key=lambda fix: fix.ts)
    return fixes


def _rings(coordinates: list[list[list[float]]]) -> tuple[Ring, tuple[Ring, ...]]:
    rings = [tuple((float(p[0]), float(p[1])) for p in ring) for ring in coordinates]
    return rings[0], tuple(rings[1:])


def load_municipality(root: Path | None = None) -> Fence:
    """The Porto municipality boundary (OSM relation 3372453) as a fence."""
    document = json.loads(((root or data_dir()) / BOUNDARIES).read_text())
    for feature in document["features"]:
        if feature["properties"].get("osm_id") == MUNICIPALITY_OSM_ID:
            geometry = feature["geometry"]
            if geometry["type"] == "Polygon":
                shape: Polygon | MultiPolygon = Polygon(*_rings(geometry["coordinates"]))
            else:
                shape = MultiPolygon(tuple(Polygon(*_rings(p)) for p in geometry["coordinates"]))
            return Fence("porto-municipality", "Porto (municipality)", shape)
    raise LookupError(f"no feature with osm_id {MUNICIPALITY_OSM_ID} in {BOUNDARIES}")


def _box(west: float, south: float, east: float, north: float) -> Ring:
    return ((west, south), (east, south), (east, north), (west, north), (west, south))


def _line(*points: Position) -> tuple[Position, ...]:
    return points


def drawn_fences() -> list[Fence]:
    """A dozen fences drawn by hand on the trips' streets: circles, corridors along main
    roads, polygons with holes and a multipolygon (positions approximate)."""
    return [
        Fence("aliados", "Avenida dos Aliados", Circle(41.1486, -8.6110, 150.0), dwell_s=120),
        Fence("sao-bento", "Sao Bento station", Circle(41.1457, -8.6104, 120.0)),
        Fence("casa-da-musica", "Casa da Musica", Circle(41.1588, -8.6307, 200.0)),
        Fence("campanha", "Campanha station", Circle(41.1488, -8.5856, 250.0), dwell_s=300),
        Fence("dragao", "Estadio do Dragao", Circle(41.1617, -8.5836, 300.0)),
        Fence("sao-joao", "Hospital de Sao Joao", Circle(41.1829, -8.6009, 350.0)),
        Fence("airport", "Francisco Sa Carneiro airport", Circle(41.2421, -8.6781, 1500.0)),
        Fence(
            "boavista",
            "Avenida da Boavista",
            Corridor(
                _line(
                    (-8.6296, 41.1580),
                    (-8.6400, 41.1603),
                    (-8.6550, 41.1632),
                    (-8.6700, 41.1660),
                    (-8.6890, 41.1694),
                ),
                60.0,
            ),
        ),
        Fence(
            "fernao-magalhaes",
            "Avenida Fernao de Magalhaes",
            Corridor(
                _line(
                    (-8.6035, 41.1515), (-8.5990, 41.1580), (-8.5950, 41.1640), (-8.5915, 41.1700)
                ),
                50.0,
            ),
        ),
        Fence(
            "douro-riverside",
            "Douro riverside",
            Corridor(
                _line(
                    (-8.6120, 41.1405),
                    (-8.6250, 41.1420),
                    (-8.6400, 41.1445),
                    (-8.6550, 41.1470),
                    (-8.6700, 41.1495),
                ),
                80.0,
            ),
        ),
        Fence(
            "baixa",
            "Baixa (downtown) without Trindade",
            Polygon(
                _box(-8.6200, 41.1420, -8.6000, 41.1560),
                (_box(-8.6140, 41.1470, -8.6080, 41.1510),),
            ),
            dwell_s=600,
        ),
        Fence(
            "parks",
            "Parque da Cidade and Palacio de Cristal",
            MultiPolygon(
                (
                    Polygon(
                        _box(-8.6850, 41.1640, -8.6700, 41.1720),
                        (_box(-8.6800, 41.1670, -8.6760, 41.1690),),
                    ),
                    Polygon(_box(-8.6290, 41.1460, -8.6230, 41.1495)),
                )
            ),
        ),
    ]
