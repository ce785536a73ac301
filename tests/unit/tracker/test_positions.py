"""tracker.positions.Fix: identity by (device, fix time); content comparison."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from tracker.positions import DeviceKind, Fix

T = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def make(**changes: object) -> Fix:
    fix = Fix(
        device_id="truck-7",
        ts=T,
        lat=52.52,
        lon=13.405,
        received_at=T + timedelta(seconds=1),
        alt=34.0,
        rel_alt=None,
        speed=8.5,
        heading=90.0,
        acc=5.0,
        battery=77.0,
        kind=DeviceKind.VEHICLE,
        seq=3,
    )
    return msgspec.structs.replace(fix, **changes)


def test_key_is_device_and_fix_time() -> None:
    assert make().key == ("truck-7", T)
    assert make(received_at=T + timedelta(hours=1), lat=1.0).key == ("truck-7", T)


def test_same_content_ignores_received_at() -> None:
    a = make()
    b = make(received_at=T + timedelta(minutes=30))
    assert a != b
    assert a.same_content(b)
    assert b.same_content(a)
    # And leaves both as they were.
    assert a.received_at == T + timedelta(seconds=1)
    assert b.received_at == T + timedelta(minutes=30)


@pytest.mark.parametrize(
    "change",
    [
        {"device_id": "truck-8"},
        {"ts": T + timedelta(microseconds=1)},
        {"lat": 52.520001},
        {"lon": 13.4},
        {"alt": None},
        {"rel_alt": 1.0},
        {"speed": 8.6},
        {"heading": 91.0},
        {"acc": None},
        {"battery": 76.0},
        {"kind": DeviceKind.DRONE},
        {"kind": None},
        {"seq": 4},
        {"seq": None},
    ],
)
def test_same_content_sees_every_other_field(change: dict[str, object]) -> None:
    other = make(received_at=T + timedelta(minutes=5), **change)
    assert not make().same_content(other)
    assert not other.same_content(make())


def test_same_instant_in_another_zone_is_the_same_content() -> None:
    from datetime import timezone

    other = make(ts=T.astimezone(timezone(timedelta(hours=2))))
    assert make().same_content(other)
