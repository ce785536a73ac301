"""Plain-PostgreSQL partitions of the telemetry table: created ahead, created on demand
for late or backfilled fixes, and dropped once wholly past the retention window.

Partitions are aligned to multiples of the chunk interval since the Unix epoch. If the
interval setting changes, a new partition is clipped to the gap between existing ones,
so ranges never overlap.
"""

from __future__ import annotations

import bisect
import logging
import re
from datetime import UTC, datetime, timedelta

from psycopg import sql

from fleetpulse.database import Conn

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PARTITIONS_AHEAD = 3
# Serialises partition DDL between ingesters and the maintenance task.
_PARTITION_LOCK = 7_305_012
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")

Range = tuple[datetime, datetime]


def bucket(ts: datetime, interval: timedelta) -> Range:
    """The aligned [start, end) of the chunk interval that holds `ts`."""
    step = interval // timedelta(microseconds=1)
    offset = (ts - EPOCH) // timedelta(microseconds=1)
    start = EPOCH + timedelta(microseconds=(offset // step) * step)
    return start, start + interval


def covering(ranges: list[Range], ts: datetime) -> Range | None:
    """The range of sorted, non-overlapping `ranges` that holds `ts`, if any."""
    i = bisect.bisect_right(ranges, (ts, datetime.max.replace(tzinfo=UTC))) - 1
    if i >= 0 and ranges[i][0] <= ts < ranges[i][1]:
        return ranges[i]
    return None


def clip(wanted: Range, ranges: list[Range], ts: datetime) -> Range:
    """The part of `wanted` around `ts` that overlaps none of the sorted `ranges`;
    `ts` lies in `wanted` and in none of `ranges`."""
    start, end = wanted
    for low, high in ranges:
        if start < high <= ts:
            start = high
        elif ts < low < end:
            end = low
    return start, end


def partition_name(start: datetime) -> str:
    return "telemetry_p" + start.strftime("%Y%m%d_%H%M%S")


async def _catalog(conn: Conn) -> list[tuple[str, Range]]:
    """(name, [start, end)) of every telemetry partition, read from the catalog."""
    cur = await conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'telemetry'::regclass"
    )
    out = []
    for name, bound in await cur.fetchall():
        match = _BOUND.search(str(bound))
        if match:
            start, end = (datetime.fromisoformat(match.group(k)) for k in (1, 2))
            out.append((str(name), (start, end)))
    return out


class Partitions:
    """Knows the telemetry partitions and makes the missing ones. One per connection user."""

    def __init__(self, interval: timedelta) -> None:
        self.interval = interval
        self._ranges: list[Range] = []

    async def refresh(self, conn: Conn) -> list[Range]:
        self._ranges = sorted(bounds for _, bounds in await _catalog(conn))
        return self._ranges

    def missing(self, times: list[datetime]) -> list[datetime]:
        """Of `times`, one representative per bucket that no known partition covers."""
        seen: set[datetime] = set()
        out = []
        for ts in times:
            if covering(self._ranges, ts) is not None:
                continue
            start = bucket(ts, self.interval)[0]
            if start not in seen:
                seen.add(start)
                out.append(ts)
        return out

    async def ensure(self, conn: Conn, times: list[datetime]) -> int:
        """Create partitions so every one of `times` has one; returns how many were made."""
        if not self.missing(times):
            return 0
        made = 0
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
            await self.refresh(conn)
            # One bucket may need several pieces around partitions of an older interval.
            while pending := self.missing(times):
                ts = pending[0]
                start, end = clip(bucket(ts, self.interval), self._ranges, ts)
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} PARTITION OF telemetry FOR VALUES FROM ({}) TO ({})"
                    ).format(sql.Identifier(partition_name(start)), start, end)
                )
                bisect.insort(self._ranges, (start, end))
                made += 1
                log.info("created telemetry partition %s .. %s", start, end)
        return made

    async def maintain(
        self, conn: Conn, now: datetime, retention: timedelta | None
    ) -> tuple[int, int]:
        """Create the partitions ahead of `now`, drop those past retention: (made, dropped)."""
        ahead = [now + k * self.interval for k in range(-1, PARTITIONS_AHEAD + 1)]
        await self.refresh(conn)
        made = await self.ensure(conn, ahead)
        dropped = 0
        if retention is not None:
            horizon = now - retention
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
                for name, (_, end) in await _catalog(conn):
                    if end <= horizon:
                        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                        dropped += 1
                        log.info("dropped expired telemetry partition %s", name)
            await self.refresh(conn)
        return made, dropped
