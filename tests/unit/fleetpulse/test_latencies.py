"""fleetpulse.latencies: percentiles of one interval's samples, bounded."""

from __future__ import annotations

from fleetpulse.latencies import LatencySamples, percentile


def test_percentile() -> None:
    values = [float(v) for v in range(1, 102)]  # 1 .. 101
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile(values, 1.0) == 101.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_take_gives_the_interval_and_resets() -> None:
    samples = LatencySamples()
    for value in (30.04, 10.0, 20.0):
        samples.record(value)
    assert samples.take() == (20.0, 30.0)
    assert samples.take() == (None, None)


def test_samples_past_the_limit_are_not_kept() -> None:
    samples = LatencySamples(limit=3)
    for value in (1.0, 2.0, 3.0, 1000.0, 1000.0):
        samples.record(value)
    assert samples.take() == (2.0, 3.0)
    samples.record(5.0)
    assert samples.take() == (5.0, 5.0)


def test_percentiles_are_rounded_to_a_tenth() -> None:
    samples = LatencySamples()
    samples.record(12.345)
    assert samples.take() == (12.3, 12.3)
