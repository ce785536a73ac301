"""The garbage collector's pace in the stage processes.

CPython collects its youngest generation every 700 container allocations, and the older
ones after a number of those. A stage allocates tens of objects per message (paho builds
a Properties object, a message and its locks for each one) and holds a large live state
(every device's), so at thousands of messages per second the collector ran nearly all
the time, over that whole state: bench.e2e found ~20 % of an ingester's CPU in the
collector, and two ingesters fell behind at 7,500 fixes/s using ~52 % of a core each.
Collecting the youngest generation every 50,000 allocations instead, they kept up at
~30 % each, and no process grew: what a stage allocates is mostly freed by reference
counting as soon as it is done with, not by the collector, which only finds cycles.
"""

from __future__ import annotations

import gc

YOUNG_COLLECTION_ALLOCATIONS = 50_000  # CPython's default is 700


def settle() -> None:
    """Collect once, then leave everything alive now out of every later collection: a
    stage's start-up state (the tracker's fence index: ~190,000 objects holding millions
    of references, ~140 ms a full collection) is not garbage and seldom changes. What
    later becomes garbage is still freed by reference counting; only cycles among these
    objects would outlive them."""
    gc.collect()
    gc.freeze()


def tune() -> None:
    """Collect the youngest generation less often; the older ones keep their ratios."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, older, oldest)
