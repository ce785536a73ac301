"""The audit log, for admins: who changed fences, deliveries and tokens, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from fleetpulse.database import Conn
from web import auth
from web.api import TIME_SCHEMA, Api, Param, json_response, query_int, query_period, query_text
from web.services import services

api = Api()

TAG = "audit"
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
_MAX_ID = 2**63 - 1  # a bigserial


class AuditEntry(msgspec.Struct):
    id: int
    at: datetime
    actor: Annotated[str, msgspec.Meta(description="a token id, or 'cli' for the command line")]
    action: Annotated[str, msgspec.Meta(description="fence.create, delivery.update, ...")]
    target: str
    detail: dict[str, Any]


class AuditPage(msgspec.Struct):
    items: list[AuditEntry]
    next_before: Annotated[
        int | None,
        msgspec.Meta(description="pass as `before` for the next (older) page; null at the end"),
    ]


@api.get(
    "/api/v1/audit",
    summary="The audit log, newest first",
    role=auth.Role.ADMIN,
    tag=TAG,
    params=[
        Param("from", "only entries at or after this time", TIME_SCHEMA),
        Param("to", "only entries before this time", TIME_SCHEMA),
        Param("actor", "only this actor's entries (a token id, or cli)"),
        Param("action", "only this action, e.g. fence.delete"),
        Param("target", "only entries about this fence, delivery or token"),
        Param(
            "before",
            "only entries older than this id: the `next_before` of the previous page",
            {"type": "integer", "minimum": 1},
        ),
        Param(
            "limit",
            f"page size (default {PAGE_SIZE})",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        ),
    ],
    response=AuditPage,
)
async def audit_log(request: web.Request) -> web.Response:
    since, until = query_period(request)
    limit = query_int(request, "limit", PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
    before = query_int(request, "before", 0, minimum=1, maximum=_MAX_ID) or None
    async with services(request).db() as conn:
        entries = await _entries(
            conn,
            since=since,
            until=until,
            actor=query_text(request, "actor"),
            action=query_text(request, "action"),
            target=query_text(request, "target"),
            before=before,
            limit=limit + 1,  # one more says whether there is a next page
        )
    items = entries[:limit]
    return json_response(AuditPage(items, items[-1].id if len(entries) > limit else None))


async def _entries(
    conn: Conn,
    *,
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
    action: str | None,
    target: str | None,
    before: int | None,
    limit: int,
) -> list[AuditEntry]:
    cur = await conn.execute(
        "SELECT id, at, actor, action, target, detail FROM audit_log"
        " WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
        " AND (%(until)s::timestamptz IS NULL OR at < %(until)s)"
        " AND (%(actor)s::text IS NULL OR actor = %(actor)s)"
        " AND (%(action)s::text IS NULL OR action = %(action)s)"
        " AND (%(target)s::text IS NULL OR target = %(target)s)"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {
            "since": since,
            "until": until,
            "actor": actor,
            "action": action,
            "target": target,
            "before": before,
            "limit": limit,
        },
    )
    return [AuditEntry(*row) for row in await cur.fetchall()]
