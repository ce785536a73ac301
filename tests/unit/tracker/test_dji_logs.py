"""DJI flight-recorder logs: both layouts, unit conversion, precise errors, the real logs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.drone_energy import run as data
from tracker.dji_logs import DjiLogError, parse_dji_log, read_dji_log

ELAPSED = "Elapsed Time (sec)"
ALTITUDE = "Aircraft Barometric Altitude (ft)"
SPEED = "Aircraft Speed (mph)"
BATTERY = "Aircraft Battery Power (%)"
CURRENT = "Aircraft Battery Current (mA)"
# The columns the parser reads, in the iPad layout's order, between columns it ignores.
_IPAD = (
    "Date/Time (UTC)",
    "Elapsed Time (sec)",
    "Info",
    "Aircraft Battery Power (%)",
    "Aircraft Battery Current (mA)",
    "Aircraft Battery Last Updated (ms)",
    "Aircraft Battery Cell 1 Voltage",
    "Aircraft Battery Cell 4 Voltage",
    "Aircraft Battery Cell Voltage Last Updated (ms)",
    "Aircraft Latitude (Degrees)",
    "Aircraft Longitude (Degrees)",
    "Aircraft Speed (mph)",
    "Aircraft Barometric Altitude (ft)",
    "Aircraft Vel - Z (mph)",
    "Aircraft Flying",
    "Gimbal Pitch (Degrees)",
)
# The iPhone layout of a six-cell battery: two more columns shift everything after them.
_IPHONE = (
    *_IPAD[:8],
    "Aircraft Battery Cell 5 Voltage",
    "Aircraft Battery Cell 6 Voltage",
    *_IPAD[8:],
)
_VALUES = {
    "Date/Time (UTC)": "05/23/2018 20:50:19",
    "Elapsed Time (sec)": "12.5",
    "Info": "",
    "Aircraft Battery Power (%)": "97",
    "Aircraft Battery Current (mA)": "-11762",
    "Aircraft Battery Last Updated (ms)": "323",
    "Aircraft Latitude (Degrees)": "37.7718",
    "Aircraft Longitude (Degrees)": "-122.4074",
    "Aircraft Speed (mph)": "10",
    "Aircraft Barometric Altitude (ft)": "100",
    "Aircraft Vel - Z (mph)": "-5",  # north-east-down: climbing at 5 mph
    "Aircraft Flying": "1",
}
_META = (
    "#DroneDeploy\t2.75.0",
    "#Flight Recorder",
    "Session ID\t12345678",
    "Session Start\t05/23/2018 20:50:18",
    "#Aircraft",
    "Aircraft Model\tPhantom 4 Pro",
    "#Aircraft Battery",
    "Full Charge Volume (mAh)\t5842",
)
_TRAILER = ("#Flight Recorder Session End", "Date/Time (UTC)\t05/23/2018 20:54:12")
HEADER_LINE = len(_META) + 1


def _row(header: Sequence[str], changes: dict[str, str] | None = None) -> str:
    values = {**_VALUES, **(changes or {})}
    return "\t".join(values.get(name, "0") for name in header)


def _log(header: Sequence[str], rows: Sequence[str], trailer: bool = True) -> list[str]:
    return [*_META, "\t".join(header), *rows, *(_TRAILER if trailer else ())]


def _error(lines: list[str]) -> DjiLogError:
    with pytest.raises(DjiLogError) as caught:
        parse_dji_log(lines, source="flight.log")
    return caught.value


def test_units_are_converted_to_si() -> None:
    (sample,) = parse_dji_log(_log(_IPAD, [_row(_IPAD)])).samples
    assert sample.t_s == 12.5
    assert sample.rel_alt_m == pytest.approx(30.48)  # 100 ft
    assert sample.speed_mps == pytest.approx(4.4704)  # 10 mph
    assert sample.climb_mps == pytest.approx(2.2352)  # 5 mph, up-positive
    assert sample.discharge_a == pytest.approx(11.762)  # positive while discharging
    assert sample.battery_pct == 97.0
    assert sample.flying is True
    assert (sample.lat, sample.lon) == (37.7718, -122.4074)


def test_both_layouts_give_the_same_samples() -> None:
    ipad = parse_dji_log(_log(_IPAD, [_row(_IPAD), _row(_IPAD, {ELAPSED: "12.6"})]))
    iphone = parse_dji_log(_log(_IPHONE, [_row(_IPHONE), _row(_IPHONE, {ELAPSED: "12.6"})]))
    assert ipad.samples == iphone.samples
    assert (ipad.columns, iphone.columns) == (len(_IPAD), len(_IPHONE))


def test_metadata() -> None:
    log = parse_dji_log(_log(_IPAD, [_row(_IPAD)]), source="flight.log")
    assert log.source == "flight.log"
    assert log.aircraft == "Phantom 4 Pro"
    assert log.started_at == datetime(2018, 5, 23, 20, 50, 18, tzinfo=UTC)
    assert log.capacity_mah == 5842.0


def test_units_are_read_from_the_header() -> None:
    metric = {ALTITUDE: "Aircraft Barometric Altitude (m)", SPEED: "Aircraft Speed (m/s)"}
    metric[CURRENT] = "Aircraft Battery Current (A)"
    header = [metric.get(name, name) for name in _IPAD]
    row = "\t".join(_VALUES.get(name, "0") for name in _IPAD)  # the same numbers
    (sample,) = parse_dji_log(_log(header, [row])).samples
    assert (sample.rel_alt_m, sample.speed_mps, sample.discharge_a) == (100.0, 10.0, 11762.0)
    assert sample.climb_mps == pytest.approx(2.2352)  # still in mph: its header says so


def test_optional_columns_may_be_absent() -> None:
    optional = ("Aircraft Vel - Z (mph)", "Aircraft Flying", CURRENT)
    header = [n for n in _IPAD if n not in optional]
    (sample,) = parse_dji_log(_log(header, [_row(header)])).samples
    assert (sample.climb_mps, sample.flying, sample.discharge_a) == (None, None, None)


def test_battery_before_its_first_report_is_missing_not_empty() -> None:
    row = _row(_IPAD, {BATTERY: "0", CURRENT: "0", "Aircraft Battery Last Updated (ms)": "No Data"})
    (sample,) = parse_dji_log(_log(_IPAD, [row])).samples
    assert (sample.battery_pct, sample.discharge_a) == (None, None)


def test_the_trailer_ends_the_samples_and_a_missing_one_is_fine() -> None:
    rows = [_row(_IPAD), "", _row(_IPAD, {ELAPSED: "13"})]
    assert len(parse_dji_log(_log(_IPAD, rows)).samples) == 2
    assert len(parse_dji_log(_log(_IPAD, rows, trailer=False)).samples) == 2


def test_crlf_line_endings() -> None:
    lines = [line + "\r\n" for line in _log(_IPAD, [_row(_IPAD)])]
    (sample,) = parse_dji_log(lines).samples
    assert sample.battery_pct == 97.0


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (ALTITUDE, "12,5", "not a number"),
        (SPEED, "nan", "not a finite number"),
        (SPEED, "-1", "outside"),
        (BATTERY, "101", "outside"),
        ("Aircraft Latitude (Degrees)", "91", "outside"),
        ("Aircraft Latitude (Degrees)", "", "not a number"),
        ("Aircraft Flying", "yes", "expected 0 or 1"),
        (ELAPSED, "12.4", "time goes backwards"),
    ],
)
def test_a_bad_value_names_file_line_and_column(column: str, value: str, message: str) -> None:
    lines = _log(_IPHONE, [_row(_IPHONE), _row(_IPHONE, {column: value})])
    error = _error(lines)
    assert (error.source, error.line, error.column) == ("flight.log", HEADER_LINE + 2, column)
    assert message in str(error)
    assert str(error).startswith(f"flight.log:{HEADER_LINE + 2}: column {column!r}")


def test_a_truncated_row_names_its_line() -> None:
    short = "\t".join(_row(_IPAD).split("\t")[:5])
    error = _error(_log(_IPAD, [_row(_IPAD), short]))
    assert error.line == HEADER_LINE + 2
    assert f"5 fields where the header has {len(_IPAD)}" in str(error)


def test_a_header_without_a_required_column() -> None:
    header = [n for n in _IPAD if n != SPEED]
    error = _error(_log(header, [_row(header)]))
    assert error.line == HEADER_LINE
    assert "'Aircraft Speed'" in str(error)


def test_an_unknown_unit() -> None:
    header = [n.replace("(ft)", "(furlong)") for n in _IPAD]
    error = _error(_log(header, [_row(header)]))
    assert (error.line, error.column) == (HEADER_LINE, "Aircraft Barometric Altitude (furlong)")


def test_no_header_row() -> None:
    error = _error(list(_META))
    assert error.line is None
    assert "no header row" in str(error)


def test_bad_metadata_names_its_line() -> None:
    lines = _log(_IPAD, [_row(_IPAD)])
    lines[3] = "Session Start\t2018-05-23T20:50:18"
    assert _error(lines).line == 4
    lines = _log(_IPAD, [_row(_IPAD)])
    lines[7] = "Full Charge Volume (mAh)\t-5"
    assert _error(lines).line == 8


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.log"
    lines = _log(_IPAD, [_row(_IPAD), _row(_IPAD, {ELAPSED: "13"})])
    path.write_bytes("\n".join(lines).encode().replace(b"\t13\t", b"\t\xff13\t"))
    with pytest.raises(DjiLogError) as caught:
        read_dji_log(path)
    assert (caught.value.source, caught.value.line) == (str(path), HEADER_LINE + 2)


@pytest.mark.skipif(data.missing() is not None, reason=str(data.missing()))
def test_the_shipped_logs() -> None:
    phantom, matrice = data.load_logs()
    assert (phantom.aircraft, phantom.columns, len(phantom.samples)) == ("Phantom 4 Pro", 128, 2323)
    assert (matrice.aircraft, matrice.columns, len(matrice.samples)) == ("Matrice 200", 130, 1591)
    assert (phantom.capacity_mah, matrice.capacity_mah) == (5842.0, 4153.0)
    # Line 29 of the iPad log, the first sample: on the ground, battery not reported yet.
    first = phantom.samples[0]
    assert (first.t_s, first.flying, first.battery_pct, first.rel_alt_m) == (0.126, False, None, 0)
    # SOURCE.txt: 233 s and 159 s; the Phantom's highest point is 183.0709 ft.
    assert phantom.samples[-1].t_s == pytest.approx(233, abs=1)
    assert matrice.samples[-1].t_s == pytest.approx(159, abs=1)
    assert max(s.rel_alt_m for s in phantom.samples) == pytest.approx(183.0709 * 0.3048)
    batteries = [s.battery_pct for s in phantom.samples if s.battery_pct is not None]
    assert (batteries[0], batteries[-1]) == (97.0, 84.0)
    # The fastest legs, at about 18 mph.
    assert max(s.speed_mps for s in matrice.samples) == pytest.approx(8.0, abs=0.5)
