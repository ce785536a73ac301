"""Writes a batch in one transaction: fixes exactly once, rejects kept, devices registered.

Fixes go by binary COPY into a per-connection staging table, then one INSERT ... ON
CONFLICT DO NOTHING moves them into telemetry: a redelivered fix makes no second row.
When fewer rows were inserted than staged, the rest are compared with the stored rows:
the same content is a duplicate (counted), different content a conflict (quarantined).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

import psycopg

from fleetpulse.database import Conn, connect
from ingest.batch import Batch, Received, conflict
from ingest.partitions import Partitions
from ingest.schema import CONTENT_COLUMNS, TELEMETRY_COLUMNS, TELEMETRY_TYPES
from mqtt.codec import StatusReport
from mqtt.rejects import Reason, Rejected
from tracker.events import Event, EventKind
from tracker.handoff import DeliveryReport
from tracker.positions import Fix
from tracker.store import save_events

log = logging.getLogger(__name__)

QUARANTINE_PAYLOAD_BYTES = 64 * 1024
# A known device's registry row is refreshed at most this often; "last seen" is that coarse.
DEVICE_TOUCH_INTERVAL_S = 30.0

_COLUMNS = ", ".join(TELEMETRY_COLUMNS)
_CONTENT = ", ".join(CONTENT_COLUMNS)
_INSERT = (
    f"INSERT INTO telemetry ({_COLUMNS}) SELECT {_COLUMNS} FROM fp_staging"
    " ON CONFLICT (device_id, ts) DO NOTHING"
)
# Rows this transaction did not insert are the ones that were there before.
_CLASSIFY = (
    "SELECT s.device_id, s.ts,"
    f" ({', '.join('s.' + c for c in CONTENT_COLUMNS)})"
    f" IS NOT DISTINCT FROM ({', '.join('t.' + c for c in CONTENT_COLUMNS)})"
    " FROM fp_staging s JOIN telemetry t ON t.device_id = s.device_id AND t.ts = s.ts"
    " WHERE t.xmin <> pg_current_xact_id()::xid"
)
_TOUCH_DEVICES = """
INSERT INTO devices (device_id, kind, first_seen, last_seen, last_fix_ts)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                     %s::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET
    kind = coalesce(EXCLUDED.kind, devices.kind),
    last_seen = greatest(devices.last_seen, EXCLUDED.last_seen),
    last_fix_ts = greatest(devices.last_fix_ts, EXCLUDED.last_fix_ts)
