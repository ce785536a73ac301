"""The stage processes' collector pace: the youngest generation is collected far less
often, the older generations keep their ratios to it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fleetpulse import gc_tuning


@pytest.fixture
def restore_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_thresholds")
def test_tune_slows_only_the_young_generation() -> None:
    gc.set_threshold(700, 11, 12)
    gc_tuning.tune()
    assert gc.get_threshold() == (gc_tuning.YOUNG_COLLECTION_ALLOCATIONS, 11, 12)


@pytest.fixture
def unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.mark.usefixtures("unfreeze")
def test_settle_collects_the_garbage_then_keeps_the_living_out_of_collections() -> None:
    garbage = _Node()
    del garbage
    kept = [_Node() for _ in range(100)]
    gc_tuning.settle()
    assert not any(isinstance(o, _Node) for o in gc.get_objects())  # frozen: not tracked
    assert gc.get_freeze_count() >= len(kept)
    gc.unfreeze()
    assert sum(isinstance(o, _Node) for o in gc.get_objects()) == len(kept)
