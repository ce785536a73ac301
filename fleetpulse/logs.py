"""Log output for every FleetPulse process: plain text for people, or one JSON object per
line for log collectors (`FLEETPULSE_LOG_FORMAT=json`). Either way secrets are masked
on the way out, so a token in a URL or a password in a connection string logged by any
library never reaches the log."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)

# Query parameters and key=value pairs whose values are credentials.
_SECRET_PARAMETER = re.compile(r"(?i)\b(\w*(?:token|password|passwd|secret|api_?key)=)[^&\s'\"]+")
# user:password@ in URLs of any scheme.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",]+")
# FleetPulse's API tokens have a recognisable prefix wherever they appear.
_API_TOKEN = re.compile(r"\bfpt_[A-Za-z0-9_-]+")
# A customer's tracking token is a path segment: /track/<token>, /ws/track/<token>.
_TRACKING_PATH = re.compile(r"(/track/)[^/?#\s]+")


def mask_secrets(text: str) -> str:
    """`text` with credentials replaced by ***: token and password query parameters,
    URL passwords, bearer tokens, API tokens and customer tracking tokens in paths."""
    text = _SECRET_PARAMETER.sub(rf"\1{MASK}", text)
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _BEARER.sub(rf"\1{MASK}", text)
    text = _API_TOKEN.sub(f"fpt_{MASK}", text)
    return _TRACKING_PATH.sub(rf"\1{MASK}", text)


def _timestamp(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    )


def _plain(value: Any) -> Any:
    """A JSON-friendly, masked version of an extra field's value."""
    if isinstance(value, str):
        return mask_secrets(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return mask_secrets(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`,
    `msg`, the record's extra fields, and `exc` / `stack` when there is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = _plain(value)
        if record.exc_info:
            entry["exc"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = mask_secrets(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_secrets(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic one-line format, masked like the JSON one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"expected text or json, got {log_format!r}")


def configure(level: str, log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """Route the root logger to `stream` (standard error) in the chosen format, replacing
    handlers configured before; returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
