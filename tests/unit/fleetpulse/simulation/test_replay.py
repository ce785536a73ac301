"""The replay timeline: when each recorded fix is sent, and the fix time it carries."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest

from fleetpulse.simulation.messages import Channel, epoch_ms
from fleetpulse.simulation.recordings import RecordedFix, RecordedStatus
from fleetpulse.simulation.replay import Timeline, message
from mqtt.payloads import FixPayload

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
NOW_MS = epoch_ms(NOW)
# A recording of an hour, 2013: a fix a minute.
FIRST_MS = 1_372_636_858_000
TIMES = [FIRST_MS + k * 60_000 for k in range(61)]


def sent_at_ms(timeline: Timeline, ts_ms: int) -> float:
    return NOW_MS + timeline.send_after_s(ts_ms) * 1000


@pytest.mark.parametrize("speed", [1.0, 10.0, 3600.0, math.inf])
def test_shifted_fixes_are_never_stamped_after_they_are_sent(speed: float) -> None:
    timeline = Timeline.plan(TIMES[0], TIMES[-1], speed, True, NOW)
    for ts in TIMES:
        assert timeline.fix_time_ms(ts) <= sent_at_ms(timeline, ts) + 1  # ms rounding
    # The recording's end is stamped with the moment it goes out...
    assert timeline.fix_time_ms(TIMES[-1]) == pytest.approx(sent_at_ms(timeline, TIMES[-1]), abs=1)
    # ...and the fixes keep their spacing: speeds and dwell times stay real.
    shifted = [timeline.fix_time_ms(ts) for ts in TIMES]
    assert {b - a for a, b in itertools.pairwise(shifted)} == {60_000}


def test_at_speed_one_every_fix_carries_its_send_moment() -> None:
    timeline = Timeline.plan(TIMES[0], TIMES[-1], 1.0, True, NOW)
    for ts in TIMES:
        assert timeline.fix_time_ms(ts) == pytest.approx(sent_at_ms(timeline, ts), abs=1)


def test_slow_motion_starts_now_and_stays_in_the_past() -> None:
    timeline = Timeline.plan(TIMES[0], TIMES[-1], 0.5, True, NOW)
    assert timeline.fix_time_ms(TIMES[0]) == NOW_MS
    assert all(timeline.fix_time_ms(ts) <= sent_at_ms(timeline, ts) for ts in TIMES)
    assert timeline.duration_s == pytest.approx(7_200.0)


def test_kept_times_are_the_recorded_ones() -> None:
    timeline = Timeline.plan(TIMES[0], TIMES[-1], 60.0, False, NOW)
    assert [timeline.fix_time_ms(ts) for ts in TIMES] == TIMES
    assert [timeline.send_after_s(ts) for ts in TIMES[:3]] == [0.0, 1.0, 2.0]
    assert timeline.duration_s == pytest.approx(60.0)


def test_as_fast_as_possible_sends_everything_at_once() -> None:
    timeline = Timeline.plan(TIMES[0], TIMES[-1], math.inf, False, NOW)
    assert {timeline.send_after_s(ts) for ts in TIMES} == {0.0}


@pytest.mark.parametrize("speed", [0.0, -1.0, math.nan])
def test_speed_must_be_positive(speed: float) -> None:
    with pytest.raises(ValueError, match="speed factor"):
        Timeline.plan(TIMES[0], TIMES[-1], speed, True, NOW)


def test_records_become_device_messages() -> None:
    timeline = Timeline.plan(TIMES[0], TIMES[-1], 1.0, True, NOW)
    fix = RecordedFix("taxi-1", FixPayload(ts=TIMES[0], lat=41.1, lon=-8.6))
    out = message(fix, timeline)
    assert out.channel is Channel.TELEMETRY and out.fixes == 1
    assert (
        out.payload == f'{{"ts":{timeline.fix_time_ms(TIMES[0])},"lat":41.1,"lon":-8.6}}'.encode()
    )
    down = message(RecordedStatus("drone-1", TIMES[5], online=False), timeline)
    assert (down.channel, down.payload, down.retain) == (Channel.STATUS, b"offline", True)
