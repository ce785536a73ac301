"""Which fences are near a point: an H3 cell index, plus a bounding-box grid for segments.

Each fence is covered by H3 cells at one resolution chosen for its size, those wholly
inside it marked interior (and compacted to coarser parents), the others boundary cells
that need the exact test. A lookup takes the point's cell at the finest resolution in use
and walks up its parents through the resolutions present, so its cost depends on the
fences near the point, not on how many there are.

Cells are chosen by their centres (H3's plain polygon fill, the fast one), against the
fence's cover polygon widened, and its interior polygon narrowed, by the largest
centre-to-vertex distance of a cell plus how far H3 children poke out of their parent
(H3 is not exactly hierarchical; a lookup through parents is consistent with compaction,
so the cover is built for it). Hence a point inside a fence is never outside its cover,
and an interior cell never holds a point outside the fence: both are property-tested.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import h3.api.basic_int as h3  # type: ignore[import-untyped,unused-ignore]
import shapely  # type: ignore[import-untyped,unused-ignore]

from tracker.fences import Fence
from tracker.shapes import M_PER_DEG, BBox, Circle, Corridor

MAX_RESOLUTION = 15
# A lookup walks only the resolutions present in its region: the point's ancestor cell at
# this resolution (~1,800 km2). Fences elsewhere, of other sizes, then cost it nothing.
REGION_RESOLUTION = 4
# Share of a fence's area that its boundary cells may take: the finer the cells, the fewer
# fixes need the exact test, and the more cells (memory) the fence costs.
BAND_FRACTION = 0.5
# Circles and corridors are tested in pure Python in about 1 us, as much as two cell
# lookups (a polygon: ~2.5 us in GEOS): their boundary band may be this much wider.
METRIC_SHAPE_BAND_FACTOR = 3.0
# A fence's boundary cells are kept near this bound by coarsening, so a country does not
# explode into millions of cells.
MAX_BOUNDARY_CELLS = 2048
# How far, in average edge lengths at a cell's resolution, the cell's fine descendants
# reach outside its hexagon (measured: at most 0.15 over 100k random points and
# resolutions 2-12; cells vary in size, hence the margin).
POKE_OUT_EDGES = 0.3
# The largest distance from a cell's centre to its boundary, in average edge lengths
# (measured: at most 1.103 over 20k cells per resolution, pentagon neighbours included).
CIRCUMRADIUS_EDGES = 1.25
# Added to every safety distance, in metres: float noise of the transforms.
SAFETY_M = 1.0
# Boundary cells have their centres within the safety distance on either side of the
# fence's edge: a band this many edge lengths wide.
BAND_WIDTH_EDGES = 2.0 * (POKE_OUT_EDGES + CIRCUMRADIUS_EDGES)

# A regular hexagon's area in square edge lengths: 3 sqrt(3) / 2.
_HEXAGON_AREA_EDGES2 = 3.0 * math.sqrt(3.0) / 2.0
_EDGE_M: tuple[float, ...] = tuple(
    float(h3.average_hexagon_edge_length(r, "m")) for r in range(MAX_RESOLUTION + 1)
)

Candidate = tuple[Fence, bool]  # (fence, True: the point is certainly inside it in 2D)


@dataclass(frozen=True)
class Cover:
    """One fence's cells: interior cells (compacted, several resolutions) answer without
    geometry; boundary cells, all at `resolution`, need the exact test."""

    resolution: int
    interior: tuple[int, ...]
    boundary: tuple[int, ...]

    @property
    def cells(self) -> int:
        return len(self.interior) + len(self.boundary)


@dataclass(frozen=True)
class IndexStats:
    fences: int
    cells: int
    resolutions: tuple[int, ...]


def _metric_size(polygon: Any) -> tuple[float, float]:
    """(perimeter m, area m2) of a lon/lat polygon, in a frame at its centre."""
    _, min_lat, _, max_lat = polygon.bounds
    kx = M_PER_DEG * math.cos(math.radians((min_lat + max_lat) / 2.0))
    metric = shapely.transform(polygon, lambda c: c * (kx, M_PER_DEG))
    return float(metric.length), float(metric.area)


def choose_resolution(
    cover: Any, *, band_fraction: float = BAND_FRACTION, max_cells: int = MAX_BOUNDARY_CELLS
) -> int:
    """The resolution whose edge length best matches the fence's size.

    Boundary cells take about BAND_WIDTH_EDGES * edge * perimeter of the area, so the edge
    for a band of `band_fraction` follows; a fence needs about perimeter / edge boundary
    cells, which `max_cells` bounds from below.
    """
    perimeter, area = _metric_size(cover)
    if perimeter <= 0.0:
        return MAX_RESOLUTION
    edge = band_fraction * area / (BAND_WIDTH_EDGES * perimeter)
    nearest = min(range(MAX_RESOLUTION + 1), key=lambda r: abs(math.log(_EDGE_M[r] / edge)))
    # A band BAND_WIDTH_EDGES wide holds about that many cells per edge length of
    # perimeter over a hexagon's area in square edges.
    cells_per_edge = BAND_WIDTH_EDGES / _HEXAGON_AREA_EDGES2
    affordable = max(
        (
            r
            for r in range(MAX_RESOLUTION + 1)
            if cells_per_edge * perimeter / _EDGE_M[r] <= max_cells
        ),
        default=0,
    )
    return min(nearest, affordable)


def safety_m(resolution: int) -> float:
    """Metres by which a cover at `resolution` is widened (and its interior narrowed): a
    cell whose centre is farther than this outside the fence holds no point of it, even
    through its descendants; one whose centre is this far inside holds no point outside."""
    return (POKE_OUT_EDGES + CIRCUMRADIUS_EDGES) * _EDGE_M[resolution] + SAFETY_M


def _cells(polygon: Any, resolution: int) -> set[int]:
    """Cells whose centre lies in the lon/lat polygon."""
    if polygon.is_empty:
        return set()
    return set(h3.h3shape_to_cells(h3.geo_to_h3shape(polygon), resolution))


def cover_cells(
    fence: Fence, *, band_fraction: float = BAND_FRACTION, max_cells: int = MAX_BOUNDARY_CELLS
) -> Cover:
    """The H3 cover of a fence's 2D shape (see the module docstring for the guarantee)."""
    shape = fence.shape
    if isinstance(shape, Circle | Corridor):
        band_fraction *= METRIC_SHAPE_BAND_FACTOR
    resolution = choose_resolution(
        shape.cover_polygon(), band_fraction=band_fraction, max_cells=max_cells
    )
    while True:
        margin = safety_m(resolution)
        candidates = _cells(shape.cover_polygon(margin), resolution)
        inside = _cells(shape.interior_polygon(margin), resolution) & candidates
        boundary = candidates - inside
        # Estimates can be off for intricate shapes: coarsen until the bound holds.
        if len(boundary) <= 2 * max_cells or resolution == 0:
            break
        resolution -= 1
    return Cover(
        resolution=resolution,
        interior=tuple(sorted(h3.compact_cells(list(inside)))),
        boundary=tuple(sorted(boundary)),
    )


