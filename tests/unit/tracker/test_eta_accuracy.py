from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tracker.eta_accuracy import Settled, report

T = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)


def settled(p50_error_s: float, p90_after_s: float, hour: int = 8, lat: float = 41.15) -> Settled:
    predicted = T.replace(hour=hour)
    arrived = predicted + timedelta(minutes=20)
    return Settled(
        predicted_at=predicted,
        lat=lat,
        lon=-8.61,
        p50=arrived + timedelta(seconds=p50_error_s),
        p90=arrived + timedelta(seconds=p90_after_s),
        arrived_at=arrived,
        method="grid",
    )


def test_mae_bias_and_coverage_overall_by_hour_and_area() -> None:
    rows = [settled(60, 120), settled(-120, -30), settled(30, 90, hour=9, lat=38.72)]
    result = {a.group: a for a in report(rows, ZoneInfo("Europe/Lisbon"))}
    overall = result["all"]
    assert overall.predictions == 3
    assert overall.mae_s == pytest.approx(70)
    assert overall.bias_s == pytest.approx(-10)
    assert overall.p90_coverage == pytest.approx(2 / 3)
    assert result["hour 08"].predictions == 2
    assert result["hour 09"].mae_s == pytest.approx(30)
    assert sum(a.predictions for g, a in result.items() if g.startswith("area")) == 3


def test_hours_are_in_the_fleet_time_zone() -> None:
    groups = [a.group for a in report([settled(0, 0, hour=8)], ZoneInfo("Asia/Tokyo"))]
    assert "hour 17" in groups


def test_nothing_settled_is_an_empty_report() -> None:
    assert report([], ZoneInfo("UTC")) == []
