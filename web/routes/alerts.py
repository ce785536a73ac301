"""Alerts: the recent events nobody has acknowledged, and acknowledging one. The same
acknowledgement is open to dispatch websocket clients (an `ack` message); either way
it is stored once, audited, and announced to every dispatch client of every worker."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from tracker.events import EventKind
from tracker.redis_live import EventMessage
from web import alert_store
from web.api import (
    TIME_SCHEMA,
    Api,
    Param,
    body,
    json_response,
    principal,
    query_choice,
    query_int,
    query_text,
    query_time,
)
from web.auth import Role
from web.dispatch_filter import FilterError, devices
from web.problems import Problem
from web.services import services

api = Api()

MAX_ALERTS = 5_000
_KINDS = [k.value for k in EventKind]


@api.get(
    "/api/v1/alerts",
    summary="Events stored recently that nobody has acknowledged, newest last",
    role=Role.VIEWER,
    tag="alerts",
    params=(
        Param("device", "only alerts of this device"),
        Param("kind", "only alerts of this event kind", {"type": "string", "enum": _KINDS}),
        Param("since", "stored at or after this time (default: 24 hours ago)", TIME_SCHEMA),
        Param(
            "limit",
            f"at most this many, the newest (default {alert_store.SNAPSHOT_ALERTS})",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_ALERTS,
                "default": alert_store.SNAPSHOT_ALERTS,
            },
        ),
    ),
    response=list[EventMessage],
)
async def list_alerts(request: web.Request) -> web.Response:
    device = query_text(request, "device")
    try:
        wanted_devices = devices([device], "query parameter 'device'") if device else None
    except FilterError as exc:
        raise Problem(400, str(exc)) from None
    kind = query_choice(request, "kind", _KINDS)
    since = query_time(request, "since") or datetime.now(UTC) - alert_store.RECENT_ALERTS
    limit = query_int(request, "limit", alert_store.SNAPSHOT_ALERTS, minimum=1, maximum=MAX_ALERTS)
    async with services(request).db() as conn:
        alerts = await alert_store.unacknowledged(
            conn,
            since=since,
            devices=wanted_devices,
            kinds=[kind] if kind else None,
            limit=limit,
        )
    return json_response(alerts)


@api.post(
    "/api/v1/alerts/{event_id}/ack",
    summary="Acknowledge an alert (an event), once; every dispatch client hears of it",
    role=Role.DISPATCHER,
    tag="alerts",
    body=alert_store.AckRequest,
    response=alert_store.Ack,
    status=201,
    errors=(404, 409),
)
async def acknowledge(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    request_body = await body(request, alert_store.AckRequest)
    svc = services(request)
    try:
        async with svc.db() as conn:
            ack = await alert_store.acknowledge(
                conn, event_id, principal(request), request_body.note
            )
    except alert_store.UnknownEvent:
        raise Problem(404, f"no event has the id {event_id!r}") from None
    except alert_store.AlreadyAcknowledged as exc:
        raise Problem(409, str(exc)) from None
    await alert_store.announce(svc.redis, ack)
    return json_response(ack, status=201)