# --- the segment grid -------------------------------------------------------------------

# A fence is registered in the grid level whose square cells are at least as large as its
# bounding box (so in at most 4 of them); levels grow by GRID_FACTOR from GRID_BASE_DEG.
# Fences smaller than the base cell all share it. Cells four times finer (1/256) halved a
# lookup among 10,000 tiny fences (bench/e2e's fleet, 50 m segments: 2.8 → 1.4 us) but
# doubled it on the Porto taxi trips (200 m segments, block-sized fences: one more level
# to look at and more cells per segment: 1.7 → 3.4 us); real trips decide.
GRID_BASE_DEG = 1.0 / 64.0
GRID_FACTOR = 4
GRID_LEVELS = 10
# A segment's bounding box spanning more grid cells than this is walked along instead.
_GRID_ENUMERATE_MAX = 16
_GRID_OFFSET = 1 << 19


def _grid_key(level: int, ix: int, iy: int) -> int:
    return (level << 40) | ((ix + _GRID_OFFSET) << 20) | (iy + _GRID_OFFSET)


_GridEntry = tuple[float, float, float, float, Fence]  # the fence's bounding box, and it


class _BBoxGrid:
    """Fences by bounding box on a multi-level lon/lat grid: which fences a segment may
    pass through. H3 lookups answer for points; a segment can pass through a small fence
    far from both its ends."""

    __slots__ = ("_cells", "_levels", "_sizes")

    def __init__(self) -> None:
        self._cells: dict[int, tuple[_GridEntry, ...]] = {}
        self._levels: Counter[int] = Counter()
        self._sizes: tuple[tuple[int, float], ...] = ()  # (level, cell size) in use

    @staticmethod
    def _placement(bbox: BBox) -> tuple[int, list[int]]:
        min_lon, min_lat, max_lon, max_lat = bbox
        extent = max(max_lon - min_lon, max_lat - min_lat)
        level = 0
        while level < GRID_LEVELS - 1 and GRID_BASE_DEG * GRID_FACTOR**level < extent:
            level += 1
        size = GRID_BASE_DEG * GRID_FACTOR**level
        keys = [
            _grid_key(level, ix, iy)
            for ix in range(math.floor(min_lon / size), math.floor(max_lon / size) + 1)
            for iy in range(math.floor(min_lat / size), math.floor(max_lat / size) + 1)
        ]
        return level, keys

    def add(self, fence: Fence) -> None:
        level, keys = self._placement(fence.shape.bbox)
        entry: _GridEntry = (*fence.shape.bbox, fence)
        for key in keys:
            self._cells[key] = (*self._cells.get(key, ()), entry)
        self._levels[level] += 1
        self._update()

    def remove(self, fence: Fence) -> None:
        level, keys = self._placement(fence.shape.bbox)
        for key in keys:
            rest = tuple(e for e in self._cells.get(key, ()) if e[4].id != fence.id)
            if rest:
                self._cells[key] = rest
            else:
                self._cells.pop(key, None)
        self._levels[level] -= 1
        if self._levels[level] <= 0:
            del self._levels[level]
        self._update()

    def _update(self) -> None:
        self._sizes = tuple(
            (level, GRID_BASE_DEG * GRID_FACTOR**level) for level in sorted(self._levels)
        )

    @staticmethod
    def _walk_keys(
        level: int, size: float, lon1: float, lat1: float, lon2: float, lat2: float
    ) -> set[int]:
        """Keys of the cells a long segment passes through at `level`: sampled every half
        cell, every point of the segment is in the 3x3 block around some sample's cell."""
        steps = math.ceil(math.hypot(lon2 - lon1, lat2 - lat1) / (size / 2.0))
        keys: set[int] = set()
        for s in range(steps + 1):
            t = s / steps
            bx = math.floor((lon1 + t * (lon2 - lon1)) / size)
            by = math.floor((lat1 + t * (lat2 - lat1)) / size)
            keys.update(
                _grid_key(level, bx + dx, by + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)
            )
        return keys

    def near_segment(self, lat1: float, lon1: float, lat2: float, lon2: float) -> list[Fence]:
        lo_x, hi_x = (lon1, lon2) if lon1 <= lon2 else (lon2, lon1)
        lo_y, hi_y = (lat1, lat2) if lat1 <= lat2 else (lat2, lat1)
        cells = self._cells
        found: list[Fence] = []
        several = False  # several cells of a level looked at: a fence may repeat
        for level, size in self._sizes:
            x1 = math.floor(lo_x / size)
            x2 = math.floor(hi_x / size)
            y1 = math.floor(lo_y / size)
            y2 = math.floor(hi_y / size)
            if x1 == x2 and y1 == y2:  # the common case: a short segment
                keys: Iterable[int] = (_grid_key(level, x1, y1),)
            elif (x2 - x1 + 1) * (y2 - y1 + 1) <= _GRID_ENUMERATE_MAX:
                several = True
                keys = [
                    _grid_key(level, ix, iy) for ix in range(x1, x2 + 1) for iy in range(y1, y2 + 1)
                ]
            else:
                several = True
                keys = self._walk_keys(level, size, lon1, lat1, lon2, lat2)
            for key in keys:
                held = cells.get(key)
                if held is None:
                    continue
                for min_lon, min_lat, max_lon, max_lat, fence in held:
                    if min_lon <= hi_x and max_lon >= lo_x and min_lat <= hi_y and max_lat >= lo_y:
                        found.append(fence)
        if several and len(found) > 1:
            return list({fence.id: fence for fence in found}.values())
        return found


