"""ingest.validation.FixRules: every reason a decoded fix can be refused for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from ingest.validation import FIELD_BOUNDS, FUTURE_TOLERANCE, MAX_SEQ, FixRules
from mqtt.rejects import Reason
from tracker.positions import Fix

RECEIVED_AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RULES = FixRules(timedelta(days=7))
NAN = float("nan")
INF = float("inf")


def fix(**changes: object) -> Fix:
    good = Fix(
        device_id="truck-7",
        ts=RECEIVED_AT - timedelta(seconds=2),
        lat=52.52,
        lon=13.405,
        received_at=RECEIVED_AT,
    )
    return msgspec.structs.replace(good, **changes)


def test_good_fix_passes() -> None:
    assert RULES(fix()) is None
    full = fix(alt=34.0, rel_alt=12.0, speed=8.5, heading=90.0, acc=5.0, battery=77.0, seq=3)
    assert RULES(full) is None


def test_constants() -> None:
    assert timedelta(minutes=5) == FUTURE_TOLERANCE
    assert MAX_SEQ == 2**63 - 1
    assert set(FIELD_BOUNDS) == {"alt", "rel_alt", "speed", "heading", "acc", "battery"}


# --- not finite ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["lat", "lon", "alt", "rel_alt", "speed", "heading", "acc", "battery"]
)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_not_finite(name: str, value: float) -> None:
    assert RULES(fix(**{name: value})) == (Reason.NOT_FINITE, f"{name} is {value}")


def test_not_finite_comes_before_range_checks() -> None:
    assert RULES(fix(lat=NAN, lon=500.0)) == (Reason.NOT_FINITE, "lat is nan")


# --- position -----------------------------------------------------------------------------


@pytest.mark.parametrize("lat", [90.0, -90.0, 0.0, 89.999999])
def test_lat_in_range(lat: float) -> None:
    assert RULES(fix(lat=lat)) is None


@pytest.mark.parametrize("lat", [90.000001, -90.000001, 180.0, -1000.0])
def test_lat_out_of_range(lat: float) -> None:
    assert RULES(fix(lat=lat)) == (
        Reason.LAT_OUT_OF_RANGE,
        f"lat {lat} is outside [-90, 90]",
    )


@pytest.mark.parametrize("lon", [180.0, -180.0, 0.0])
def test_lon_in_range(lon: float) -> None:
    assert RULES(fix(lon=lon)) is None


@pytest.mark.parametrize("lon", [180.000001, -180.000001, 360.0])
def test_lon_out_of_range(lon: float) -> None:
    assert RULES(fix(lon=lon)) == (
        Reason.LON_OUT_OF_RANGE,
        f"lon {lon} is outside [-180, 180]",
    )


# --- time ---------------------------------------------------------------------------------


def test_up_to_5_minutes_ahead_is_accepted() -> None:
    assert RULES(fix(ts=RECEIVED_AT + timedelta(minutes=5))) is None


def test_more_than_5_minutes_ahead_is_refused() -> None:
    assert RULES(fix(ts=RECEIVED_AT + timedelta(minutes=5, microseconds=1)))[0] is (  # type: ignore[index]
        Reason.TS_IN_FUTURE
    )
    assert RULES(fix(ts=RECEIVED_AT + timedelta(minutes=10))) == (
        Reason.TS_IN_FUTURE,
        "ts is 600 s ahead of arrival (limit 300 s)",
    )


def test_future_is_judged_against_arrival_not_the_clock() -> None:
    # Arrived long ago, redelivered now: judged as it was when it first arrived.
    then = datetime(2001, 1, 1, tzinfo=UTC)
    rules = FixRules(timedelta(hours=1))
    assert rules(fix(ts=then + timedelta(minutes=1), received_at=then)) is None
    assert rules(fix(ts=then - timedelta(minutes=30), received_at=then)) is None


def test_max_age_limit() -> None:
    rules = FixRules(timedelta(hours=1))
    assert rules(fix(ts=RECEIVED_AT - timedelta(hours=1))) is None
    assert rules(fix(ts=RECEIVED_AT - timedelta(hours=1, seconds=1))) == (
        Reason.TS_TOO_OLD,
        "fix is 3601 s old; the limit is 3600 s",
    )


def test_no_max_age_accepts_any_age() -> None:
    rules = FixRules(None)
    assert rules.max_age is None
    assert rules(fix(ts=datetime(1980, 1, 1, tzinfo=UTC))) is None
    # The future is still refused.
    assert rules(fix(ts=RECEIVED_AT + timedelta(hours=1)))[0] is Reason.TS_IN_FUTURE  # type: ignore[index]


def test_position_is_checked_before_time() -> None:
    old_and_off_map = fix(lat=91.0, ts=RECEIVED_AT - timedelta(days=30))
    assert RULES(old_and_off_map)[0] is Reason.LAT_OUT_OF_RANGE  # type: ignore[index]


# --- bounded fields -----------------------------------------------------------------------

BOUNDS = [
    ("alt", -20_000.0, 100_000.0),
    ("rel_alt", -20_000.0, 100_000.0),
    ("speed", 0.0, 1_000.0),
    ("heading", 0.0, 360.0),
    ("acc", 0.0, 1_000_000.0),
    ("battery", 0.0, 100.0),
]


@pytest.mark.parametrize(("name", "low", "high"), BOUNDS)
def test_bounded_field_limits_are_inclusive(name: str, low: float, high: float) -> None:
    assert RULES(fix(**{name: low})) is None
    assert RULES(fix(**{name: high})) is None
    assert RULES(fix(**{name: (low + high) / 2})) is None


@pytest.mark.parametrize(("name", "low", "high"), BOUNDS)
def test_value_out_of_range(name: str, low: float, high: float) -> None:
    for value in (low - 0.5, high + 0.5):
        reason, detail = RULES(fix(**{name: value}))  # type: ignore[misc]
        assert reason is Reason.VALUE_OUT_OF_RANGE
        assert detail == f"{name} {value} is outside [{low:g}, {high:g}]"


def test_value_out_of_range_details() -> None:
    assert RULES(fix(battery=101.0)) == (
        Reason.VALUE_OUT_OF_RANGE,
        "battery 101.0 is outside [0, 100]",
    )
    assert RULES(fix(speed=-0.1)) == (Reason.VALUE_OUT_OF_RANGE, "speed -0.1 is outside [0, 1000]")


@pytest.mark.parametrize("seq", [0, 1, MAX_SEQ])
def test_seq_in_range(seq: int) -> None:
    assert RULES(fix(seq=seq)) is None


@pytest.mark.parametrize("seq", [-1, MAX_SEQ + 1, 10**30])
def test_seq_out_of_range(seq: int) -> None:
    assert RULES(fix(seq=seq)) == (
        Reason.VALUE_OUT_OF_RANGE,
        f"seq {seq} is outside [0, 2^63-1]",
    )


def test_none_optional_fields_are_not_checked() -> None:
    assert RULES(fix(alt=None, speed=None, battery=None, seq=None)) is None
