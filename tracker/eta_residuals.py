"""How far the model's own driving times were from the real ones, and the P50 and P90
that follow from it. Pure.

On each arrival, the pair (raw model time, actual time) of every ETA given for it is
recorded under the ETA's method (road graph or H3 grid), in a window of recent pairs.
P50 and P90 are lines fitted to that window by quantile regression: the actual time at
its 50th and 90th percentile as slope x raw + intercept. The intercept is what a ratio
alone cannot say: reaching a stop costs time that no distance explains (the last metres
at walking pace, stopping, parking), about a minute on the Porto trips. Against the
ratio quantiles per distance band used before, primed alike, the lines cut the road
ETA's MAE from 112 to 102 s on a validation split of the benchmark's training taxis, and
its P90 coverage rose from 86 to 90 % (docs/benchmarks.md).

Before `min_count` pairs, a prior spread (ratios `PRIOR_P50_RATIO`, `PRIOR_P90_RATIO`)
is used. A fit takes a few milliseconds, so it is redone every `refit_every` new pairs
rather than on every arrival.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

RESIDUAL_WINDOW = 1_000  # per method: about a morning's arrivals of a mid-size fleet
MIN_RESIDUALS = 30  # two parameters per line: fewer pairs give a wild P90
REFIT_EVERY = 10
PRIOR_P50_RATIO = 1.0
PRIOR_P90_RATIO = 1.5
# A slope outside this range is a broken model, not a calibration: clamp the search.
MIN_SLOPE = 0.1
MAX_SLOPE = 5.0
FIT_STEPS = 60  # ternary search steps on the slope: (2/3)^60 of the range is ~1e-10


class QuantileLine(NamedTuple):
    slope: float
    intercept: float  # seconds, never negative: no stop is reached before the drive ends

    def at(self, raw_s: float) -> float:
        return self.slope * raw_s + self.intercept


PRIOR_LINES = (QuantileLine(PRIOR_P50_RATIO, 0.0), QuantileLine(PRIOR_P90_RATIO, 0.0))


def fit_quantile_line(raw: Sequence[float], actual: Sequence[float], q: float) -> QuantileLine:
    """The line minimising the quantile (check) loss of `actual` against `raw` at level
    q, with a non-negative intercept.

    For a fixed slope the best intercept is the q-quantile of actual - slope x raw
    (clamped at 0); the loss left is convex in the slope (a partial minimum of a jointly
    convex function), so a ternary search on the slope finds the optimum."""
    if len(raw) != len(actual) or not raw:
        raise ValueError("need as many raw times as actual times, at least one")
    x = np.asarray(raw, dtype=float)
    y = np.asarray(actual, dtype=float)

    def loss(slope: float) -> tuple[float, float]:
        rest = y - slope * x
        intercept = max(float(np.quantile(rest, q, method="inverted_cdf")), 0.0)
        u = rest - intercept
        return float(np.sum(np.maximum(q * u, (q - 1.0) * u))), intercept

    low, high = MIN_SLOPE, MAX_SLOPE
    for _ in range(FIT_STEPS):
        third = (high - low) / 3.0
        if loss(low + third)[0] < loss(high - third)[0]:
            high -= third
        else:
            low += third
    slope = (low + high) / 2.0
    return QuantileLine(slope, loss(slope)[1])


class Residuals:
    """Recent (raw, actual) driving times per method, and the P50/P90 lines they give."""

    def __init__(
        self,
        window: int = RESIDUAL_WINDOW,
        min_count: int = MIN_RESIDUALS,
        refit_every: int = REFIT_EVERY,
    ) -> None:
        self.min_count = min_count
        self.refit_every = refit_every
        self._window = window
        self._pairs: dict[str, deque[tuple[float, float]]] = {}
        self._since_fit: dict[str, int] = {}
        self._lines: dict[str, tuple[QuantileLine, QuantileLine]] = {}

    def record(self, method: str, raw_s: float, actual_s: float) -> None:
        pairs = self._pairs.get(method)
        if pairs is None:
            pairs = self._pairs[method] = deque(maxlen=self._window)
        pairs.append((raw_s, actual_s))
        self._since_fit[method] = self._since_fit.get(method, 0) + 1

    def count(self, method: str) -> int:
        return len(self._pairs.get(method, ()))

    def lines(self, method: str) -> tuple[QuantileLine, QuantileLine]:
        """The (P50, P90) lines of a method: fitted once `min_count` pairs are in,
        refitted every `refit_every` new pairs; the prior before."""
        pairs = self._pairs.get(method, ())
        if len(pairs) < self.min_count:
            return PRIOR_LINES
        found = self._lines.get(method)
        if found is None or self._since_fit.get(method, 0) >= self.refit_every:
            raw = [p[0] for p in pairs]
            actual = [p[1] for p in pairs]
            found = self._lines[method] = (
                fit_quantile_line(raw, actual, 0.5),
                fit_quantile_line(raw, actual, 0.9),
            )
            self._since_fit[method] = 0
        return found

    def quantiles(self, method: str, raw_s: float) -> tuple[float, float]:
        """(P50, P90) driving seconds for a raw model time; P90 is never below P50."""
        p50_line, p90_line = self.lines(method)
        p50 = max(p50_line.at(raw_s), 0.0)
        return p50, max(p90_line.at(raw_s), p50)