# --- the index --------------------------------------------------------------------------


class _Indexed:
    """A fence in the index: its cells, kept compactly for removal."""

    __slots__ = ("cells", "cover", "fence")

    def __init__(self, fence: Fence, cover: Cover) -> None:
        self.fence = fence
        self.cover = cover
        self.cells = array("Q", (*cover.interior, *cover.boundary))


class _Table:
    """The cells of one region (or those coarser than regions): a small table that stays
    in the CPU cache however many fences lie elsewhere, and the resolutions to walk."""

    __slots__ = ("cells", "counts", "walk")

    def __init__(self) -> None:
        # Cell -> (fence, interior) pairs. Most cells hold one fence, so the one-element
        # tuples are shared per fence rather than built per cell.
        self.cells: dict[int, tuple[Candidate, ...]] = {}
        self.counts: Counter[int] = Counter()  # cells per resolution
        self.walk: tuple[int, ...] = ()  # the resolutions present, finest first

    def put(self, cell: int, res: int, shared: tuple[Candidate, ...]) -> None:
        held = self.cells.get(cell)
        self.cells[cell] = shared if held is None else held + shared
        self.counts[res] += 1

    def drop(self, cell: int, res: int, fence_id: str) -> None:
        rest = tuple(c for c in self.cells.get(cell, ()) if c[0].id != fence_id)
        if rest:
            self.cells[cell] = rest
        else:
            self.cells.pop(cell, None)
        self.counts[res] -= 1
        if self.counts[res] <= 0:
            del self.counts[res]

    def update_walk(self) -> None:
        self.walk = tuple(sorted(self.counts, reverse=True))


