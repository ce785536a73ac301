"""Fault tests restart their servers, so each gets its own Redis (the session's shared one
must not be restarted under other tests); its own broker and database come from the
suite's fixtures, which are per test already."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleetpulse.local_servers import Redis


@pytest.fixture
def fault_redis() -> Iterator[Redis]:
    with Redis() as server:
        yield server
