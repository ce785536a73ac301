"""mqtt.codec: every message becomes fixes, status reports, ignorables or precise rejects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingest.validation import FixRules
from mqtt.codec import MAX_PAYLOAD_BYTES, Codec, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from mqtt.topics import TopicScheme
from tracker.handoff import DeliveryReport
from tracker.positions import DeviceKind, Fix

RECEIVED_AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RECEIVED_MS = 1_795_770_000_000  # RECEIVED_AT in epoch milliseconds
RECEIVED_S = RECEIVED_MS // 1000
TOPIC = "fleet/truck-7/telemetry"
STATUS_TOPIC = "fleet/truck-7/status"
PHONE_TOPIC = "owntracks/Alice/Pixel7"


def body(**fields: object) -> bytes:
    """A telemetry object: a good fix at RECEIVED_AT, with `fields` overriding."""
    value: dict[str, object] = {"ts": RECEIVED_MS, "lat": 52.52, "lon": 13.405}
    value.update(fields)
    return json.dumps({k: v for k, v in value.items() if v is not ...}).encode()


def one(codec: Codec, topic: str, payload: bytes) -> object:
    out = codec.decode(topic, payload, RECEIVED_AT)
    assert len(out) == 1, out
    return out[0]


def rejected(codec: Codec, topic: str, payload: bytes, reason: Reason) -> Rejected:
    item = one(codec, topic, payload)
    assert isinstance(item, Rejected), item
    assert item.reason is reason, (item.reason, item.detail)
    assert item.topic == topic
    assert item.received_at == RECEIVED_AT
    return item


# --- good fixes ---------------------------------------------------------------------------


def test_minimal_fix(codec: Codec) -> None:
    fix = one(codec, TOPIC, body())
    assert fix == Fix(
        device_id="truck-7", ts=RECEIVED_AT, lat=52.52, lon=13.405, received_at=RECEIVED_AT
    )


def test_all_optional_fields(codec: Codec) -> None:
    payload = body(
        alt=120.5, rel_alt=30.0, speed=12.5, heading=270, acc=4.2, battery=87, kind="drone", seq=42
    )
    fix = one(codec, "fleet/drone_1/telemetry", payload)
    assert isinstance(fix, Fix)
    assert (fix.alt, fix.rel_alt, fix.speed, fix.heading, fix.acc, fix.battery) == (
        120.5,
        30.0,
        12.5,
        270.0,
        4.2,
        87.0,
    )
    assert fix.kind is DeviceKind.DRONE
    assert fix.seq == 42
    assert fix.device_id == "drone_1"


@pytest.mark.parametrize("kind", ["vehicle", "drone", "phone"])
def test_every_kind_is_accepted(codec: Codec, kind: str) -> None:
    fix = one(codec, TOPIC, body(kind=kind))
    assert isinstance(fix, Fix)
    assert fix.kind == DeviceKind(kind)


def test_unknown_fields_are_ignored(codec: Codec) -> None:
    payload = body(firmware="1.2.3", extra={"nested": [1, 2, {"x": None}]}, sats=9)
    fix = one(codec, TOPIC, payload)
    assert fix == Fix(
        device_id="truck-7", ts=RECEIVED_AT, lat=52.52, lon=13.405, received_at=RECEIVED_AT
    )


def test_explicit_nulls_for_optional_fields(codec: Codec) -> None:
    fix = one(codec, TOPIC, body(alt=None, speed=None, kind=None, seq=None))
    assert isinstance(fix, Fix)
    assert (fix.alt, fix.speed, fix.kind, fix.seq) == (None, None, None, None)


def test_device_id_of_64_allowed_characters(codec: Codec) -> None:
    device_id = "Ab0_.:-" * 9 + "z"  # 64 characters
    assert len(device_id) == 64
    fix = one(codec, f"fleet/{device_id}/telemetry", body())
    assert isinstance(fix, Fix)
    assert fix.device_id == device_id


# --- timestamps: RFC 3339 and epoch milliseconds -----------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-27T09:00:00Z",
        "2026-11-27T09:00:00+00:00",
        "2026-11-27T11:00:00+02:00",
        "2026-11-27T04:30:00-04:30",
        "2026-11-27T09:00:00.000Z",
    ],
)
def test_rfc3339_is_converted_to_utc(codec: Codec, ts: str) -> None:
    fix = one(codec, TOPIC, body(ts=ts))
    assert isinstance(fix, Fix)
    assert fix.ts == RECEIVED_AT
    assert fix.ts.tzinfo is UTC
    assert fix.ts.hour == 9


def test_rfc3339_fractional_seconds(codec: Codec) -> None:
    fix = one(codec, TOPIC, body(ts="2026-11-27T10:59:59.250+02:00"))
    assert isinstance(fix, Fix)
    assert fix.ts == datetime(2026, 11, 27, 8, 59, 59, 250_000, tzinfo=UTC)
    assert fix.ts.tzinfo is UTC


def test_epoch_milliseconds_int(codec: Codec) -> None:
    fix = one(codec, TOPIC, body(ts=RECEIVED_MS - 1500))
    assert isinstance(fix, Fix)
    assert fix.ts == RECEIVED_AT - timedelta(milliseconds=1500)
    assert fix.ts.tzinfo is UTC


def test_epoch_milliseconds_float(codec: Codec) -> None:
    fix = one(codec, TOPIC, body(ts=RECEIVED_MS - 2000 + 0.5))
    assert isinstance(fix, Fix)
    assert fix.ts == RECEIVED_AT - timedelta(milliseconds=1999, microseconds=500)


def test_epoch_ms_threshold_1e11_is_accepted() -> None:
    # 1e11 ms is March 1973: the smallest number not taken for seconds. No age limit here.
    codec = Codec(TopicScheme(), FixRules(None))
    fix = one(codec, TOPIC, body(ts=100_000_000_000))
    assert isinstance(fix, Fix)
    assert fix.ts == datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)


@pytest.mark.parametrize("ts", [RECEIVED_S, 99_999_999_999, float(RECEIVED_S), 0, -5, 1.5])
def test_ts_unit_for_numbers_below_1e11(codec: Codec, ts: float) -> None:
    item = rejected(codec, TOPIC, body(ts=ts), Reason.TS_UNIT)
    assert item.detail.startswith(f"ts {ts} is too small for epoch milliseconds")


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-27T09:00:00",  # RFC 3339 needs an offset
        "2026-11-27 09:00:00",
        "garbage",
        "",
        str(RECEIVED_MS),  # a number in a string is not accepted as epoch ms
        "2026-13-27T09:00:00Z",
        True,
        None,
        [RECEIVED_MS],
        {"ms": RECEIVED_MS},
    ],
)
def test_ts_invalid(codec: Codec, ts: object) -> None:
    item = rejected(codec, TOPIC, body(ts=ts), Reason.TS_INVALID)
    assert "$.ts" in item.detail


def test_ts_invalid_names_missing_offset(codec: Codec) -> None:
    item = rejected(codec, TOPIC, body(ts="2026-11-27T09:00:00"), Reason.TS_INVALID)
    assert "timezone" in item.detail


@pytest.mark.parametrize("ts", [1e30, 253_402_300_800_000])  # the latter is year 10000
def test_ts_invalid_beyond_year_9999(codec: Codec, ts: float) -> None:
    item = rejected(codec, TOPIC, body(ts=ts), Reason.TS_INVALID)
    assert "beyond the year 9999" in item.detail


def test_ts_invalid_number_out_of_float_range(codec: Codec) -> None:
    payload = b'{"ts": 1e400, "lat": 1, "lon": 2}'
    rejected(codec, TOPIC, payload, Reason.TS_INVALID)


@pytest.mark.parametrize(
    "ts", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"], ids=["after", "before"]
)
def test_rfc3339_whose_utc_time_leaves_the_datetime_range_is_rejected(
    codec: Codec, ts: str
) -> None:
    # Device input must never make decode() raise.
    out = codec.decode(TOPIC, body(ts=ts), RECEIVED_AT)
    assert len(out) == 1
    assert isinstance(out[0], Rejected)
    assert out[0].reason in (Reason.TS_INVALID, Reason.TS_IN_FUTURE, Reason.TS_TOO_OLD)


def test_ts_in_future_more_than_5_minutes(codec: Codec) -> None:
    item = rejected(codec, TOPIC, body(ts=RECEIVED_MS + 5 * 60_000 + 1000), Reason.TS_IN_FUTURE)
    assert item.detail == "ts is 301 s ahead of arrival (limit 300 s)"


def test_ts_exactly_5_minutes_ahead_is_accepted(codec: Codec) -> None:
    fix = one(codec, TOPIC, body(ts="2026-11-27T09:05:00Z"))
    assert isinstance(fix, Fix)
    assert fix.ts == RECEIVED_AT + timedelta(minutes=5)


def test_ts_too_old(codec: Codec) -> None:
    old = RECEIVED_MS - 7 * 86_400_000 - 1000
    item = rejected(codec, TOPIC, body(ts=old), Reason.TS_TOO_OLD)
    assert item.detail == "fix is 604801 s old; the limit is 604800 s"


def test_ts_exactly_max_age_is_accepted(codec: Codec) -> None:
    fix = one(codec, TOPIC, body(ts=RECEIVED_MS - 7 * 86_400_000))
    assert isinstance(fix, Fix)


def test_no_max_age_accepts_old_fixes_for_backfill() -> None:
    codec = Codec(TopicScheme(), FixRules(None))
    fix = one(codec, TOPIC, body(ts="2001-01-01T00:00:00Z"))
    assert isinstance(fix, Fix)
    assert fix.ts == datetime(2001, 1, 1, tzinfo=UTC)


# --- field errors -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ts", "lat", "lon"])
def test_missing_field(codec: Codec, field: str) -> None:
    payload = body(**{field: ...})
    item = rejected(codec, TOPIC, payload, Reason.MISSING_FIELD)
    assert item.detail == f"Object missing required field `{field}`"
    assert item.raw == payload
    assert item.size == len(payload)
    assert item.device_id == "truck-7"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"lat": "52.5"}, "$.lat"),
        ({"lat": None}, "$.lat"),
        ({"lon": [13]}, "$.lon"),
        ({"alt": "high"}, "$.alt"),
        ({"rel_alt": True}, "$.rel_alt"),
        ({"speed": {"v": 1}}, "$.speed"),
        ({"heading": "N"}, "$.heading"),
        ({"acc": "4m"}, "$.acc"),
        ({"battery": "full"}, "$.battery"),
        ({"kind": "boat"}, "$.kind"),
        ({"kind": 1}, "$.kind"),
        ({"seq": 1.5}, "$.seq"),
        ({"seq": "7"}, "$.seq"),
    ],
)
def test_invalid_field(codec: Codec, fields: dict[str, object], path: str) -> None:
    item = rejected(codec, TOPIC, body(**fields), Reason.INVALID_FIELD)
    assert item.detail.endswith(f"`{path}`")


@pytest.mark.parametrize("payload", [b"5", b'"online"', b"null", b"true", b"3.5"])
def test_json_that_is_not_an_object_is_invalid_field(codec: Codec, payload: bytes) -> None:
    item = rejected(codec, TOPIC, payload, Reason.INVALID_FIELD)
    assert item.detail.startswith("Expected `object`")


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b'{"ts": ',
        b"{ts: 1}",
        b"[1, 2",
        b'{"lat": 1,}',
        b"\xff\xfe{}",
        b'{"ts": 1795770000000, "lat": 1, "lon": 2} {}',
    ],
)
def test_invalid_json(codec: Codec, payload: bytes) -> None:
    item = rejected(codec, TOPIC, payload, Reason.INVALID_JSON)
    assert item.raw == payload
    assert item.size == len(payload)


@pytest.mark.parametrize("payload", [b"", b" ", b"\n\t \r\n"])
def test_empty_payload(codec: Codec, payload: bytes) -> None:
    item = rejected(codec, TOPIC, payload, Reason.EMPTY_PAYLOAD)
    assert item.detail == "empty payload"


@pytest.mark.parametrize("payload", [b"[]", b"  [ \n ]  "])
def test_empty_array(codec: Codec, payload: bytes) -> None:
    item = rejected(codec, TOPIC, payload, Reason.EMPTY_PAYLOAD)
    assert item.detail == "empty array"
    assert item.raw == payload


@pytest.mark.parametrize("topic", [TOPIC, STATUS_TOPIC, PHONE_TOPIC])
def test_payload_too_large(codec: Codec, topic: str) -> None:
    payload = b" " * (MAX_PAYLOAD_BYTES + 1)
    item = rejected(codec, topic, payload, Reason.PAYLOAD_TOO_LARGE)
    assert item.detail == f"{MAX_PAYLOAD_BYTES + 1} bytes; the limit is 262144"
    assert item.size == MAX_PAYLOAD_BYTES + 1
    assert item.raw == payload


def test_payload_of_exactly_256_kib_is_decoded(codec: Codec) -> None:
    assert MAX_PAYLOAD_BYTES == 256 * 1024
    fix = body()
    payload = fix + b" " * (MAX_PAYLOAD_BYTES - len(fix))
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert isinstance(one(codec, TOPIC, payload), Fix)


def test_an_hour_of_offline_buffer_at_1_hz_fits(codec: Codec) -> None:
    elements = [
        {"ts": RECEIVED_MS - 3_600_000 + i * 1000, "lat": 52.52, "lon": 13.405, "speed": 8.3}
        for i in range(3600)
    ]
    payload = json.dumps(elements, separators=(",", ":")).encode()
    assert len(payload) <= MAX_PAYLOAD_BYTES
    out = codec.decode(TOPIC, payload, RECEIVED_AT)
    assert len(out) == 3600
    assert all(isinstance(item, Fix) for item in out)


# --- validation rules applied by the codec -----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"lat": 90.0001}, Reason.LAT_OUT_OF_RANGE),
        ({"lat": -91}, Reason.LAT_OUT_OF_RANGE),
        ({"lon": 180.5}, Reason.LON_OUT_OF_RANGE),
        ({"lon": -181}, Reason.LON_OUT_OF_RANGE),
        ({"battery": 101}, Reason.VALUE_OUT_OF_RANGE),
        ({"speed": -1}, Reason.VALUE_OUT_OF_RANGE),
        ({"heading": 361}, Reason.VALUE_OUT_OF_RANGE),
        ({"seq": -1}, Reason.VALUE_OUT_OF_RANGE),
        ({"seq": 2**63}, Reason.VALUE_OUT_OF_RANGE),
    ],
)
def test_rules_are_applied(codec: Codec, fields: dict[str, object], reason: Reason) -> None:
    payload = body(**fields)
    item = rejected(codec, TOPIC, payload, reason)
    assert item.raw == payload


def test_lat_lon_at_their_limits_are_accepted(codec: Codec) -> None:
    for lat, lon in [(90, 180), (-90, -180), (0, 0)]:
        assert isinstance(one(codec, TOPIC, body(lat=lat, lon=lon)), Fix)


def test_number_too_large_for_a_float_is_invalid_field(codec: Codec) -> None:
    payload = f'{{"ts": {RECEIVED_MS}, "lat": 1e400, "lon": 2}}'.encode()
    item = rejected(codec, TOPIC, payload, Reason.INVALID_FIELD)
    assert "$.lat" in item.detail


def test_codec_without_rules_does_not_range_check() -> None:
    codec = Codec(TopicScheme())
    fix = one(codec, TOPIC, body(lat=123.0, ts="2040-01-01T00:00:00Z"))
    assert isinstance(fix, Fix)
    assert fix.lat == 123.0


# --- topics and device ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id",
    ["a" * 65, "bad id", "dev$1", "dev+1", "dev#1", "tr\u00fcck", "", "a,b"],
)
def test_bad_device_id(codec: Codec, device_id: str) -> None:
    topic = f"fleet/{device_id}/telemetry"
    item = rejected(codec, topic, body(), Reason.BAD_DEVICE_ID)
    assert repr(device_id) in item.detail
    assert item.device_id == (device_id or None)


def test_bad_device_id_on_status_topic(codec: Codec) -> None:
    rejected(codec, "fleet/bad id/status", b"online", Reason.BAD_DEVICE_ID)


def test_bad_device_id_from_owntracks_topic(codec: Codec) -> None:
    payload = json.dumps({"_type": "location", "lat": 1, "lon": 2, "tst": RECEIVED_S}).encode()
    item = rejected(codec, "owntracks/Alice Smith/Pixel7", payload, Reason.BAD_DEVICE_ID)
    assert item.device_id == "alice smith:pixel7"


@pytest.mark.parametrize(
    "topic",
    [
        "fleet/truck-7/other",
        "fleet/truck-7",
        "fleet/truck-7/telemetry/extra",
        "fleet/a/b/telemetry",
        "fleet",
        "other/truck-7/telemetry",
        "fleetx/truck-7/telemetry",
        "owntracks/alice",
        "owntracks",
        "",
    ],
)
def test_unknown_topic(codec: Codec, topic: str) -> None:
    item = rejected(codec, topic, body(), Reason.UNKNOWN_TOPIC)
    assert item.detail == f"no route for topic {topic!r}"
    assert item.device_id is None


def test_unknown_topic_wins_over_size(codec: Codec) -> None:
    rejected(codec, "x/y", b" " * (MAX_PAYLOAD_BYTES + 1), Reason.UNKNOWN_TOPIC)


def test_multi_level_prefix() -> None:
    codec = Codec(TopicScheme("acme/fleet"), FixRules(None))
    fix = one(codec, "acme/fleet/van-3/telemetry", body())
    assert isinstance(fix, Fix)
    assert fix.device_id == "van-3"
    status = one(codec, "acme/fleet/van-3/status", b"offline")
    assert status == StatusReport("van-3", "offline", RECEIVED_AT)
    for topic in ("fleet/van-3/telemetry", "acme/van-3/telemetry", "acme/fleet/x/van-3/telemetry"):
        item = one(codec, topic, body())
        assert isinstance(item, Rejected)
        assert item.reason is Reason.UNKNOWN_TOPIC


# --- arrays (an offline buffer) -----------------------------------------------------------


def test_array_bad_element_is_rejected_alone(codec: Codec) -> None:
    good0 = f'{{"ts": {RECEIVED_MS - 3000}, "lat": 1.0, "lon": 2.0}}'
    bad1 = f'{{"ts": {RECEIVED_MS - 2000}, "lat": 1.5}}'
    good2 = f'{{"ts": {RECEIVED_MS - 1000}, "lat": 2.0, "lon": 3.0, "seq": 9}}'
    bad3 = f'{{ "ts": {RECEIVED_MS}, "lat": 95.0, "lon": 3.0 }}'
    bad4 = '{"ts": "yesterday", "lat": 0, "lon": 0}'
    payload = f"[{good0},\n  {bad1}, {good2},{bad3} , {bad4}]".encode()

    out = codec.decode(TOPIC, payload, RECEIVED_AT)

    assert len(out) == 5
    f0, r1, f2, r3, r4 = out
    assert isinstance(f0, Fix)
    assert f0.ts == RECEIVED_AT - timedelta(seconds=3)
    assert isinstance(f2, Fix)
    assert (f2.ts, f2.lat, f2.seq) == (RECEIVED_AT - timedelta(seconds=1), 2.0, 9)

    assert isinstance(r1, Rejected)
    assert r1.reason is Reason.MISSING_FIELD
    assert r1.detail == "element 1: Object missing required field `lon`"
    assert r1.raw == bad1.encode()
    assert r1.size == len(bad1.encode())
    assert r1.topic == TOPIC
    assert r1.device_id == "truck-7"

    assert isinstance(r3, Rejected)
    assert r3.reason is Reason.LAT_OUT_OF_RANGE
    assert r3.detail == "element 3: lat 95.0 is outside [-90, 90]"
    assert r3.raw == bad3.encode()

    assert isinstance(r4, Rejected)
    assert r4.reason is Reason.TS_INVALID
    assert r4.detail.startswith("element 4: ")
    assert r4.raw == bad4.encode()


def test_array_element_that_is_not_an_object(codec: Codec) -> None:
    payload = f'[5, {{"ts": {RECEIVED_MS}, "lat": 1, "lon": 2}}, "x"]'.encode()
    out = codec.decode(TOPIC, payload, RECEIVED_AT)
    assert [type(item) for item in out] == [Rejected, Fix, Rejected]
    assert isinstance(out[0], Rejected)
    assert isinstance(out[2], Rejected)
    assert out[0].reason is Reason.INVALID_FIELD
    assert out[0].detail.startswith("element 0: Expected `object`")
    assert out[0].raw == b"5"
    assert out[2].detail.startswith("element 2: ")
    assert out[2].raw == b'"x"'


def test_array_element_ts_unit(codec: Codec) -> None:
    payload = f'[{{"ts": {RECEIVED_S}, "lat": 1, "lon": 2}}]'.encode()
    item = rejected(codec, TOPIC, payload, Reason.TS_UNIT)
    assert item.detail.startswith("element 0: ts 1795770000 is too small")


def test_array_keeps_repeated_fixes_for_the_batch_to_settle(codec: Codec) -> None:
    element = f'{{"ts": {RECEIVED_MS}, "lat": 1, "lon": 2}}'
    out = codec.decode(TOPIC, f"[{element},{element}]".encode(), RECEIVED_AT)
    assert len(out) == 2
    assert out[0] == out[1]


def test_truncated_array_is_one_invalid_json(codec: Codec) -> None:
    payload = f'[{{"ts": {RECEIVED_MS}, "lat": 1, "lon": 2}}, {{"ts": '.encode()
    item = rejected(codec, TOPIC, payload, Reason.INVALID_JSON)
    assert item.raw == payload


def test_array_with_leading_whitespace(codec: Codec) -> None:
    payload = f' \n[{{"ts": {RECEIVED_MS}, "lat": 1, "lon": 2}}]'.encode()
    fix = one(codec, TOPIC, payload)
    assert isinstance(fix, Fix)


# --- status topic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"online", "online"),
        (b"offline", "offline"),
        (b'"online"', "online"),
        (b'"offline"', "offline"),
        (b" online\n", "online"),
        (b"OFFLINE", "offline"),
    ],
)
def test_status(codec: Codec, payload: bytes, status: str) -> None:
    item = one(codec, STATUS_TOPIC, payload)
    assert item == StatusReport("truck-7", status, RECEIVED_AT)


@pytest.mark.parametrize("payload", [b"", b"  \n"])
def test_empty_retained_status_is_ignored(codec: Codec, payload: bytes) -> None:
    assert one(codec, STATUS_TOPIC, payload) == Ignored("status_cleared")


@pytest.mark.parametrize(
    "payload", [b"maybe", b'{"status": "online"}', b"1", b"on line", b"\xff\xfe", b'""']
)
def test_invalid_status(codec: Codec, payload: bytes) -> None:
    item = rejected(codec, STATUS_TOPIC, payload, Reason.INVALID_STATUS)
    assert item.detail.startswith("status must be online or offline, not ")
    assert item.raw == payload
    assert item.device_id == "truck-7"


def test_invalid_status_detail_is_bounded(codec: Codec) -> None:
    item = rejected(codec, STATUS_TOPIC, b"x" * 10_000, Reason.INVALID_STATUS)
    assert len(item.detail) <= 200
    assert item.size == 10_000


# --- OwnTracks ----------------------------------------------------------------------------


def owntracks(**fields: object) -> bytes:
    value: dict[str, object] = {
        "_type": "location",
        "lat": 52.52,
        "lon": 13.405,
        "tst": RECEIVED_S,
        "vel": 36,
        "cog": 270,
        "alt": 35,
        "acc": 12,
        "batt": 87,
        "tid": "AP",
        "conn": "w",
        "t": "u",
        "BSSID": "aa:bb",
    }
    value.update(fields)
    return json.dumps({k: v for k, v in value.items() if v is not ...}).encode()


def test_owntracks_location(codec: Codec) -> None:
    fix = one(codec, PHONE_TOPIC, owntracks())
    assert isinstance(fix, Fix)
    assert fix.device_id == "alice:pixel7"
    assert fix.ts == RECEIVED_AT
    assert fix.ts.tzinfo is UTC
    assert (fix.lat, fix.lon) == (52.52, 13.405)
    assert fix.speed == pytest.approx(10.0)  # 36 km/h
    assert fix.heading == 270.0
    assert fix.alt == 35.0
    assert fix.acc == 12.0
    assert fix.battery == 87.0
    assert fix.kind is DeviceKind.PHONE
    assert (fix.rel_alt, fix.seq) == (None, None)
    assert fix.received_at == RECEIVED_AT


def test_owntracks_minimal_location(codec: Codec) -> None:
    payload = json.dumps({"_type": "location", "lat": 1, "lon": 2, "tst": RECEIVED_S}).encode()
    fix = one(codec, "owntracks/bob/phone", payload)
    assert fix == Fix(
        device_id="bob:phone",
        ts=RECEIVED_AT,
        lat=1.0,
        lon=2.0,
        received_at=RECEIVED_AT,
        kind=DeviceKind.PHONE,
    )


def test_owntracks_vel_is_converted_from_kmh(codec: Codec) -> None:
    fix = one(codec, PHONE_TOPIC, owntracks(vel=90))
    assert isinstance(fix, Fix)
    assert fix.speed == pytest.approx(25.0)


def test_owntracks_lwt_marks_offline(codec: Codec) -> None:
    payload = json.dumps({"_type": "lwt", "tst": RECEIVED_S}).encode()
    assert one(codec, PHONE_TOPIC, payload) == StatusReport("alice:pixel7", "offline", RECEIVED_AT)


@pytest.mark.parametrize("message_type", ["transition", "waypoint", "card", "status", "cmd"])
def test_owntracks_other_types_are_ignored(codec: Codec, message_type: str) -> None:
    payload = json.dumps({"_type": message_type, "whatever": [1, 2]}).encode()
    assert one(codec, PHONE_TOPIC, payload) == Ignored(f"owntracks_{message_type}")


@pytest.mark.parametrize(
    "topic",
    [
        "owntracks/alice/pixel7/event",
        "owntracks/alice/pixel7/cmd",
        "owntracks/alice/pixel7/info",
        "owntracks/alice/pixel7/waypoints",
    ],
)
def test_owntracks_subtopics_are_ignored(codec: Codec, topic: str) -> None:
    assert one(codec, topic, owntracks()) == Ignored("owntracks_subtopic")
    # Whatever they carry.
    assert one(codec, topic, b"not json") == Ignored("owntracks_subtopic")


def test_owntracks_location_rules_apply(codec: Codec) -> None:
    item = rejected(codec, PHONE_TOPIC, owntracks(lat=95), Reason.LAT_OUT_OF_RANGE)
    assert item.device_id == "alice:pixel7"
    old = rejected(codec, PHONE_TOPIC, owntracks(tst=RECEIVED_S - 8 * 86400), Reason.TS_TOO_OLD)
    assert old.raw == owntracks(tst=RECEIVED_S - 8 * 86400)
    rejected(codec, PHONE_TOPIC, owntracks(tst=RECEIVED_S + 600), Reason.TS_IN_FUTURE)


def test_owntracks_errors(codec: Codec) -> None:
    missing = rejected(codec, PHONE_TOPIC, owntracks(tst=...), Reason.MISSING_FIELD)
    assert missing.detail == "Object missing required field `tst`"
    no_type = rejected(codec, PHONE_TOPIC, b'{"lat": 1, "lon": 2}', Reason.MISSING_FIELD)
    assert "`_type`" in no_type.detail
    bad_tst = rejected(codec, PHONE_TOPIC, owntracks(tst="now"), Reason.TS_INVALID)
    assert "$.tst" in bad_tst.detail
    negative = rejected(codec, PHONE_TOPIC, owntracks(tst=-1), Reason.TS_INVALID)
    assert negative.detail == "tst -1 is negative"
    rejected(codec, PHONE_TOPIC, owntracks(lat="x"), Reason.INVALID_FIELD)
    rejected(codec, PHONE_TOPIC, b'{"_type": 5}', Reason.INVALID_FIELD)
    rejected(codec, PHONE_TOPIC, b"[1]", Reason.INVALID_FIELD)
    rejected(codec, PHONE_TOPIC, b"{nope", Reason.INVALID_JSON)
    rejected(codec, PHONE_TOPIC, b"", Reason.EMPTY_PAYLOAD)


def test_owntracks_tst_in_milliseconds_is_rejected_not_raised(codec: Codec) -> None:
    # A misconfigured client sending milliseconds: decode() must return a reject, not raise.
    out = codec.decode(PHONE_TOPIC, owntracks(tst=RECEIVED_MS), RECEIVED_AT)
    assert len(out) == 1
    assert isinstance(out[0], Rejected)
    assert out[0].reason in (Reason.TS_INVALID, Reason.TS_UNIT, Reason.TS_IN_FUTURE)


def test_owntracks_empty_topic_level_is_not_a_device(codec: Codec) -> None:
    payload = json.dumps({"_type": "location", "lat": 1, "lon": 2, "tst": RECEIVED_S}).encode()
    for topic in ("owntracks/alice/", "owntracks//pixel7"):
        item = one(codec, topic, payload)
        assert isinstance(item, Rejected), (topic, item)
        assert item.reason in (Reason.BAD_DEVICE_ID, Reason.UNKNOWN_TOPIC)


def test_owntracks_prefix_is_configurable() -> None:
    codec = Codec(TopicScheme(owntracks_prefix="ot/phones"), FixRules(None))
    fix = one(codec, "ot/phones/Carol/iPhone", owntracks())
    assert isinstance(fix, Fix)
    assert fix.device_id == "carol:iphone"
    assert one(codec, "ot/phones/carol/iphone/event", b"{}") == Ignored("owntracks_subtopic")
    item = one(codec, PHONE_TOPIC, owntracks())
    assert isinstance(item, Rejected)
    assert item.reason is Reason.UNKNOWN_TOPIC


# --- every reason the codec can give ------------------------------------------------------

REASON_EXAMPLES: list[tuple[str, bytes, Reason]] = [
    (TOPIC, b" " * (MAX_PAYLOAD_BYTES + 1), Reason.PAYLOAD_TOO_LARGE),
    (TOPIC, b"", Reason.EMPTY_PAYLOAD),
    (TOPIC, b"{", Reason.INVALID_JSON),
    (TOPIC, body(lat=...), Reason.MISSING_FIELD),
    (TOPIC, body(acc="x"), Reason.INVALID_FIELD),
    (TOPIC, body(ts="2026-11-27T09:00:00"), Reason.TS_INVALID),
    (TOPIC, body(ts=RECEIVED_S), Reason.TS_UNIT),
    (TOPIC, body(ts=RECEIVED_MS + 301_000), Reason.TS_IN_FUTURE),
    (TOPIC, body(ts=RECEIVED_MS - 8 * 86_400_000), Reason.TS_TOO_OLD),
    (TOPIC, body(lat=-90.5), Reason.LAT_OUT_OF_RANGE),
    (TOPIC, body(lon=200), Reason.LON_OUT_OF_RANGE),
    (TOPIC, body(acc=2e6), Reason.VALUE_OUT_OF_RANGE),
    ("fleet/no spaces/telemetry", body(), Reason.BAD_DEVICE_ID),
    ("nowhere", body(), Reason.UNKNOWN_TOPIC),
    (STATUS_TOPIC, b"asleep", Reason.INVALID_STATUS),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), REASON_EXAMPLES)
def test_reason_example(codec: Codec, topic: str, payload: bytes, reason: Reason) -> None:
    item = rejected(codec, topic, payload, reason)
    assert item.raw == payload
    assert item.size == len(payload)


def test_every_device_input_reason_has_an_example() -> None:
    # NOT_FINITE cannot travel in JSON (see test_validation); CONFLICT comes from the
    # batch; STORAGE_ERROR and DELIVERY_REFUSED from the writer, which looks at the rows;
    # RATE_LIMITED from the ingester's flood guard (tests/unit/ingest/test_flood.py).
    covered = {reason for _, _, reason in REASON_EXAMPLES}
    from_writer = {Reason.CONFLICT, Reason.STORAGE_ERROR, Reason.DELIVERY_REFUSED}
    expected = set(Reason) - {Reason.NOT_FINITE, Reason.RATE_LIMITED} - from_writer
    assert covered == expected


def test_delivery_reports_decode_with_their_fix_time(codec: Codec) -> None:
    payload = (
        b'{"delivery_id": "p-1", "outcome": "failed", "ts": "2026-11-27T09:00:00+01:00",'
        b' "detail": "nobody home"}'
    )
    [report] = codec.decode("fleet/van-1/delivery", payload, RECEIVED_AT)
    assert isinstance(report, DeliveryReport)
    assert (report.device_id, report.delivery_id, report.outcome, report.detail) == (
        "van-1",
        "p-1",
        "failed",
        "nobody home",
    )
    assert report.ts == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    [bad] = codec.decode("fleet/van-1/delivery", b'{"delivery_id": "p-1"}', RECEIVED_AT)
    assert isinstance(bad, Rejected) and bad.reason is Reason.MISSING_FIELD


def test_received_at_is_carried_not_the_clock(codec: Codec) -> None:
    when = datetime(2026, 11, 27, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    fix = codec.decode(TOPIC, body(), when)[0]
    assert isinstance(fix, Fix)
    assert fix.received_at is when


def test_device_text_cannot_poison_storage(codec: Codec) -> None:
    nul_id = b'{"delivery_id": "d\\u0000", "outcome": "delivered", "ts": 1795770000000}'
    [bad] = codec.decode("fleet/van-1/delivery", nul_id, RECEIVED_AT)
    assert isinstance(bad, Rejected) and bad.reason is Reason.INVALID_FIELD
    nul_note = (
        b'{"delivery_id": "d-1", "outcome": "failed", "ts": 1795770000000,'
        b' "detail": "gate\\u0000 closed"}'
    )
    [report] = codec.decode("fleet/van-1/delivery", nul_note, RECEIVED_AT)
    assert isinstance(report, DeliveryReport) and report.detail == "gate closed"
    [odd] = codec.decode("owntracks/u/d", b'{"_type": "x\\u0000y"}', RECEIVED_AT)
    assert odd == Ignored("owntracks_other")


def test_owntracks_levels_with_a_colon_cannot_pose_as_another_device(codec: Codec) -> None:
    [bad] = codec.decode("owntracks/a/b:c", b'{"_type": "lwt"}', RECEIVED_AT)
    assert isinstance(bad, Rejected) and bad.reason is Reason.UNKNOWN_TOPIC
