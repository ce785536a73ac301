"""Road polylines for drawing: rebuilt from the routing graph, every road segment drawn
exactly once whatever the one-way rules, split where the network branches or the class
changes; and the box parameter's checks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.roads import RoadClass, RoadGraph, Way
from web.problems import Problem
from web.routes.basemap import RoadLayer, parse_bbox, road_chains


def node(n: int) -> tuple[int, float, float]:
    return (n, 41.0 + n * 1e-3, -8.0 + (n % 7) * 1e-3)


def segments(graph: RoadGraph) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in zip(graph.tail, graph.head, strict=True)}


def chain_segments(graph: RoadGraph) -> list[tuple[int, int]]:
    return [
        (min(a, b), max(a, b))
        for nodes, _ in road_chains(graph)
        for a, b in itertools.pairwise(nodes)
    ]


def test_a_way_through_plain_nodes_is_one_line_even_one_way() -> None:
    graph = RoadGraph.from_ways(
        [Way([node(n) for n in (1, 2, 3, 4)], RoadClass.PRIMARY, forward=True, backward=False)]
    )
    [(nodes, road_class)] = road_chains(graph)
    assert [graph.osm_id[n] for n in nodes] in ([1, 2, 3, 4], [4, 3, 2, 1])
    assert road_class == RoadClass.PRIMARY


def test_lines_end_at_junctions_and_class_changes() -> None:
    graph = RoadGraph.from_ways(
        [
            Way([node(n) for n in (1, 2, 3)], RoadClass.RESIDENTIAL),
            Way([node(n) for n in (3, 4)], RoadClass.SERVICE),  # same node 3, other class
            Way([node(n) for n in (2, 5)], RoadClass.RESIDENTIAL),  # a branch at node 2
        ]
    )
    lines = sorted(
        (sorted((graph.osm_id[nodes[0]], graph.osm_id[nodes[-1]])), c)
        for nodes, c in road_chains(graph)
    )
    assert lines == [
        ([1, 2], RoadClass.RESIDENTIAL),
        ([2, 3], RoadClass.RESIDENTIAL),
        ([2, 5], RoadClass.RESIDENTIAL),
        ([3, 4], RoadClass.SERVICE),
    ]


def test_a_lone_roundabout_is_drawn_closed() -> None:
    graph = RoadGraph.from_ways(
        [Way([node(n) for n in (1, 2, 3, 1)], RoadClass.TERTIARY, backward=False)]
    )
    [(nodes, _)] = road_chains(graph)
    assert len(nodes) == 4 and nodes[0] == nodes[-1]


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(1, 12), min_size=2, max_size=6),
            st.sampled_from(list(RoadClass)),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_every_segment_is_drawn_exactly_once(
    ways: list[tuple[list[int], RoadClass, bool]],
) -> None:
    graph = RoadGraph.from_ways(
        Way([node(n) for n in refs], road_class, forward=True, backward=two_way)
        for refs, road_class, two_way in ways
    )
    drawn = chain_segments(graph)
    assert sorted(drawn) == sorted(segments(graph))


def test_an_empty_extract_gives_an_empty_layer() -> None:
    layer = RoadLayer.from_graph(RoadGraph.from_ways([]))
    assert layer.geojson(-1, -1, 1, 1, 16) == b'{"type":"FeatureCollection","features":[]}'


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (None, "is required"),
        ("1,2,3", "expected south,west,north,east"),
        ("1,2,3,x", "expected four numbers"),
        ("1,2,inf,4", "finite"),
        ("-91,0,0,1", "-90 <= south <= north <= 90"),
        ("0,-181,1,1", "antimeridian"),
    ],
)
def test_bad_boxes_are_named(text: str | None, detail: str) -> None:
    with pytest.raises(Problem) as raised:
        parse_bbox(text)
    assert raised.value.status == 400
    assert detail in raised.value.detail


def test_a_box_is_south_west_north_east() -> None:
    assert parse_bbox("41.1,-8.7,41.2,-8.5") == (41.1, -8.7, 41.2, -8.5)