"""
_STATUS = """
WITH changed AS (
    INSERT INTO devices (device_id, first_seen, last_seen, status, status_changed_at)
    VALUES (%(device)s, %(at)s, %(at)s, %(status)s, %(at)s)
    ON CONFLICT (device_id) DO UPDATE SET
        status = EXCLUDED.status,
        status_changed_at = EXCLUDED.status_changed_at,
        last_seen = greatest(devices.last_seen, EXCLUDED.last_seen)
    WHERE devices.status IS DISTINCT FROM EXCLUDED.status
    RETURNING 1
)
INSERT INTO device_status_changes (device_id, status, changed_at)
SELECT %(device)s, %(status)s, %(at)s FROM changed
"""
_COUNT = """
INSERT INTO ingest_counters (name, value)
SELECT * FROM unnest(%s::text[], %s::int8[])
ON CONFLICT (name) DO UPDATE SET value = ingest_counters.value + EXCLUDED.value
"""
_QUARANTINE_COPY = (
    "COPY quarantine (received_at, topic, device_id, reason, detail, payload, payload_size)"
    " FROM STDIN (FORMAT BINARY)"
)
_QUARANTINE_TYPES = ("timestamptz", "text", "text", "text", "text", "bytea", "int4")


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    status_changes: int = 0
    # Fixes of the batch that were refused (conflicts, storage errors): not handed on.
    refused: set[tuple[str, datetime]] = field(default_factory=set)
    # Delivery outcomes the drivers reported, stored as events, for the trackers to publish.
    events: list[Event] = field(default_factory=list)

    def add(self, other: WriteResult) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.quarantined.update(other.quarantined)
        self.status_changes += other.status_changes
        self.refused |= other.refused
        self.events.extend(other.events)


class TelemetryWriter:
    """Owns one connection. Not safe for concurrent use: one batch at a time.

    `async with TelemetryWriter(url, partitions) as writer: await writer.write(batch)`
    """

    def __init__(self, url: str, partitions: Partitions | None):
        self._url = url
        self._partitions = partitions
        self._conn: Conn | None = None
        self._touched: dict[str, tuple[float, str | None]] = {}

    async def __aenter__(self) -> Self:
        await self.reconnect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._db.close()

    async def reconnect(self) -> None:
        if self._conn is not None:
            await self._db.close()
        self._conn = await connect(self._url)
        await self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS fp_staging (LIKE telemetry) ON COMMIT DELETE ROWS"
        )
        if self._partitions is not None:
            await self._partitions.refresh(self._conn)

    @property
    def _db(self) -> Conn:
        if self._conn is None:
            raise RuntimeError("TelemetryWriter used outside `async with`")
        return self._conn

    async def write(self, batch: Batch) -> WriteResult:
        """Store the batch. Connection trouble raises (the caller retries); anything else
        the database refuses ends up in quarantine, so no message can stop ingest."""
        try:
            return await self._write_batch(batch)
        except psycopg.errors.CheckViolation:
            if self._partitions is None:
                raise
            # A partition dropped by retention since we last looked: look again.
            await self._partitions.refresh(self._db)
            return await self._write_batch(batch)
        except psycopg.OperationalError:
            raise
        except psycopg.DatabaseError as exc:
            log.error("the database refused a batch (%s); quarantining its messages", exc)
            return await self._quarantine_all(batch, exc)

    async def _write_batch(self, batch: Batch) -> WriteResult:
        fixes = list(batch.fixes.values())
        if self._partitions is not None and fixes:
            await self._partitions.ensure(self._db, [f.ts for f in fixes])
        try:
            return await self._write(
                fixes, batch, batch.rejects, batch.statuses, batch.counts, batch.reports
            )
        except psycopg.DataError as exc:
            log.warning("a batch was refused (%s); writing its fixes one by one", exc)
            return await self._write_isolating(fixes, batch)

    async def _quarantine_all(self, batch: Batch, exc: psycopg.DatabaseError) -> WriteResult:
        detail = f"the database refused the batch: {exc}".splitlines()[0].replace("\x00", "")
        rejects = [
            Rejected(
                topic=d.topic,
                reason=Reason.STORAGE_ERROR,
                detail=detail[:500],
                raw=d.payload,
                size=len(d.payload),
                received_at=datetime.now(UTC),
            )
            for d in batch.deliveries
        ]
        async with self._db.transaction():
            await self._quarantine(rejects)
        result = WriteResult(refused=set(batch.fixes))
        result.quarantined.update(r.reason.value for r in rejects)
        return result

    async def _write_isolating(self, fixes: list[Fix], batch: Batch) -> WriteResult:
        total = WriteResult()
        refused: list[Rejected] = []
        for fix in fixes:
            try:
                total.add(await self._write([fix], batch, (), (), Counter()))
            except psycopg.DataError as exc:
                refused.append(_storage_error(fix, batch.sources[fix.key], exc))
                total.refused.add(fix.key)
        rejects = [*batch.rejects, *refused]
        total.add(
            await self._write([], batch, rejects, batch.statuses, batch.counts, batch.reports)
        )
        return total

    async def _write(
        self,
        fixes: list[Fix],
        batch: Batch,
        rejects: Sequence[Rejected],
        statuses: Sequence[StatusReport],
        counts: Counter[str],
        reports: Sequence[tuple[DeliveryReport, Received]] = (),
    ) -> WriteResult:
        result = WriteResult()
        rejects = list(rejects)
        counts = Counter(counts)
        touched: dict[str, tuple[float, str | None]] = {}
        async with self._db.transaction():
            if fixes:
                result.inserted, result.duplicates, conflicts = await self._insert_fixes(fixes)
                rejects.extend(conflict(batch.fixes[k], batch.sources[k]) for k in conflicts)
                result.refused.update(conflicts)
                counts["duplicates"] += result.duplicates
                touched = await self._touch_devices(fixes)
            if reports:
                result.events, refused_reports, repeated = await self._apply_reports(reports)
                rejects.extend(refused_reports)
                counts["delivery_reports_repeated"] += repeated
            if rejects:
                await self._quarantine(rejects)
            for status in statuses:
                result.status_changes += await self._record_status(status)
            counts = +counts
            if counts:
                names = sorted(counts)
                await self._db.execute(_COUNT, (names, [counts[n] for n in names]))
        self._touched.update(touched)
        result.quarantined.update(r.reason.value for r in rejects)
        return result

    async def _insert_fixes(self, fixes: list[Fix]) -> tuple[int, int, list[tuple[str, datetime]]]:
        """(inserted, duplicates, keys of conflicts) for fixes new to this batch."""
        async with self._db.cursor() as cur:
            async with cur.copy(f"COPY fp_staging ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(list(TELEMETRY_TYPES))
                for f in fixes:
                    await copy.write_row(
                        (
                            f.device_id,
                            f.ts,
                            f.lat,
                            f.lon,
                            f.alt,
                            f.rel_alt,
                            f.speed,
                            f.heading,
                            f.acc,
                            f.battery,
                            None if f.kind is None else f.kind.value,
                            f.seq,
                            f.received_at,
                        )
                    )
            await cur.execute(_INSERT)
            inserted = cur.rowcount
            if inserted == len(fixes):
                return inserted, 0, []
            await cur.execute(_CLASSIFY)
            existing = await cur.fetchall()
        conflicts = [(str(device_id), ts) for device_id, ts, same in existing if not same]
        # What was neither inserted nor a conflict repeats a stored fix; that includes rows
        # another ingester committed between our COPY and INSERT.
        return inserted, len(fixes) - inserted - len(conflicts), conflicts

    async def _touch_devices(self, fixes: list[Fix]) -> dict[str, tuple[float, str | None]]:
        now = time.monotonic()
        per_device: dict[str, list[object]] = {}
        for f in fixes:
            kind = None if f.kind is None else f.kind.value
            row = per_device.get(f.device_id)
            if row is None:
                per_device[f.device_id] = [kind, f.received_at, f.received_at, f.ts]
                continue
            if kind is not None:
                row[0] = kind
            row[2] = max(row[2], f.received_at)  # type: ignore[call-overload]
            row[3] = max(row[3], f.ts)  # type: ignore[call-overload]
        due = []
        for device_id in sorted(per_device):
            row = per_device[device_id]
            last = self._touched.get(device_id)
            if (
                last is None
                or now - last[0] >= DEVICE_TOUCH_INTERVAL_S
                or (row[0] is not None and row[0] != last[1])
            ):
                due.append((device_id, *row))
        if due:
            columns = list(zip(*due, strict=True))
            # Binary parameters: text arrays of a thousand elements cost more as text.
            await self._db.execute(_TOUCH_DEVICES, [list(c) for c in columns], binary=True)
        return {d[0]: (now, d[1]) for d in due}  # type: ignore[misc]

    async def _apply_reports(
        self, reports: Sequence[tuple[DeliveryReport, Received]]
    ) -> tuple[list[Event], list[Rejected], int]:
        """Close deliveries as their vehicles' drivers report; a report for a delivery the
        device does not serve is refused. A repeat of an applied report is neither."""
        events: list[Event] = []
        refused: list[Rejected] = []
        repeated = 0
        for report, source in reports:
            cur = await self._db.execute(
                "WITH target AS (SELECT vehicle_id, state FROM deliveries WHERE id = %(id)s),"
                " closed AS (UPDATE deliveries SET state = %(outcome)s,"
                " updated_at = clock_timestamp() WHERE id = %(id)s AND vehicle_id = %(device)s"
                " AND state NOT IN ('delivered', 'failed', 'cancelled') RETURNING 1)"
                " SELECT (SELECT count(*) FROM closed), vehicle_id, state FROM target",
                {"id": report.delivery_id, "outcome": report.outcome, "device": report.device_id},
            )
            row = await cur.fetchone()
            applied = row is not None and bool(row[0])
            problem = "" if applied else _report_problem(report, row)
            if problem:
                refused.append(_refusal(report, source, problem))
                continue
            # Applied now, or a redelivery of one applied before: the same event (same id)
            # is handed on again, so a crash between commit and hand-off loses no event.
            repeated += not applied
            events.append(
                Event(
                    report.device_id,
                    EventKind(report.outcome),
                    report.ts,
                    detail=report.detail,
                    delivery_id=report.delivery_id,
                )
            )
        if events:
            await save_events(self._db, events)
        return events, refused, repeated

    async def _quarantine(self, rejects: Sequence[Rejected]) -> None:
        async with self._db.cursor() as cur, cur.copy(_QUARANTINE_COPY) as copy:
            copy.set_types(list(_QUARANTINE_TYPES))
            for r in rejects:
                await copy.write_row(
                    (
                        r.received_at,
                        r.topic,
                        r.device_id,
                        r.reason.value,
                        r.detail,
                        r.raw[:QUARANTINE_PAYLOAD_BYTES],
                        r.size,
                    )
                )

    async def _record_status(self, status: StatusReport) -> int:
        cur = await self._db.execute(
            _STATUS,
            {"device": status.device_id, "status": status.status, "at": status.received_at},
        )
        return max(cur.rowcount, 0)


def _report_problem(report: DeliveryReport, row: tuple[object, ...] | None) -> str:
    """Why a report was not applied; empty for a repeat of one that was."""
    if row is None:
        return f"no delivery {report.delivery_id!r}"
    _, vehicle, state = row
    if vehicle != report.device_id:
        return f"delivery {report.delivery_id!r} is served by another vehicle"
    if state == report.outcome:
        return ""
    return f"delivery {report.delivery_id!r} is {state} already"


def _refusal(report: DeliveryReport, source: Received, problem: str) -> Rejected:
    return Rejected(
        topic=source.topic,
        reason=Reason.DELIVERY_REFUSED,
        detail=problem,
        raw=source.payload,
        size=len(source.payload),
        received_at=datetime.now(UTC),
        device_id=report.device_id,
    )


def _storage_error(fix: Fix, source: Received, exc: psycopg.DataError) -> Rejected:
    return Rejected(
        topic=source.topic,
        reason=Reason.STORAGE_ERROR,
        detail=f"the database refused the fix at {fix.ts.isoformat()}: {exc}".splitlines()[0],
        raw=source.payload,
        size=len(source.payload),
        received_at=fix.received_at,
        device_id=fix.device_id,
    )
