"""Plain-mode partitions against a real PostgreSQL: made ahead, on demand, dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from fleetpulse.database import Conn, connect
from ingest.partitions import PARTITIONS_AHEAD, Partitions, Range, partition_name

D = datetime(2026, 11, 27, tzinfo=UTC)
DAY = timedelta(days=1)


def at(hours: float) -> datetime:
    return D + timedelta(hours=hours)


@pytest.fixture
async def conn(database_url: str, plain_mode: None) -> AsyncIterator[Conn]:
    connection = await connect(database_url)
    yield connection
    await connection.close()


async def existing(conn: Conn, *ranges: Range) -> None:
    for start, end in ranges:
        await conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF telemetry FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(partition_name(start)), start, end
            )
        )


async def tables(conn: Conn) -> dict[str, Range]:
    ranges = await Partitions(DAY).refresh(conn)
    return {partition_name(start): (start, end) for start, end in ranges}


async def covers(conn: Conn, ts: datetime) -> bool:
    """Whether PostgreSQL would route a row at `ts` to some partition."""
    try:
        await conn.execute(
            "INSERT INTO telemetry (device_id, ts, lat, lon, received_at)"
            " VALUES ('probe', %s, 0, 0, now()) ON CONFLICT DO NOTHING",
            (ts,),
        )
    except psycopg.errors.CheckViolation:  # "no partition of relation found for row"
        return False
    return True


async def test_ensure_creates_one_partition_per_missing_bucket(conn: Conn) -> None:
    await existing(conn, (D, D + DAY))
    parts = Partitions(DAY)
    await parts.refresh(conn)
    assert await parts.ensure(conn, [at(1), at(30), at(40), at(-5)]) == 2
    assert await tables(conn) == {
        "telemetry_p20261126_000000": (D - DAY, D),
        "telemetry_p20261127_000000": (D, D + DAY),
        "telemetry_p20261128_000000": (D + DAY, D + 2 * DAY),
    }
    assert parts.missing([at(1), at(30), at(40), at(-5)]) == []
    assert await parts.ensure(conn, [at(2), at(31)]) == 0


async def test_ensure_clips_to_partitions_of_an_older_interval(conn: Conn) -> None:
    await existing(conn, (at(-6), at(6)))
    parts = Partitions(DAY)
    await parts.refresh(conn)
    assert await parts.ensure(conn, [at(9)]) == 1
    assert (await tables(conn))["telemetry_p20261127_060000"] == (at(6), D + DAY)
    assert await covers(conn, at(9))


async def test_ensure_covers_a_time_after_an_older_partition_inside_the_bucket(
    conn: Conn,
) -> None:
    await existing(conn, (at(6), at(12)))
    parts = Partitions(DAY)
    await parts.refresh(conn)
    await parts.ensure(conn, [at(18), at(2)])
    assert await covers(conn, at(18))
    assert await covers(conn, at(2))
    assert parts.missing([at(18), at(2)]) == []


async def test_a_second_writer_with_a_stale_view_makes_no_overlap(conn: Conn) -> None:
    first, second = Partitions(DAY), Partitions(DAY)
    await first.refresh(conn)
    await second.refresh(conn)
    assert await first.ensure(conn, [at(5)]) == 1
    # `second` has not seen it; under the lock it re-reads the catalog and makes nothing.
    assert await second.ensure(conn, [at(7)]) == 0


async def test_maintain_creates_ahead_and_drops_expired(conn: Conn) -> None:
    now = at(10)
    await existing(conn, *[(D - k * DAY, D - (k - 1) * DAY) for k in range(1, 6)])
    parts = Partitions(DAY)
    made, dropped = await parts.maintain(conn, now, timedelta(days=3))
    assert made == 1 + PARTITIONS_AHEAD
    for k in range(PARTITIONS_AHEAD + 1):
        assert await covers(conn, now + k * DAY)
    # Gone only once wholly older than now - retention (three days ago, 10:00).
    assert dropped == 2
    names = set(await tables(conn))
    assert "telemetry_p20261122_000000" not in names
    assert "telemetry_p20261123_000000" not in names
    assert "telemetry_p20261124_000000" in names


async def test_maintain_without_retention_drops_nothing(conn: Conn) -> None:
    await existing(conn, (D - 400 * DAY, D - 399 * DAY))
    made, dropped = await Partitions(DAY).maintain(conn, at(10), None)
    assert (made, dropped) == (PARTITIONS_AHEAD + 2, 0)
    assert partition_name(D - 400 * DAY) in await tables(conn)
