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
