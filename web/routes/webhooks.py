"""Webhook subscriptions and their deliveries (admin only). A subscription's signing
secret is returned once, by the request that creates it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from tracker.events import EventKind
from web import api as a
from web import webhook_store as store
from web.auth import Role
from web.problems import Problem
from web.services import services

api = a.Api()
TAG = "webhooks"
MAX_PAGE = 1000


class NewWebhook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    kinds: list[EventKind] = []  # empty: every kind
    description: str = ""
    active: bool = True


class WebhookChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str | msgspec.UnsetType = msgspec.UNSET
    kinds: list[EventKind] | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class Webhook(msgspec.Struct, frozen=True):
    id: str
    url: str
    kinds: list[str]
    active: bool
    description: str
    created_at: datetime


class CreatedWebhook(msgspec.Struct, frozen=True):
    """A new subscription with its secret, which no later answer repeats."""

    id: str
    url: str
    kinds: list[str]
    active: bool
    description: str
    created_at: datetime
    secret: str


class WebhookDelivery(msgspec.Struct, frozen=True):
    id: int
    webhook_id: str
    event_id: str
    event_kind: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    event: dict[str, Any]


def _webhook(s: store.Subscription) -> Webhook:
    return Webhook(s.id, s.url, list(s.kinds), s.active, s.description, s.created_at)


def _delivery(d: store.Delivery) -> WebhookDelivery:
    return WebhookDelivery(
        d.id,
        d.subscription_id,
        d.event_id,
        d.event_kind,
        d.status,
        d.attempts,
        d.next_attempt_at,
        d.last_status,
        d.last_error,
        d.created_at,
        d.delivered_at,
        d.payload,
    )


def _no_webhook(webhook_id: str) -> Problem:
    return Problem(404, f"no webhook {webhook_id!r}")


def _webhook_id(request: web.Request) -> str:
    webhook_id = request.match_info["webhook_id"]
    if "\x00" in webhook_id:  # PostgreSQL text cannot hold it, so no webhook has it
        raise _no_webhook(webhook_id)
    return webhook_id


def _delivery_id(request: web.Request) -> int:
    text = request.match_info["delivery_id"]
    if not text.isdigit() or not text.isascii():
        raise Problem(400, f"path parameter 'delivery_id': expected a whole number, got {text!r}")
    return int(text)


@api.get(
    "/api/v1/webhooks",
    summary="Every webhook subscription (without secrets)",
    role=Role.ADMIN,
    tag=TAG,
    response=list[Webhook],
)
async def list_webhooks(request: web.Request) -> web.Response:
    async with services(request).db() as conn:
        found = await store.listing(conn)
    return a.json_response([_webhook(s) for s in found])


@api.post(
    "/api/v1/webhooks",
    summary="Subscribe an HTTP endpoint to events; answers the signing secret, once",
    role=Role.ADMIN,
    tag=TAG,
    body=NewWebhook,
    response=CreatedWebhook,
    status=201,
)
async def create_webhook(request: web.Request) -> web.Response:
    new = await a.body(request, NewWebhook)
    async with services(request).db() as conn:
        try:
            created, secret = await store.create(
                conn,
                new.url,
                [k.value for k in new.kinds],
                description=new.description,
                active=new.active,
                actor=a.principal(request).token_id,
            )
        except store.InvalidSubscription as exc:
            raise Problem(422, str(exc)) from None
    body = CreatedWebhook(**msgspec.structs.asdict(_webhook(created)), secret=secret)
    return a.json_response(body, 201, {"Location": f"/api/v1/webhooks/{created.id}"})


@api.get(
    "/api/v1/webhooks/{webhook_id}",
    summary="One webhook subscription (without its secret)",
    role=Role.ADMIN,
    tag=TAG,
    response=Webhook,
    errors=(404,),
)
async def get_webhook(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    async with services(request).db() as conn:
        found = await store.get(conn, webhook_id)
    if found is None:
        raise _no_webhook(webhook_id)
    return a.json_response(_webhook(found))


@api.patch(
    "/api/v1/webhooks/{webhook_id}",
    summary="Change a subscription's URL, kinds, description, or pause and resume it",
    role=Role.ADMIN,
    tag=TAG,
    body=WebhookChange,
    response=Webhook,
    errors=(404,),
)
async def change_webhook(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    change = await a.body(request, WebhookChange)

    def given(value: Any) -> Any:
        return None if value is msgspec.UNSET else value

    kinds = given(change.kinds)
    async with services(request).db() as conn:
        try:
            updated = await store.update(
                conn,
                webhook_id,
                url=given(change.url),
                kinds=None if kinds is None else [k.value for k in kinds],
                active=given(change.active),
                description=given(change.description),
                actor=a.principal(request).token_id,
            )
        except store.InvalidSubscription as exc:
            raise Problem(422, str(exc)) from None
    if updated is None:
        raise _no_webhook(webhook_id)
    return a.json_response(_webhook(updated))


@api.delete(
    "/api/v1/webhooks/{webhook_id}",
    summary="Remove a subscription with its deliveries, dead letters included",
    role=Role.ADMIN,
    tag=TAG,
    status=204,
    errors=(404,),
)
async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    async with services(request).db() as conn:
        removed = await store.remove(conn, webhook_id, actor=a.principal(request).token_id)
    if not removed:
        raise _no_webhook(webhook_id)
    return web.Response(status=204)


@api.get(
    "/api/v1/webhooks/{webhook_id}/deliveries",
    summary="A subscription's deliveries, newest first: pending, delivered or dead",
    role=Role.ADMIN,
    tag=TAG,
    params=[
        a.Param(
            "status",
            "only deliveries in this status",
            {"type": "string", "enum": list(store.STATUSES)},
        ),
        a.Param(
            "before",
            "only deliveries with a smaller id (the last id of the previous page)",
            {"type": "integer", "minimum": 1},
        ),
        a.Param(
            "limit",
            f"at most this many (default {store.LISTING_LIMIT})",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
        ),
    ],
    response=list[WebhookDelivery],
    errors=(404,),
)
async def list_deliveries(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    status = a.query_choice(request, "status", store.STATUSES)
    before = a.query_int(request, "before", 0, minimum=1) or None
    limit = a.query_int(request, "limit", store.LISTING_LIMIT, minimum=1, maximum=MAX_PAGE)
    async with services(request).db() as conn:
        if await store.get(conn, webhook_id) is None:
            raise _no_webhook(webhook_id)
        found = await store.deliveries(
            conn, subscription_id=webhook_id, status=status, before=before, limit=limit
        )
    return a.json_response([_delivery(d) for d in found])


@api.post(
    "/api/v1/webhooks/deliveries/{delivery_id}/replay",
    summary="Send a dead or delivered delivery again, with a fresh count of attempts",
    role=Role.ADMIN,
    tag=TAG,
    params=[
        a.Param(
            "delivery_id",
            "the delivery (X-FleetPulse-Delivery)",
            {"type": "integer", "minimum": 1},
            required=True,
            where="path",
        )
    ],
    response=WebhookDelivery,
    errors=(404, 409),
)
async def replay_delivery(request: web.Request) -> web.Response:
    delivery_id = _delivery_id(request)
    async with services(request).db() as conn:
        try:
            replayed = await store.replay(conn, delivery_id, actor=a.principal(request).token_id)
        except store.NotReplayable as exc:
            raise Problem(409, str(exc)) from None
    if replayed is None:
        raise Problem(404, f"no webhook delivery {delivery_id}")
    return a.json_response(_delivery(replayed))
