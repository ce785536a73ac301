"""The road graph with its pass-through nodes merged away, for cheaper searches. Pure.

Most nodes of an OSM road graph only draw a street's curve: a node with exactly two
neighbours, entered from one and left to the other in the same direction(s) as the
street runs, is no decision point. A maximal run of such pass-through nodes between two
junctions becomes one chain edge, whose time is the sum of its road edges' times; the
shortest paths between junctions are the same. In Porto three nodes in four are
pass-through (17,270 junctions of 68,438 nodes), so a search settles a quarter as
many.

A point snapped to a pass-through node is joined to the ends of the chain(s) it lies on
along them: as an origin it drives on to a chain's head, as a destination it is reached
from a chain's tail.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

from tracker.roads import RoadGraph, _group, _offsets


class OnChain(NamedTuple):
    """A pass-through node's place on one chain: after its first `at` road edges."""

    chain: int
    at: int


class Chains:
    """Junctions (every node that is not pass-through), chain edges between them in
    compressed rows by head junction (for backward searches), and where each
    pass-through node lies."""

    def __init__(self, graph: RoadGraph) -> None:
        self.graph = graph
        through = _pass_through(graph)
        self.junction_of = array("i", [-1]) * graph.node_count
        self.junctions = array("i")
        for node in range(graph.node_count):
            if not through[node]:
                self.junction_of[node] = len(self.junctions)
                self.junctions.append(node)
        self.tail = array("i")  # junction indices
        self.head = array("i")
        self.first_member = array("i", [0])  # road edges of chain c: members[first[c]:first[c+1]]
        self.members = array("i")
        self.length_m = array("d")
        # Up to two chains pass a pass-through node (one per direction).
        self._on: dict[int, list[OnChain]] = {}
        self._walk_from_junctions(range(len(self.junctions)))
        # A ring of pass-through nodes with no junction: make one of its nodes a junction.
        for node in range(graph.node_count):
            if through[node] and node not in self._on:
                self.junction_of[node] = len(self.junctions)
                self.junctions.append(node)
                self._walk_from_junctions([self.junction_of[node]])
        self.first_in = _offsets(self.head, len(self.junctions))
        self.in_chains = _group(self.head, len(self.junctions))

    @property
    def junction_count(self) -> int:
        return len(self.junctions)

    @property
    def chain_count(self) -> int:
        return len(self.head)

    def places(self, node: int) -> list[OnChain]:
        """The chains a pass-through node lies on ([] for a junction)."""
        return self._on.get(node, [])

    def chain_edges(self, chain: int) -> array[int]:
        return self.members[self.first_member[chain] : self.first_member[chain + 1]]

    def _walk_from_junctions(self, junctions: range | list[int]) -> None:
        """One chain per road edge leaving each junction, followed through pass-through
        nodes to the next junction."""
        graph = self.graph
        for j in junctions:
            start = self.junctions[j]
            for edge in graph.out_edges(start):
                chain = len(self.head)
                metres = 0.0
                node, prev = start, -1
                while True:
                    self.members.append(edge)
                    metres += graph.length_m[edge]
                    prev, node = node, graph.head[edge]
                    if self.junction_of[node] >= 0:
                        break
                    self._on.setdefault(node, []).append(
                        OnChain(chain, len(self.members) - self.first_member[-1])
                    )
                    edge = next(e for e in graph.out_edges(node) if graph.head[e] != prev)
                self.tail.append(j)
                self.head.append(self.junction_of[node])
                self.first_member.append(len(self.members))
                self.length_m.append(metres)


def _pass_through(graph: RoadGraph) -> bytearray:
    """1 for nodes with two distinct neighbours, one road edge to or from each as the
    street's directions allow, and every direction entered also left: (in from a) ==
    (out to b) and (in from b) == (out to a)."""
    result = bytearray(graph.node_count)
    first_out, first_in, head, tail, in_edges = (
        graph.first_out,
        graph.first_in,
        graph.head,
        graph.tail,
        graph.in_edges,
    )
    for node in range(graph.node_count):
        outs = [head[e] for e in range(first_out[node], first_out[node + 1])]
        ins = [tail[in_edges[i]] for i in range(first_in[node], first_in[node + 1])]
        neighbours = set(outs) | set(ins)
        if len(neighbours) != 2 or node in neighbours:
            continue
        if len(set(outs)) != len(outs) or len(set(ins)) != len(ins):
            continue  # two ways between the same nodes: keep it a junction
        a, b = neighbours
        if (a in ins) == (b in outs) and (b in ins) == (a in outs) and outs:
            result[node] = 1
    return result
