"""The decoder under hostile input (CI-sized; `python -m bench.fuzz` runs 100k cases).

Property: whatever arrives on whatever topic, decoding never raises, and every item is a
Fix, StatusReport, DeliveryReport or Ignored that is safe to store, or a Rejected with a
Reason. Generation is derandomized so CI sees the same cases every run; the bench run
draws new ones.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import cases
from bench.fuzz.cases import Case, check
from mqtt.codec import Codec, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from tracker.handoff import DeliveryReport
from tracker.positions import Fix, is_valid_device_id

DECODER: Codec = cases.codec()
CI = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@CI
@given(cases.arbitrary_bytes())
def test_arbitrary_bytes_on_any_topic(case: Case) -> None:
    check(DECODER, case)


@CI
@given(cases.arbitrary_json())
def test_arbitrary_json_values_on_any_topic(case: Case) -> None:
    check(DECODER, case)


@settings(CI, max_examples=1200)
@given(cases.near_valid())
def test_near_valid_payloads_of_every_kind(case: Case) -> None:
    check(DECODER, case)


@CI
@given(cases.batches())
def test_offline_buffers_good_bad_and_huge(case: Case) -> None:
    labels = check(DECODER, case)
    assert labels, case


@settings(CI, max_examples=200)
@given(cases.deep())
def test_deeply_nested_payloads(case: Case) -> None:
    check(DECODER, case)


@CI
@given(cases.injected_topic())
def test_a_hostile_device_id_stores_nothing_and_speaks_for_no_one_else(case: Case) -> None:
    """Only an id the rule allows is stored, and only as the id the topic names: a topic
    such as fleet/van-1/../van-2/telemetry cannot make a fix of van-2."""
    check(DECODER, case)
    device = case.topic.split("/")[1]
    named = f"{device}:phone".lower() if case.topic.startswith("owntracks/") else device
    for item in DECODER.decode(case.topic, case.payload, cases.RECEIVED_AT):
        if isinstance(item, Fix | StatusReport | DeliveryReport):
            assert is_valid_device_id(named), (case, item)
            assert item.device_id == named, (case, item)
        else:
            assert isinstance(item, Rejected | Ignored), (case, item)


def test_every_hostile_id_breaks_the_device_id_rule() -> None:
    assert [d for d in cases.HOSTILE_IDS if is_valid_device_id(d)] == []
    for device in cases.HOSTILE_IDS:
        (item,) = DECODER.decode(
            f"fleet/{device}/telemetry", b'{"ts":1795770000000,"lat":1,"lon":2}', cases.RECEIVED_AT
        )
        assert isinstance(item, Rejected), (device, item)
        assert item.reason in (Reason.BAD_DEVICE_ID, Reason.UNKNOWN_TOPIC), (device, item)


# --- the hazards the generators are built around, each once for certain --------------------


def test_nesting_beyond_the_recursion_limit_is_invalid_json() -> None:
    arrays = cases.deep_bytes(b"1", 100_000, as_objects=False)
    (item,) = DECODER.decode("fleet/van-1/telemetry", arrays, cases.RECEIVED_AT)
    assert isinstance(item, Rejected) and item.reason is Reason.INVALID_JSON, item
    # Objects: the decoder skips the unknown field "a", however deep it goes.
    objects = cases.deep_bytes(b"1", 20_000, as_objects=True)
    for topic in ("fleet/van-1/telemetry", "fleet/van-1/delivery", "owntracks/a/b"):
        (item,) = DECODER.decode(topic, objects, cases.RECEIVED_AT)
        assert isinstance(item, Rejected) and item.reason is Reason.INVALID_JSON, item


def test_deep_nesting_inside_a_skipped_field_is_invalid_json() -> None:
    payload = b'{"ts":1795770000000,"lat":1,"lon":2,"junk":' + b"[" * 50_000 + b"]" * 50_000
    (item,) = DECODER.decode("fleet/van-1/telemetry", payload + b"}", cases.RECEIVED_AT)
    assert isinstance(item, Rejected) and item.reason is Reason.INVALID_JSON, item


def test_broken_utf8_inside_a_string_field_is_invalid_json() -> None:
    for topic, payload in (
        ("fleet/van-1/delivery", b'{"delivery_id":"d-1","outcome":"failed","ts":1795770000000,'),
        ("owntracks/a/b", b'{"_type":"location","lat":1,"lon":2,"tst":1795770000,'),
        ("fleet/van-1/telemetry", b'{"ts":1795770000000,"lat":1,"lon":2,'),
    ):
        field = {"fleet/van-1/delivery": b'"detail"', "owntracks/a/b": b'"tid"'}.get(
            topic, b'"kind"'
        )
        for broken in (b"\xff", b"\xed\xa0\x80", b"\xc3"):
            whole = payload + field + b':"' + broken + b'"}'
            (item,) = DECODER.decode(topic, whole, cases.RECEIVED_AT)
            assert isinstance(item, Rejected), (whole, item)
            assert item.reason in (Reason.INVALID_JSON, Reason.INVALID_FIELD), (whole, item)


@settings(CI, max_examples=600)
@given(st.data())
def test_every_valid_payload_is_accepted(data: st.DataObject) -> None:
    """The other side of the contract: what the protocol allows is never refused. The
    near-valid cases start from these, so the properties are checked on both sides."""
    kind = data.draw(st.sampled_from(cases.KINDS))
    device = data.draw(cases.valid_ids)
    payload: object
    if kind == "telemetry":
        payload = data.draw(st.one_of(cases.good_fixes, st.lists(cases.good_fixes, min_size=1)))
        expected: tuple[type, ...] = (Fix,)
    elif kind == "delivery":
        payload, expected = data.draw(cases.good_reports), (DeliveryReport,)
    elif kind == "owntracks":
        payload, expected = data.draw(cases.good_owntracks), (Fix,)
    else:
        payload, expected = data.draw(st.sampled_from(["online", "offline"])), (StatusReport,)
    if kind == "owntracks":
        topic = f"owntracks/{device.replace(':', '_')[:58]}/phone"  # "<user>:phone", 64 at most
    else:
        topic = f"fleet/{device}/{kind}"
    case = Case("valid", topic, cases.encode(payload))
    labels = check(DECODER, case)
    items = DECODER.decode(case.topic, case.payload, cases.RECEIVED_AT)
    assert all(isinstance(i, expected) for i in items), (case, items, labels)


def test_the_near_valid_cases_reach_the_decoders_precise_reasons() -> None:
    labels: set[str] = set()

    @settings(CI, max_examples=300)
    @given(st.one_of(cases.near_valid(), cases.batches()))
    def collect(case: Case) -> None:
        labels.update(check(DECODER, case))

    collect()
    assert "fix" in labels, labels
    assert {"invalid_field", "missing_field", "invalid_json"} <= labels, labels
