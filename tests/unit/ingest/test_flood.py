"""ingest.flood: per-device token buckets, fixes on fix time, the rest on arrival time,
sampled quarantine of what is over the limit, bounded memory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from ingest.flood import BURST_S, SAMPLE_PER_MINUTE, UNADDRESSED, FloodGuard
from mqtt.codec import Decoded, Ignored, StatusReport
from mqtt.rejects import Reason, Rejected
from tracker.positions import Fix

T = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RATE = 10.0
BURST = int(RATE * BURST_S)
TOPIC = "fleet/van-1/telemetry"


def fix(ts: datetime, device: str = "van-1") -> Fix:
    return Fix(device_id=device, ts=ts, lat=41.15, lon=-8.61, received_at=T)


def reject(device: str | None = "van-1", reason: Reason = Reason.INVALID_JSON) -> Rejected:
    return Rejected(
        topic=TOPIC, reason=reason, detail="bad", raw=b"x", size=1, received_at=T, device_id=device
    )


def every(step: timedelta, n: int, start: datetime = T) -> list[Fix]:
    return [fix(start + k * step) for k in range(n)]


def admit_each(
    guard: FloodGuard, items: Sequence[Decoded], arrival: datetime = T
) -> tuple[list[Decoded], Counter[str]]:
    """Each item in a message of its own, all arriving at `arrival`."""
    counts: Counter[str] = Counter()
    out: list[Decoded] = []
    for item in items:
        out.extend(guard.admit(TOPIC, b"payload", [item], arrival, counts))
    return out, counts


def limited(items: list[Decoded]) -> list[Rejected]:
    return [i for i in items if isinstance(i, Rejected) and i.reason is Reason.RATE_LIMITED]


def test_a_device_at_the_rate_passes_however_long_it_reports() -> None:
    guard = FloodGuard(RATE)
    fixes = every(timedelta(milliseconds=100), 10 * BURST)  # 10 Hz for ten minutes
    out, counts = admit_each(guard, fixes, T + timedelta(minutes=10))
    assert out == fixes
    assert not counts


def test_a_backlog_arriving_at_once_passes_because_fix_time_is_what_counts() -> None:
    """An hour of 1 Hz fixes redelivered by the broker after an ingester outage."""
    guard = FloodGuard(RATE)
    backlog = every(timedelta(seconds=1), 3600, start=T - timedelta(hours=1))
    out, counts = admit_each(guard, backlog, T)
    assert out == backlog
    assert not counts


def test_an_offline_buffer_passes_in_any_order() -> None:
    guard = FloodGuard(RATE)
    buffer = every(timedelta(seconds=1), 3600, start=T - timedelta(hours=1))
    counts: Counter[str] = Counter()
    out = guard.admit(TOPIC, b"[...]", list(reversed(buffer)), T, counts)
    assert sorted(out, key=lambda f: f.ts) == buffer  # type: ignore[union-attr]
    assert not counts


def test_a_flood_gets_its_burst_then_is_counted_and_sampled() -> None:
    guard = FloodGuard(RATE)
    # 5,000 distinct fixes a millisecond apart, one message each, all in one second.
    flood = every(timedelta(milliseconds=1), 5000)
    out, counts = admit_each(guard, flood, T)
    admitted = [i for i in out if isinstance(i, Fix)]
    # The burst, plus what the flood's 4.999 s of fix time refill.
    assert len(admitted) == BURST + int(RATE * 4.999)
    over = 5000 - len(admitted)
    assert counts["rate_limited"] == over
    samples = limited(out)
    assert len(samples) == SAMPLE_PER_MINUTE
    assert counts["rate_limited_unquarantined"] == over - SAMPLE_PER_MINUTE
    sample = samples[0]
    assert sample.device_id == "van-1"
    assert sample.raw == b"payload" and sample.size == len(b"payload")
    assert sample.topic == TOPIC and sample.received_at == T
    assert "van-1 is over its limit of 10/s" in sample.detail
    assert "1 fix(es) at" in sample.detail


def test_one_message_over_the_limit_makes_one_sample_naming_its_fixes() -> None:
    guard = FloodGuard(RATE, burst_s=1)  # a burst of 10
    counts: Counter[str] = Counter()
    fixes = every(timedelta(milliseconds=1), 25)
    out = guard.admit(TOPIC, b"[25 fixes]", list(fixes), T, counts)
    assert [i for i in out if isinstance(i, Fix)] == fixes[:10]
    (sample,) = limited(out)
    assert counts["rate_limited"] == 15
    assert "15 fix(es) at" in sample.detail
    assert fixes[10].ts.isoformat() in sample.detail
    assert fixes[-1].ts.isoformat() in sample.detail


def test_sampling_starts_again_each_minute_of_arrival() -> None:
    guard = FloodGuard(RATE, burst_s=1)
    same_time = [fix(T) for _ in range(100)]  # no fix-time progress: no refill
    first, _ = admit_each(guard, same_time, T)
    again, counts = admit_each(guard, same_time, T + timedelta(seconds=61))
    assert len(limited(first)) == SAMPLE_PER_MINUTE
    assert len(limited(again)) == SAMPLE_PER_MINUTE
    assert counts["rate_limited"] == 100
    assert counts["rate_limited_unquarantined"] == 100 - SAMPLE_PER_MINUTE


def test_late_fixes_cost_tokens_without_refilling() -> None:
    """Going back in fix time earns nothing: a flood of ever older fixes stops too."""
    guard = FloodGuard(RATE, burst_s=1)
    older = every(-timedelta(seconds=1), 50)
    out, counts = admit_each(guard, older, T)
    assert [i for i in out if isinstance(i, Fix)] == older[:10]
    assert counts["rate_limited"] == 40


def test_rejects_and_statuses_are_charged_on_arrival_time() -> None:
    guard = FloodGuard(RATE, burst_s=1)
    garbage: list[Decoded] = [reject() for _ in range(30)]
    out, counts = admit_each(guard, garbage, T)
    kept = [i for i in out if isinstance(i, Rejected) and i.reason is Reason.INVALID_JSON]
    assert len(kept) == 10
    assert counts["rate_limited"] == 20
    # Two seconds later, twenty more tokens.
    statuses: list[Decoded] = [StatusReport("van-1", "online", T) for _ in range(30)]
    out, counts = admit_each(guard, statuses, T + timedelta(seconds=2))
    assert sum(isinstance(i, StatusReport) for i in out) == 10  # the burst caps the refill
    assert counts["rate_limited"] == 20


def test_fixes_and_other_messages_have_separate_buckets() -> None:
    guard = FloodGuard(RATE, burst_s=1)
    admit_each(guard, [reject() for _ in range(10)], T)
    out, counts = admit_each(guard, [fix(T)], T)
    assert out == [fix(T)] and not counts


def test_ignored_messages_cost_nothing() -> None:
    guard = FloodGuard(RATE, burst_s=1)
    out, counts = admit_each(guard, [Ignored("owntracks_card")] * 100, T)
    assert len(out) == 100 and not counts
    assert len(guard) == 0


def test_one_device_flooding_leaves_the_others_alone() -> None:
    guard = FloodGuard(RATE, burst_s=1)
    admit_each(guard, [fix(T) for _ in range(100)], T)
    other = fix(T, device="van-2")
    out, counts = admit_each(guard, [other], T)
    assert out == [other] and not counts


def test_ids_that_break_the_rule_share_one_bucket() -> None:
    """A client cycling through invented ids cannot make a bucket per id."""
    guard = FloodGuard(RATE, burst_s=1)
    bad: list[Decoded] = [reject(f"bad id {k}", Reason.BAD_DEVICE_ID) for k in range(20)]
    bad += [reject(None, Reason.UNKNOWN_TOPIC) for _ in range(20)]
    out, counts = admit_each(guard, bad, T)
    assert len(guard) == 1
    assert counts["rate_limited"] == 30
    (sample, *_) = limited(out)
    assert sample.device_id is None
    assert "messages naming no valid device" in sample.detail
    assert UNADDRESSED == ""


def test_memory_is_bounded_and_evictions_are_counted() -> None:
    guard = FloodGuard(RATE, burst_s=1, max_devices=3)
    counts: Counter[str] = Counter()
    for device in ("a", "b", "c", "a", "d", "e"):
        guard.admit(TOPIC, b"x", [fix(T, device)], T, counts)
    assert len(guard) == 3
    assert counts["flood_evictions"] == 2  # b, then c: a was seen again before d came
    # An evicted device starts again with a full burst.
    out, more = admit_each(guard, [fix(T, "b") for _ in range(10)], T)
    assert all(isinstance(i, Fix) for i in out)
    assert more["flood_evictions"] == 1


def test_a_clock_that_steps_back_refills_nothing() -> None:
    guard = FloodGuard(RATE, burst_s=1)
    admit_each(guard, [reject() for _ in range(10)], T)
    _, counts = admit_each(guard, [reject()], T - timedelta(hours=1))
    assert counts["rate_limited"] == 1


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0}, {"rate": -1}, {"rate": 1, "burst_s": 0}, {"rate": 1, "max_devices": 0}]
)
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FloodGuard(**kwargs)  # type: ignore[arg-type]
