"""fleetpulse.cli.parse_time: the --from/--to/--since values of the inspection commands."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from fleetpulse.cli import _parser, parse_time

T = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T09:00:00Z",
        "2026-11-27T09:00:00+00:00",
        "2026-11-27T11:00:00+02:00",
        "2026-11-27T09:00:00",  # no offset means UTC
        "2026-11-27 09:00:00",
        "1795770000000",
    ],
)
def test_parse_time_instant(text: str) -> None:
    value = parse_time(text)
    assert value == T
    assert value.utcoffset() is not None


def test_parse_time_no_offset_is_utc() -> None:
    assert parse_time("2026-11-27T09:00:00").tzinfo is UTC


def test_parse_time_date_only_is_midnight_utc() -> None:
    assert parse_time("2026-11-27") == datetime(2026, 11, 27, tzinfo=UTC)


def test_parse_time_epoch_milliseconds() -> None:
    assert parse_time("0") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("1795770000250") == T + timedelta(milliseconds=250)
    assert parse_time("-1000") == datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_time("1795770000000").tzinfo is UTC


@pytest.mark.parametrize("text", ["yesterday", "", "27/11/2026", "2026-11-27T25:00:00Z", "1.5e12"])
def test_parse_time_garbage(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="RFC 3339"):
        parse_time(text)


@pytest.mark.parametrize("text", ["99999999999999999", "9999999999999999999999"])
def test_parse_time_out_of_range_is_a_usage_error(text: str) -> None:
    # argparse turns ArgumentTypeError/ValueError into a usage message; anything else
    # escapes as a traceback.
    with pytest.raises((argparse.ArgumentTypeError, ValueError)):
        parse_time(text)


@pytest.mark.parametrize("text", ["garbage", "9999999999999999999999"])
def test_history_from_bad_time_exits_with_usage_error(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["history", "truck-7", "--from", text])
    assert exc.value.code == 2
    assert "--from" in capsys.readouterr().err


def test_history_parses_times() -> None:
    args = _parser().parse_args(
        ["history", "truck-7", "--from", "2026-11-27T11:00:00+02:00", "--to", "1795770060000"]
    )
    assert args.start == T
    assert args.end == T + timedelta(minutes=1)
