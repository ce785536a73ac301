"""The road graph: which ways are drivable and in which direction, maxspeed parsing,
snapping to the routable network; and the real Porto extract when it is there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.geofence import porto
from tracker.live import haversine_m
from tracker.roads import (
    CLASS_LIMIT_KMH,
    KMH,
    MPH_KMH,
    RoadClass,
    RoadGraph,
    angle_between_deg,
    bearing_deg,
    load_roads,
    parse_maxspeed,
    way_from_tags,
)

# A loop 1-2-4-5-1 with a two-way spur 2-3, a footway and a private road that must not
# be driven, a separate two-way street (10-11) and a lone motorway (30-31).
NODES = {
    1: (41.150, -8.610),
    2: (41.151, -8.610),
    3: (41.152, -8.610),
    4: (41.151, -8.609),
    5: (41.150, -8.609),
    10: (41.160, -8.600),
    11: (41.1605, -8.600),
    20: (41.1525, -8.6095),
    30: (41.170, -8.620),
    31: (41.171, -8.620),
}
WAYS = [
    (101, [1, 2, 3], {"highway": "residential", "maxspeed": "30"}),
    (102, [2, 4], {"highway": "primary", "oneway": "yes", "maxspeed": "50 mph"}),
    (103, [5, 4], {"highway": "tertiary", "oneway": "-1", "maxspeed": "PT:urban"}),
    (104, [5, 1], {"highway": "service"}),
    (105, [3, 20, 4], {"highway": "footway"}),
    (106, [10, 11], {"highway": "residential"}),
    (107, [3, 20], {"highway": "residential", "access": "private"}),
    (108, [30, 31], {"highway": "motorway"}),
]


def write_osm(path: Path) -> Path:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    for node_id, (lat, lon) in NODES.items():
        lines.append(f'  <node id="{node_id}" version="1" lat="{lat}" lon="{lon}"/>')
    for way_id, refs, tags in WAYS:
        lines.append(f'  <way id="{way_id}" version="1">')
        lines += [f'    <nd ref="{ref}"/>' for ref in refs]
        lines += [f'    <tag k="{k}" v="{v}"/>' for k, v in tags.items()]
        lines.append("  </way>")
    lines.append("</osm>")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def graph(tmp_path: Path) -> RoadGraph:
    return load_roads(write_osm(tmp_path / "tiny.osm"))


def _tiny() -> RoadGraph:
    """The same network without a file, for the property test (no tmp_path there)."""
    ways = []
    for _, refs, tags in WAYS:
        way = way_from_tags(tags, [(ref, *NODES[ref]) for ref in refs])
        if way is not None:
            ways.append(way)
    return RoadGraph.from_ways(ways)


TINY = _tiny()


def node(graph: RoadGraph, osm_id: int) -> int:
    return list(graph.osm_id).index(osm_id)


def edges(graph: RoadGraph) -> set[tuple[int, int]]:
    return {
        (graph.osm_id[graph.tail[e]], graph.osm_id[graph.head[e]]) for e in range(graph.edge_count)
    }


def test_directions_follow_oneway_tags(graph: RoadGraph) -> None:
    assert edges(graph) == {
        (1, 2), (2, 1), (2, 3), (3, 2),  # two-way residential
        (2, 4),  # oneway=yes
        (4, 5),  # oneway=-1 on a way drawn 5 -> 4
        (5, 1), (1, 5),  # two-way service
        (10, 11), (11, 10),
        (30, 31),  # a motorway is one way without saying so
    }  # fmt: skip
    assert graph.edge_count == 11


def test_the_file_and_the_builder_agree(graph: RoadGraph) -> None:
    assert edges(graph) == edges(TINY)


def test_footways_and_private_roads_are_left_out(graph: RoadGraph) -> None:
    assert 20 not in set(graph.osm_id)
    assert graph.node_count == 9


def test_edge_attributes(graph: RoadGraph) -> None:
    by_pair = {
        (graph.osm_id[graph.tail[e]], graph.osm_id[graph.head[e]]): e
        for e in range(graph.edge_count)
    }
    residential, primary, tertiary, service = (
        by_pair[1, 2],
        by_pair[2, 4],
        by_pair[4, 5],
        by_pair[5, 1],
    )
    assert graph.length_m[residential] == pytest.approx(111.2, abs=0.5)
    assert graph.length_m[primary] == pytest.approx(83.9, abs=0.5)
    assert graph.limit_mps[residential] == pytest.approx(30 * KMH)
    assert graph.limit_mps[primary] == pytest.approx(50 * MPH_KMH * KMH)
    assert graph.limit_mps[tertiary] == pytest.approx(50 * KMH)
    assert graph.limit_mps[service] == pytest.approx(CLASS_LIMIT_KMH[RoadClass.SERVICE] * KMH)
    assert graph.road_class[primary] == RoadClass.PRIMARY
    assert list(graph.out_edges(node(graph, 4))) == [by_pair[4, 5]]


def test_only_the_largest_strongly_connected_part_is_routable(graph: RoadGraph) -> None:
    routable = {graph.osm_id[n] for n in range(graph.node_count) if graph.routable[n]}
    assert routable == {1, 2, 3, 4, 5}


@pytest.mark.parametrize(
    ("tag", "kmh"),
    [
        ("50", 50.0),
        ("50 km/h", 50.0),
        ("50kmh", 50.0),
        ("30 mph", 30 * MPH_KMH),
        ("10 knots", 18.52),
        ("PT:urban", 50.0),
        ("PT:rural", 90.0),
        ("PT:motorway", 120.0),
        ("DE:zone30", 30.0),
        ("30;50", 30.0),
        ("walk", 7.0),
        ("none", None),
        ("signals", None),
        ("variable", None),
        ("PT:nowhere", None),
        ("0", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_maxspeed(tag: str | None, kmh: float | None) -> None:
    found = parse_maxspeed(tag)
    if kmh is None:
        assert found is None
    else:
        assert found == pytest.approx(kmh * KMH)


def test_snap_to_the_nearest_routable_node(graph: RoadGraph) -> None:
    # ~11 m east of node 3.
    found = graph.snap(41.152, -8.60987)
    assert found is not None
    assert graph.osm_id[found[0]] == 3
    assert found[1] == pytest.approx(10.9, abs=0.5)
    # ~111 m north of node 3: within the default reach, not within 100 m.
    far = graph.snap(41.153, -8.610)
    assert far is not None and graph.osm_id[far[0]] == 3
    assert graph.snap(41.153, -8.610, max_m=100.0) is None


def test_snap_skips_nodes_off_the_routable_part(graph: RoadGraph) -> None:
    # Right on node 10, whose street is cut off: ~1.3 km from the loop, too far.
    assert graph.snap(41.160, -8.600) is None
    found = graph.snap(41.160, -8.600, max_m=5_000.0)
    assert found is not None and graph.osm_id[found[0]] in {1, 2, 3, 4, 5}


@settings(max_examples=200, deadline=None)
@given(
    lat=st.floats(41.1475, 41.1545),
    lon=st.floats(-8.6130, -8.6060),
    max_m=st.sampled_from([50.0, 150.0, 250.0]),
)
def test_snap_agrees_with_brute_force(lat: float, lon: float, max_m: float) -> None:
    """Whatever grid square the point falls in, the ring search finds the nearest."""
    graph = TINY
    nearest = min(
        (haversine_m(lat, lon, graph.lat[n], graph.lon[n]), n)
        for n in range(graph.node_count)
        if graph.routable[n]
    )
    found = graph.snap(lat, lon, max_m=max_m)
    if nearest[0] > max_m + 0.01:
        assert found is None
    elif nearest[0] < max_m - 0.01:
        assert found is not None
        assert found[1] == pytest.approx(nearest[0], abs=0.01)


@settings(max_examples=100, deadline=None)
@given(
    lat=st.floats(41.1475, 41.1545),
    lon=st.floats(-8.6130, -8.6060),
    max_m=st.sampled_from([30.0, 120.0, 400.0]),
)
def test_nodes_within_agrees_with_brute_force(lat: float, lon: float, max_m: float) -> None:
    graph = TINY
    expected = sorted(
        (haversine_m(lat, lon, graph.lat[n], graph.lon[n]), n)
        for n in range(graph.node_count)
        if graph.routable[n] and haversine_m(lat, lon, graph.lat[n], graph.lon[n]) <= max_m
    )
    found = graph.nodes_within(lat, lon, max_m)
    assert [n for n, _ in found] == [n for _, n in expected]
    assert [m for _, m in found] == pytest.approx([m for m, _ in expected])


def test_bearings() -> None:
    assert bearing_deg(41.15, -8.61, 41.16, -8.61) == pytest.approx(0.0, abs=1e-9)
    assert bearing_deg(41.15, -8.61, 41.15, -8.60) == pytest.approx(90.0, abs=0.01)
    assert bearing_deg(41.15, -8.61, 41.14, -8.61) == pytest.approx(180.0)
    assert bearing_deg(41.15, -8.61, 41.15, -8.62) == pytest.approx(270.0, abs=0.01)
    assert angle_between_deg(350.0, 10.0) == pytest.approx(20.0)
    assert angle_between_deg(90.0, 270.0) == pytest.approx(180.0)
    assert angle_between_deg(45.0, 45.0) == 0.0


skip_porto = pytest.mark.skipif(
    not (porto.data_dir() / "porto/porto_2022-11.osm.pbf").is_file(),
    reason=f"porto/porto_2022-11.osm.pbf not found under {porto.data_dir()}"
    f" (set {porto.DATA_DIR_ENV} to the shared data folder)",
)


@skip_porto
def test_porto_extract_loads_into_one_routable_network() -> None:
    started = time.perf_counter()
    graph = load_roads(porto.data_dir() / "porto/porto_2022-11.osm.pbf")
    elapsed = time.perf_counter() - started
    assert 60_000 < graph.node_count < 94_664  # drivable ways only
    assert graph.edge_count > 100_000
    assert sum(graph.routable) / graph.node_count > 0.9
    aliados = graph.snap(41.1486, -8.6110)  # Avenida dos Aliados
    assert aliados is not None and aliados[1] < 30.0
    assert graph.snap(41.3, -8.3) is None  # far outside the extract
    assert elapsed < 10.0  # ~1 s on the CI machine; generous for a loaded one