class FenceIndex:
    """Fences by H3 cell. Not thread-safe; add and remove between lookups."""

    def __init__(
        self,
        fences: Iterable[Fence] = (),
        *,
        band_fraction: float = BAND_FRACTION,
        max_boundary_cells: int = MAX_BOUNDARY_CELLS,
    ) -> None:
        self._band_fraction = band_fraction
        self._max_cells = max_boundary_cells
        self._fences: dict[str, _Indexed] = {}
        # Cells of resolution >= REGION_RESOLUTION by their ancestor there; coarser cells
        # (large fences) in one table walked for every point.
        self._regions: dict[int, _Table] = {}
        self._coarse = _Table()
        self._resolutions: Counter[int] = Counter()  # cells per resolution, everywhere
        self._finest = -1
        self._grid = _BBoxGrid()
        for fence in fences:
            self.add(fence)

    def __len__(self) -> int:
        return len(self._fences)

    def __contains__(self, fence_id: object) -> bool:
        return fence_id in self._fences

    def __iter__(self) -> Iterator[Fence]:
        return (entry.fence for entry in self._fences.values())

    def get(self, fence_id: str) -> Fence | None:
        entry = self._fences.get(fence_id)
        return None if entry is None else entry.fence

    def cover(self, fence_id: str) -> Cover | None:
        entry = self._fences.get(fence_id)
        return None if entry is None else entry.cover

    @property
    def stats(self) -> IndexStats:
        cells = len(self._coarse.cells) + sum(len(t.cells) for t in self._regions.values())
        return IndexStats(
            fences=len(self._fences),
            cells=cells,
            resolutions=tuple(sorted(self._resolutions)),
        )

    @staticmethod
    def _region(cell: int, res: int) -> int | None:
        """The region a cell is kept in; None: coarser than regions."""
        if res < REGION_RESOLUTION:
            return None
        return cell if res == REGION_RESOLUTION else h3.cell_to_parent(cell, REGION_RESOLUTION)

    def add(self, fence: Fence) -> None:
        """Index `fence`, replacing any fence with the same id."""
        self.remove(fence.id)
        cover = cover_cells(fence, band_fraction=self._band_fraction, max_cells=self._max_cells)
        entry = _Indexed(fence, cover)
        inside: tuple[Candidate, ...] = ((fence, True),)
        edge: tuple[Candidate, ...] = ((fence, False),)
        touched: set[_Table] = set()
        for group, shared in ((cover.interior, inside), (cover.boundary, edge)):
            for cell in group:
                res = h3.get_resolution(cell)
                region = self._region(cell, res)
                if region is None:
                    table = self._coarse
                else:
                    table = self._regions.get(region) or self._regions.setdefault(region, _Table())
                table.put(cell, res, shared)
                touched.add(table)
                self._resolutions[res] += 1
        for table in touched:
            table.update_walk()
        self._finest = max(self._resolutions, default=-1)
        self._fences[fence.id] = entry
        self._grid.add(fence)

    def replace_all(self, fences: Iterable[Fence]) -> None:
        """Make the index hold exactly `fences`; fences that did not change keep their cells."""
        wanted = {fence.id: fence for fence in fences}
        for fence_id in [f for f in self._fences if f not in wanted]:
            self.remove(fence_id)
        for fence_id, fence in wanted.items():
            held = self._fences.get(fence_id)
            if held is None or held.fence != fence:
                self.add(fence)

    def remove(self, fence_id: str) -> Fence | None:
        """Drop a fence; returns it, or None when it was not indexed."""
        entry = self._fences.pop(fence_id, None)
        if entry is None:
            return None
        touched: dict[int | None, _Table] = {}
        for cell in entry.cells:
            res = h3.get_resolution(cell)
            region = self._region(cell, res)
            table = self._coarse if region is None else self._regions[region]
            table.drop(cell, res, fence_id)
            touched[region] = table
            self._resolutions[res] -= 1
            if self._resolutions[res] <= 0:
                del self._resolutions[res]
        for region, table in touched.items():
            table.update_walk()
            if region is not None and not table.cells:
                del self._regions[region]
        self._finest = max(self._resolutions, default=-1)
        self._grid.remove(entry.fence)
        return entry.fence

    def candidates(self, lat: float, lon: float) -> list[Candidate]:
        """Fences whose cover holds the point; True: certainly inside in 2D (an interior
        cell), False: the exact test decides. A fence not listed does not contain it."""
        finest = self._finest
        if finest < 0:
            return []
        parent = h3.cell_to_parent
        fine = h3.latlng_to_cell(lat, lon, finest)
        found: list[Candidate] = []
        if finest >= REGION_RESOLUTION:
            table = self._regions.get(parent(fine, REGION_RESOLUTION))
            if table is not None:
                cells = table.cells
                for res in table.walk:
                    held = cells.get(fine if res == finest else parent(fine, res))
                    if held is not None:
                        found.extend(held)
        coarse = self._coarse
        for res in coarse.walk:
            held = coarse.cells.get(parent(fine, res))
            if held is not None:
                found.extend(held)
        return found

    def inside(self, fence: Fence, lat: float, lon: float) -> bool:
        """The exact 2D answer for one fence, using its cells to skip the geometry."""
        for candidate, certain in self.candidates(lat, lon):
            if candidate.id == fence.id:
                return certain or candidate.shape.contains(lat, lon)
        return False

    def near_segment(self, lat1: float, lon1: float, lat2: float, lon2: float) -> list[Fence]:
        """Fences whose bounding box meets the segment's: those it may pass through."""
        return self._grid.near_segment(lat1, lon1, lat2, lon2)
