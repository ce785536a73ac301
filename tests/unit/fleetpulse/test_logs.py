"""Log lines as collectors read them: one JSON object per line, tracebacks included,
credentials never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from fleetpulse import logs


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The root logger writing JSON into a buffer; the previous handlers put back after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("DEBUG", "json", stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_the_standard_fields(output: io.StringIO) -> None:
    log = logging.getLogger("fleetpulse.test")
    log.info("committed %d fixes", 42)
    log.warning("line one\nline two")
    first, second = lines(output)
    assert first["level"] == "INFO"
    assert first["logger"] == "fleetpulse.test"
    assert first["msg"] == "committed 42 fixes"
    assert isinstance(first["ts"], str)
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["msg"] == "line one\nline two"  # escaped: still one line of output


def test_extra_fields_are_kept_as_json_values(output: io.StringIO) -> None:
    logging.getLogger("fleetpulse.web.access").info(
        "GET / 200", extra={"status": 200, "ms": 1.5, "path": "/", "tags": ("a", "b")}
    )
    (entry,) = lines(output)
    assert entry["status"] == 200
    assert entry["ms"] == 1.5
    assert entry["path"] == "/"
    assert entry["tags"] == ["a", "b"]
    assert "args" not in entry and "levelno" not in entry


def test_exceptions_are_included(output: io.StringIO) -> None:
    try:
        raise ValueError("bad fix")
    except ValueError:
        logging.getLogger("fleetpulse.test").exception("batch failed")
    (entry,) = lines(output)
    assert entry["level"] == "ERROR"
    assert entry["msg"] == "batch failed"
    assert isinstance(entry["exc"], str)
    assert "Traceback" in entry["exc"]
    assert "ValueError: bad fix" in entry["exc"]


def test_secrets_are_masked_in_messages_extras_and_tracebacks(output: io.StringIO) -> None:
    log = logging.getLogger("fleetpulse.test")
    log.info("GET /ws/dispatch?access_token=fpt_abc123&since=9 101")
    log.info("connecting to %s", "postgresql://fleet:hunter2@db:5432/fleetpulse")
    log.info("headers", extra={"authorization": "Bearer fpt_zzz", "path": "/ws/track/tok-987"})
    try:
        raise RuntimeError("redis://:s3cret@cache:6379/0 refused")
    except RuntimeError:
        log.exception("lost Redis")
    text = output.getvalue()
    for secret in ("fpt_abc123", "hunter2", "fpt_zzz", "tok-987", "s3cret"):
        assert secret not in text
    first, second, third, fourth = lines(output)
    assert first["msg"] == "GET /ws/dispatch?access_token=***&since=9 101"
    assert second["msg"] == "connecting to postgresql://fleet:***@db:5432/fleetpulse"
    assert third["authorization"] == "Bearer ***"
    assert third["path"] == "/ws/track/***"
    assert "redis://:***@cache:6379/0 refused" in str(fourth["exc"])


def test_text_format_is_masked_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text"))
    record = logging.LogRecord(
        "fleetpulse.test", logging.INFO, __file__, 1, "url %s", ("mqtt://u:pw@h:1883",), None
    )
    handler.emit(record)
    assert stream.getvalue().rstrip().endswith("INFO fleetpulse.test: url mqtt://u:***@h:1883")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("/api/v1/x?token=abc", "/api/v1/x?token=***"),
        ("?tracking_token=abc&a=1", "?tracking_token=***&a=1"),
        ("password=pw other", "password=*** other"),
        ("/api/v1/track/abc/eta", "/api/v1/track/***/eta"),
        ("nothing to hide: /api/v1/devices?kind=van", "nothing to hide: /api/v1/devices?kind=van"),
        ("http://host:8080/path", "http://host:8080/path"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert logs.mask_secrets(text) == masked


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        logs.formatter("xml")
