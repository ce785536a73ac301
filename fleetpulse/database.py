"""Connections to PostgreSQL, always in UTC so stored and printed times agree."""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from fleetpulse.errors import ServiceUnavailable
from fleetpulse.settings import mask_url

CONNECT_TIMEOUT_S = 10

Conn = psycopg.AsyncConnection[TupleRow]


async def connect(url: str, *, autocommit: bool = True) -> Conn:
    try:
        conn = await psycopg.AsyncConnection.connect(
            url,
            autocommit=autocommit,
            options="-c TimeZone=UTC",
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable(f"PostgreSQL at {mask_url(url)}: {first_line}") from exc
    return conn
