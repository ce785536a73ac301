"""The publisher's pure parts: the rate limit, device credentials, the progress line."""

from __future__ import annotations

import pytest

from fleetpulse.simulation.messages import Channel, Outgoing
from fleetpulse.simulation.publisher import Credentials, Progress, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_spaces_messages_evenly() -> None:
    clock = Clock()
    limiter = RateLimiter(4.0, clock)
    assert [limiter.reserve() for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    clock.now += 10.0  # idle for a while: no burst is owed afterwards
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.25, 0.5]


def test_no_rate_limit_never_waits() -> None:
    limiter = RateLimiter(None, Clock())
    assert {limiter.reserve() for _ in range(1000)} == {0.0}


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0.0)


def test_each_device_gets_its_own_password() -> None:
    assert Credentials("pw-{device}-x").password("sim-van-001") == "pw-sim-van-001-x"
    assert Credentials("shared").password("sim-van-001") == "shared"
    assert Credentials().password("sim-van-001") is None


def test_progress_counts_and_rate() -> None:
    progress = Progress(devices=3, connected=2)
    progress.start(10.0)
    for _ in range(10):
        progress.sent(Outgoing("d", Channel.TELEMETRY, b"{}", fixes=1))
    progress.sent(Outgoing("d", Channel.TELEMETRY, b"[]", fixes=5, fault="offline_flush"))
    progress.sent(Outgoing("d", Channel.TELEMETRY, b"", fault="malformed:empty_payload"))
    progress.error("d", ConnectionRefusedError("refused"))
    line = progress.line(12.0)
    assert line == (
        "15 fixes sent (8/s) in 12 messages, 1 malformed on purpose, 1 errors,"
        " 2/3 devices connected (last error: d: refused)"
    )
    assert "(0/s)" in progress.line(13.0)  # nothing since the previous line
