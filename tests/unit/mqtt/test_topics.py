"""mqtt.topics: routing topics to device ids, and the subscriptions an ingester makes."""

from __future__ import annotations

import pytest

from mqtt.topics import Addressed, Route, TopicScheme
from tracker.positions import is_valid_device_id


def test_default_filters() -> None:
    assert TopicScheme().filters() == [
        "fleet/+/telemetry",
        "fleet/+/status",
        "fleet/+/delivery",
        "owntracks/#",
    ]


def test_shared_filters() -> None:
    assert TopicScheme().shared_filters("ingest") == [
        "$share/ingest/fleet/+/telemetry",
        "$share/ingest/fleet/+/status",
        "$share/ingest/fleet/+/delivery",
        "$share/ingest/owntracks/#",
    ]


def test_shared_filters_with_multi_level_prefixes() -> None:
    scheme = TopicScheme("acme/fleet", "acme/owntracks")
    assert scheme.shared_filters("g-2") == [
        "$share/g-2/acme/fleet/+/telemetry",
        "$share/g-2/acme/fleet/+/status",
        "$share/g-2/acme/fleet/+/delivery",
        "$share/g-2/acme/owntracks/#",
    ]


def test_prefix_slashes_are_stripped() -> None:
    scheme = TopicScheme("/acme/fleet/", "/ot/")
    assert scheme.prefix == "acme/fleet"
    assert scheme.filters() == [
        "acme/fleet/+/telemetry",
        "acme/fleet/+/status",
        "acme/fleet/+/delivery",
        "ot/#",
    ]
    assert scheme.parse("acme/fleet/v1/telemetry") == Addressed(Route.TELEMETRY, "v1")


def test_topic_builders() -> None:
    scheme = TopicScheme("acme/fleet")
    assert scheme.telemetry_topic("van-3") == "acme/fleet/van-3/telemetry"
    assert scheme.status_topic("van-3") == "acme/fleet/van-3/status"
    assert scheme.parse(scheme.telemetry_topic("van-3")) == Addressed(Route.TELEMETRY, "van-3")
    assert scheme.parse(scheme.status_topic("van-3")) == Addressed(Route.STATUS, "van-3")


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("fleet/truck-7/telemetry", Addressed(Route.TELEMETRY, "truck-7")),
        ("fleet/truck-7/status", Addressed(Route.STATUS, "truck-7")),
        ("fleet/truck-7/delivery", Addressed(Route.DELIVERY, "truck-7")),
        ("fleet/Truck-7/telemetry", Addressed(Route.TELEMETRY, "Truck-7")),  # case kept
        ("owntracks/Alice/Pixel7", Addressed(Route.OWNTRACKS, "alice:pixel7")),
        ("owntracks/Alice/Pixel7/event", Addressed(Route.OWNTRACKS_SUBTOPIC, "alice:pixel7")),
        ("owntracks/a/b/c/d", Addressed(Route.OWNTRACKS_SUBTOPIC, "a:b")),
        ("owntracks/alice", Addressed(Route.UNKNOWN, "")),
        ("fleet/truck-7", Addressed(Route.UNKNOWN, "")),
        ("fleet/truck-7/gps", Addressed(Route.UNKNOWN, "")),
        ("fleet/a/b/telemetry", Addressed(Route.UNKNOWN, "")),
        ("fleetx/truck-7/telemetry", Addressed(Route.UNKNOWN, "")),
        ("/fleet/truck-7/telemetry", Addressed(Route.UNKNOWN, "")),
        ("$SYS/broker/uptime", Addressed(Route.UNKNOWN, "")),
    ],
)
def test_parse(topic: str, expected: Addressed) -> None:
    assert TopicScheme().parse(topic) == expected


def test_parse_with_multi_level_prefix() -> None:
    scheme = TopicScheme("acme/fleet")
    assert scheme.parse("acme/fleet/v1/telemetry") == Addressed(Route.TELEMETRY, "v1")
    assert scheme.parse("acme/fleet/v1/status") == Addressed(Route.STATUS, "v1")
    assert scheme.parse("fleet/v1/telemetry").route is Route.UNKNOWN
    assert scheme.parse("acme/v1/telemetry").route is Route.UNKNOWN
    assert scheme.parse("acme/fleetx/v1/telemetry").route is Route.UNKNOWN


@pytest.mark.parametrize(
    ("device_id", "valid"),
    [
        ("truck-7", True),
        ("a", True),
        ("A.b_c:d-9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("slash/", False),
        ("plus+", False),
        ("\u00e9", False),
        ("new\nline", False),
        (".", False),
        ("..", False),
        ("...", False),
        ("..x", True),
        ("v1.2", True),
    ],
)
def test_device_id_pattern(device_id: str, valid: bool) -> None:
    assert is_valid_device_id(device_id) is valid
