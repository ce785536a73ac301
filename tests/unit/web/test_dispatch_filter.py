"""The dispatch filter: what passes it, and precise refusals of bad filters."""

from __future__ import annotations

import pytest

from web.dispatch_filter import BBox, DispatchFilter, FilterError, from_message, from_query


def test_no_filter_passes_everything() -> None:
    wanted = from_query(None, None, None)
    assert wanted == DispatchFilter()
    assert wanted.every_position
    assert wanted.position("van-1", 10.0, 20.0)
    assert wanted.event("van-1", "enter")


def test_bbox_limits_positions_only_boundary_inside() -> None:
    wanted = from_query("38.7,-9.2,38.8,-9.1", None, None)
    assert not wanted.every_position
    assert wanted.position("van-1", 38.75, -9.15)
    assert wanted.position("van-1", 38.8, -9.1)  # on the boundary
    assert not wanted.position("van-1", 38.81, -9.15)
    assert wanted.event("van-1", "exit")  # events are not placed by the box


def test_devices_limit_positions_and_events_kinds_limit_events() -> None:
    wanted = from_query(None, "van-1, drone-2", "enter,late_risk")
    assert wanted.position("drone-2", 0, 0)
    assert not wanted.position("van-3", 0, 0)
    assert wanted.event("van-1", "late_risk")
    assert not wanted.event("van-1", "exit")
    assert not wanted.event("van-3", "enter")


def test_a_box_beyond_the_world_is_the_world() -> None:
    wanted = from_message([-100, -250, 100, 250], None, None)
    assert wanted.bbox == BBox(-90, -180, 90, 180)
    assert wanted.position("van-1", 89.9, 179.9)


def test_a_message_filter_uses_arrays_and_null_for_no_limit() -> None:
    wanted = from_message([38.7, -9.2, 38.8, -9.1], None, ["dwell"])
    assert wanted.devices is None
    assert wanted.kinds == frozenset({"dwell"})
    nothing = from_message(None, [], None)
    assert not nothing.position("van-1", 0, 0)  # an empty list matches no device


@pytest.mark.parametrize(
    ("bbox", "devices", "kinds", "message"),
    [
        ("1,2,3", None, None, "4 numbers"),
        ("a,b,c,d", None, None, "south,west,north,east"),
        ("50,0,40,1", None, None, "south must not be north of north"),
        ("0,170,1,-170", None, None, "antimeridian"),
        ("nan,0,1,1", None, None, "finite"),
        (None, "van 1", None, "'van 1' is not a device id"),
        (None, None, "geofence_enter", "unknown event kind 'geofence_enter'"),
    ],
)
def test_bad_filters_are_refused_with_the_field_named(
    bbox: str | None, devices: str | None, kinds: str | None, message: str
) -> None:
    with pytest.raises(FilterError, match=r"^(bbox|devices|kinds):") as caught:
        from_query(bbox, devices, kinds)
    assert message in str(caught.value)
