"""The P50/P90 lines fitted to (raw, actual) driving times: quantile regression with a
non-negative intercept, per method, over a window, refitted every few arrivals."""

from __future__ import annotations

import random

import pytest

from tracker.eta_residuals import (
    MAX_SLOPE,
    PRIOR_LINES,
    QuantileLine,
    Residuals,
    fit_quantile_line,
)


def check_loss(raw: list[float], actual: list[float], q: float, line: QuantileLine) -> float:
    total = 0.0
    for x, y in zip(raw, actual, strict=True):
        u = y - line.at(x)
        total += q * u if u >= 0 else (q - 1) * u
    return total


def test_a_line_through_the_points_is_found_exactly() -> None:
    raw = [60.0, 120.0, 300.0, 600.0, 900.0]
    actual = [0.8 * x + 70.0 for x in raw]
    for q in (0.5, 0.9):
        line = fit_quantile_line(raw, actual, q)
        assert line.slope == pytest.approx(0.8, abs=1e-6)
        assert line.intercept == pytest.approx(70.0, abs=1e-3)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fit_is_no_worse_than_any_other_line(seed: int) -> None:
    rng = random.Random(seed)
    raw = [rng.uniform(0, 1_500) for _ in range(200)]
    # Skewed noise, wider for longer drives: what real arrivals look like.
    actual = [0.9 * x + 50 + rng.expovariate(1 / (20 + 0.2 * x)) for x in raw]
    for q in (0.5, 0.9):
        best = fit_quantile_line(raw, actual, q)
        assert best.intercept >= 0
        loss = check_loss(raw, actual, q, best)
        for _ in range(300):
            other = QuantileLine(rng.uniform(0.1, 2.0), rng.uniform(0, 400))
            assert loss <= check_loss(raw, actual, q, other) + 1e-6
        # Nudging the fitted line does not help either (a local check of the optimum).
        for ds, di in ((1e-3, 0), (-1e-3, 0), (0, 0.5), (0, -0.5), (1e-3, -0.5)):
            nudged = QuantileLine(best.slope + ds, max(best.intercept + di, 0.0))
            assert loss <= check_loss(raw, actual, q, nudged) + 1e-6
    # The share of arrivals under each line is about its level.
    p50, p90 = fit_quantile_line(raw, actual, 0.5), fit_quantile_line(raw, actual, 0.9)
    assert sum(y <= p50.at(x) for x, y in zip(raw, actual, strict=True)) / 200 == pytest.approx(
        0.5, abs=0.02
    )
    assert sum(y <= p90.at(x) for x, y in zip(raw, actual, strict=True)) / 200 == pytest.approx(
        0.9, abs=0.02
    )


def test_the_intercept_is_never_negative() -> None:
    # A model that overestimates short drives would want a negative intercept.
    raw = [100.0, 200.0, 400.0, 800.0]
    actual = [x - 50.0 for x in raw]
    line = fit_quantile_line(raw, actual, 0.5)
    assert line.intercept == 0.0
    # Through 0, the least absolute error slope is the raw-weighted median of the ratios
    # (0.5, 0.75, 0.875, 0.9375 weighing 100, 200, 400, 800).
    assert line.slope == pytest.approx(0.9375, abs=1e-6)


def test_the_slope_stays_within_its_bounds() -> None:
    line = fit_quantile_line([10.0, 20.0, 30.0], [100.0, 200.0, 300.0], 0.5)
    assert line.slope == pytest.approx(MAX_SLOPE, abs=1e-6)


def test_mismatched_or_empty_input_is_refused() -> None:
    with pytest.raises(ValueError):
        fit_quantile_line([], [], 0.5)
    with pytest.raises(ValueError):
        fit_quantile_line([1.0], [1.0, 2.0], 0.5)


def test_methods_are_kept_apart_and_p90_is_never_below_p50() -> None:
    residuals = Residuals(min_count=3)
    for raw in (100.0, 200.0, 300.0):
        residuals.record("road", raw, 2 * raw)
    assert residuals.lines("grid") == PRIOR_LINES
    p50, p90 = residuals.quantiles("road", 150.0)
    assert p50 == pytest.approx(300.0, rel=1e-6)
    assert p90 >= p50


def test_refits_every_few_arrivals_over_a_window() -> None:
    residuals = Residuals(window=20, min_count=10, refit_every=5)
    for raw in range(1, 21):
        residuals.record("road", 10.0 * raw, 10.0 * raw)
    assert residuals.quantiles("road", 100.0)[0] == pytest.approx(100.0, rel=1e-6)
    # Four slower arrivals: not yet refitted.
    for raw in range(1, 5):
        residuals.record("road", 10.0 * raw, 30.0 * raw)
    assert residuals.quantiles("road", 100.0)[0] == pytest.approx(100.0, rel=1e-6)
    # The fifth refits on the last 20 pairs (the first four have left the window).
    residuals.record("road", 50.0, 150.0)
    assert residuals.count("road") == 20
    assert residuals.quantiles("road", 100.0)[0] > 100.0
