"""Fixtures shared by the unit tests: a fixed arrival time and a codec with the
production validation rules, so no test depends on the wall clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.validation import FixRules
from mqtt.codec import Codec
from mqtt.topics import TopicScheme

# 2026-11-27T09:00:00Z, and the same instant in epoch milliseconds.
RECEIVED_AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RECEIVED_MS = 1_795_770_000_000
MAX_AGE = timedelta(days=7)


@pytest.fixture
def received_at() -> datetime:
    return RECEIVED_AT


@pytest.fixture
def codec() -> Codec:
    """The default topic scheme with the production rules and a 7-day maximum age."""
    return Codec(TopicScheme(), FixRules(MAX_AGE))
