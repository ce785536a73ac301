"""Each fault knob does what it says, and no knob loses or invents a fix."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest

from fleetpulse.simulation.faults import MALFORMED, MALFORMED_PREFIX, FaultConfig, FaultInjector
from fleetpulse.simulation.geo import haversine_m
from fleetpulse.simulation.messages import Channel, Outgoing
from mqtt.codec import Codec
from mqtt.payloads import FixPayload
from mqtt.rejects import Rejected
from mqtt.topics import TopicScheme
from tests.unit.conftest import RECEIVED_AT, RECEIVED_MS
from tracker.positions import DeviceKind, Fix

T0_MS = RECEIVED_MS - 3_600_000  # an hour before arrival: well within the age limit
DEVICES = ("van-1", "van-2", "drone-1")
SCHEME = TopicScheme()


@dataclass(frozen=True)
class Sent:
    at_s: float
    message: Outgoing


def original(device: str, k: int) -> FixPayload:
    return FixPayload(
        ts=T0_MS + k * 1000,
        lat=41.15 + k * 1e-4,
        lon=-8.61 + DEVICES.index(device) * 1e-3,
        speed=5.0,
        kind=DeviceKind.VEHICLE,
        seq=k,
    )


def run(config: FaultConfig, reports: int = 300, seed: int = 1) -> tuple[list[Sent], FaultInjector]:
    """Every device reports once a second; what the injector sends, and when."""
    injector = FaultInjector(config, random.Random(seed))
    sent: list[Sent] = []
    for k in range(reports):
        t = float(k)
        sent.extend(Sent(t, m) for m in injector.due(t))
        for device in DEVICES:
            sent.extend(Sent(t, m) for m in injector.feed(t, device, original(device, k)))
    sent.extend(Sent(float(reports), m) for m in injector.drain())
    return sent, injector


def decode(codec: Codec, message: Outgoing) -> list[Fix | Rejected]:
    decoded = codec.decode(message.topic(SCHEME), message.payload, RECEIVED_AT)
    assert all(isinstance(d, Fix | Rejected) for d in decoded)
    return decoded  # type: ignore[return-value]


def fixes_of(codec: Codec, sent: list[Sent]) -> list[Fix]:
    out = []
    for s in sent:
        for d in decode(codec, s.message):
            if isinstance(d, Fix):
                out.append(d)
            else:
                assert s.message.fault is not None
                assert s.message.fault.startswith(MALFORMED_PREFIX), d
    return out


def ts_index(fix: Fix) -> int:
    return (fix.ts - RECEIVED_AT) // timedelta(milliseconds=1000) + 3600


def test_without_faults_each_fix_goes_out_once_as_it_is(codec: Codec) -> None:
    sent, injector = run(FaultConfig(), reports=50)
    assert len(sent) == 50 * len(DEVICES)
    assert all(s.message.fault is None and s.message.fixes == 1 for s in sent)
    for fix in fixes_of(codec, sent):
        expected = original(fix.device_id, ts_index(fix))
        assert (fix.lat, fix.lon, fix.seq) == (expected.lat, expected.lon, expected.seq)
    assert not injector.counts


def test_every_fix_comes_out_exactly_once_whatever_the_faults(codec: Codec) -> None:
    config = FaultConfig(
        jitter=0.2, late=0.1, late_s=7, out_of_order=0.1, duplicate=0.1, offline=0.02,
        offline_s=12, malformed=0.1,
    )  # fmt: skip
    sent, injector = run(config)
    fixes = fixes_of(codec, sent)
    keys = Counter(f.key for f in fixes)
    assert len(keys) == 300 * len(DEVICES)  # every fix, none invented
    assert sum(n - 1 for n in keys.values()) == injector.counts["duplicate"]
    assert sum(s.message.fixes for s in sent) == len(fixes)
    for fault in ("jitter", "late", "out_of_order", "duplicate", "offline", "malformed"):
        assert injector.counts[fault] > 0, fault


def test_jitter_displaces_positions_by_about_its_size(codec: Codec) -> None:
    sent, _ = run(FaultConfig(jitter=1.0, jitter_m=10.0))
    offsets = []
    for fix in fixes_of(codec, sent):
        expected = original(fix.device_id, ts_index(fix))
        offsets.append(haversine_m(fix.lat, fix.lon, expected.lat, expected.lon))
    assert all(o > 0 for o in offsets)
    mean = sum(offsets) / len(offsets)
    # The distance of a 2-D Gaussian displacement averages sigma * sqrt(pi / 2) = 12.5 m.
    assert 11.0 < mean < 14.0
    assert max(offsets) < 60.0


def test_jitter_rate_is_the_share_of_fixes_displaced(codec: Codec) -> None:
    sent, injector = run(FaultConfig(jitter=0.25, jitter_m=10.0))
    displaced = 0
    for fix in fixes_of(codec, sent):
        expected = original(fix.device_id, ts_index(fix))
        displaced += (fix.lat, fix.lon) != (expected.lat, expected.lon)
    assert displaced == injector.counts["jitter"]
    assert 0.2 < displaced / (300 * len(DEVICES)) < 0.3


def test_late_fixes_are_sent_late_after_newer_ones(codec: Codec) -> None:
    sent, injector = run(FaultConfig(late=0.1, late_s=7.0))
    late = [s for s in sent if s.message.fault == "late"]
    assert len(late) == injector.counts["late"] > 0
    for s in late:
        [fix] = fixes_of(codec, [s])
        k = ts_index(fix)
        if s.at_s < 300:  # not the final drain
            assert s.at_s == k + 7.0
        newer_before = [
            f
            for t in sent[: sent.index(s)]
            if t.message.device_id == fix.device_id
            for f in fixes_of(codec, [t])
            if f.ts > fix.ts
        ]
        assert newer_before  # it arrives out of order


def test_out_of_order_fixes_follow_the_devices_next_fix(codec: Codec) -> None:
    sent, injector = run(FaultConfig(out_of_order=0.2))
    swapped = [i for i, s in enumerate(sent) if s.message.fault == "out_of_order"]
    assert len(swapped) == injector.counts["out_of_order"] > 0
    for i in swapped:
        [fix] = fixes_of(codec, [sent[i]])
        before = next(
            s for s in reversed(sent[:i]) if s.message.device_id == sent[i].message.device_id
        )
        [newer] = fixes_of(codec, [before])
        if sent[i].at_s < 300:
            assert ts_index(newer) == ts_index(fix) + 1


def test_duplicates_repeat_the_message_byte_for_byte() -> None:
    sent, injector = run(FaultConfig(duplicate=0.1))
    copies = [i for i, s in enumerate(sent) if s.message.fault == "duplicate"]
    assert len(copies) == injector.counts["duplicate"] > 0
    for i in copies:
        assert sent[i].message.payload == sent[i - 1].message.payload
        assert sent[i].message.device_id == sent[i - 1].message.device_id


def test_offline_spells_flush_their_buffer_as_one_array(codec: Codec) -> None:
    sent, injector = run(FaultConfig(offline=0.02, offline_s=12.0))
    flushes = [s for s in sent if s.message.fault == "offline_flush"]
    assert len(flushes) == injector.counts["offline"] > 0
    for flush in flushes:
        body = json.loads(flush.message.payload)
        assert isinstance(body, list) and len(body) == flush.message.fixes >= 1
        assert [e["ts"] for e in body] == sorted(e["ts"] for e in body)
        fixes = fixes_of(codec, [flush])
        first, last = ts_index(fixes[0]), ts_index(fixes[-1])
        if flush.at_s < 300:
            assert flush.at_s == first + 12.0
            assert last - first == 12 - 1  # one report a second while offline
        device = flush.message.device_id
        during = [
            s
            for s in sent
            if s.message.device_id == device and first <= s.at_s <= last and s is not flush
        ]
        assert during == []  # nothing at all while offline


def test_malformed_messages_are_refused_with_their_reason(codec: Codec) -> None:
    sent, injector = run(FaultConfig(malformed=0.3))
    broken = [
        s.message for s in sent if s.message.fault and s.message.fault.startswith("malformed")
    ]
    assert len(broken) == injector.counts["malformed"]
    seen = set()
    for message in broken:
        [rejected] = decode(codec, message)
        assert isinstance(rejected, Rejected)
        assert message.fault == MALFORMED_PREFIX + rejected.reason
        assert message.channel is Channel.TELEMETRY and message.fixes == 0
        seen.add(rejected.reason)
    assert seen == set(MALFORMED)
    assert len(fixes_of(codec, sent)) == 300 * len(DEVICES)  # the fixes themselves go out


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"jitter": 1.5}, "between 0 and 1"),
        ({"malformed": -0.1}, "between 0 and 1"),
        ({"late_s": -1.0}, "0 or more"),
        ({"late": 0.6, "out_of_order": 0.6}, "exceed 1"),
    ],
)
def test_config_refuses_nonsense(values: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        FaultConfig(**values)
