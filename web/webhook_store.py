"""PostgreSQL side of webhooks: subscriptions, the delivery outbox as people see it, and
replay. The sender's own claiming of due rows lives with the sender (web.webhooks).

Changes are audited with the actor who made them (a token id, or 'cli')."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from fleetpulse.database import Conn
from tracker.events import EventKind
from web import auth

NOTIFY_CHANNEL = "fleetpulse_webhooks"
STATUSES = ("pending", "delivered", "dead")
REPLAYABLE = ("delivered", "dead")
SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048
MAX_DESCRIPTION_CHARS = 500
LISTING_LIMIT = 100
BIGINT_MAX = 2**63 - 1


class InvalidSubscription(ValueError):
    """A subscription that cannot be stored; the message names the field."""


class NotReplayable(Exception):
    """The delivery is still pending: it will be sent (again) without a replay."""


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    kinds: tuple[str, ...]
    active: bool
    created_at: datetime
    description: str


@dataclass(frozen=True)
class Delivery:
    id: int
    subscription_id: str
    event_id: str
    event_kind: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


def check_url(text: str) -> str:
    """An absolute http(s) URL with a host, or InvalidSubscription saying what is wrong."""
    url = text.strip()
    if len(url) > MAX_URL_CHARS:
        raise InvalidSubscription(f"url: at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number or out of range
    except ValueError as exc:
        raise InvalidSubscription(f"url: {exc}: {url!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidSubscription(f"url: expected an http:// or https:// URL, got {url!r}")
    if not parts.hostname:
        raise InvalidSubscription(f"url: names no host: {url!r}")
    if any(c.isspace() for c in url):
        raise InvalidSubscription(f"url: contains white space: {url!r}")
    if "\x00" in url:  # PostgreSQL text cannot hold it
        raise InvalidSubscription(f"url: contains a NUL character: {url!r}")
    return url


def check_kinds(kinds: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Event kinds, each known, sorted and without repeats; empty means every kind."""
    known = {k.value for k in EventKind}
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise InvalidSubscription(
            f"kinds: unknown event kind {unknown[0]!r}; expected some of {', '.join(sorted(known))}"
        )
    return tuple(sorted(set(kinds)))


def _check_description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise InvalidSubscription(f"description: at most {MAX_DESCRIPTION_CHARS} characters")
    if "\x00" in text:  # PostgreSQL text cannot hold it
        raise InvalidSubscription("description: contains a NUL character")
    return text


_SUBSCRIPTION_COLUMNS = "id, url, kinds, active, created_at, description"


def _subscription(row: tuple[Any, ...]) -> Subscription:
    return Subscription(row[0], row[1], tuple(row[2]), row[3], row[4], row[5])


async def create(
    conn: Conn,
    url: str,
    kinds: list[str] | tuple[str, ...] = (),
    *,
    description: str = "",
    active: bool = True,
    actor: str = auth.CLI_ACTOR,
) -> tuple[Subscription, str]:
    """A new subscription and its signing secret (the only time the secret is returned)."""
    url, kinds, description = check_url(url), check_kinds(kinds), _check_description(description)
    subscription_id = "whk_" + secrets.token_hex(6)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO webhook_subscriptions (id, url, kinds, secret, active, description)"
            f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_SUBSCRIPTION_COLUMNS}",
            (subscription_id, url, list(kinds), secret, active, description),
        )
        row = await cur.fetchone()
        assert row is not None
        await auth.audit(
            conn,
            actor,
            "webhook.create",
            subscription_id,
            {"url": url, "kinds": list(kinds), "active": active},
        )
    return _subscription(row), secret


async def get(conn: Conn, subscription_id: str) -> Subscription | None:
    cur = await conn.execute(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = %s",
        (subscription_id,),
    )
    row = await cur.fetchone()
    return None if row is None else _subscription(row)


async def listing(conn: Conn) -> list[Subscription]:
    cur = await conn.execute(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, id"
    )
    return [_subscription(row) for row in await cur.fetchall()]


async def update(
    conn: Conn,
    subscription_id: str,
    *,
    url: str | None = None,
    kinds: list[str] | tuple[str, ...] | None = None,
    active: bool | None = None,
    description: str | None = None,
    actor: str = auth.CLI_ACTOR,
) -> Subscription | None:
    """Change what is given; None when there is no such subscription. Deliveries already
    queued keep going to the subscription, at its new URL."""
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = check_url(url)
    if kinds is not None:
        changes["kinds"] = list(check_kinds(kinds))
    if active is not None:
        changes["active"] = active
    if description is not None:
        changes["description"] = _check_description(description)
    if not changes:
        raise InvalidSubscription("nothing to change: give url, kinds, active or description")
    assignments = ", ".join(f"{column} = %s" for column in changes)
    async with conn.transaction():
        cur = await conn.execute(
            f"UPDATE webhook_subscriptions SET {assignments} WHERE id = %s"
            f" RETURNING {_SUBSCRIPTION_COLUMNS}",
            (*changes.values(), subscription_id),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        await auth.audit(conn, actor, "webhook.update", subscription_id, changes)
        if changes.get("active"):
            # Deliveries that waited while it was paused are due now.
            await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return _subscription(row)


async def remove(conn: Conn, subscription_id: str, actor: str = auth.CLI_ACTOR) -> bool:
    """Delete a subscription with its deliveries, dead letters included."""
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM webhook_subscriptions WHERE id = %s", (subscription_id,)
        )
        if cur.rowcount:
            await auth.audit(conn, actor, "webhook.delete", subscription_id)
    return cur.rowcount > 0


_DELIVERY_COLUMNS = (
    "id, subscription_id, event_id, event_kind, status, attempts, next_attempt_at,"
    " last_status, last_error, created_at, delivered_at, payload"
)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    return Delivery(*row)


async def deliveries(
    conn: Conn,
    *,
    subscription_id: str | None = None,
    status: str | None = None,
    before: int | None = None,
    limit: int = LISTING_LIMIT,
) -> list[Delivery]:
    """Newest first; `before` (a delivery id) pages back through older ones."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
    clauses: list[str] = []
    params: list[Any] = []
    if subscription_id is not None:
        clauses.append("subscription_id = %s")
        params.append(subscription_id)
    if status is not None:
        clauses.append("status = %s")
        params.append(status)
    if before is not None:
        clauses.append("id < %s")
        params.append(min(before, BIGINT_MAX))
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cur = await conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries{where} ORDER BY id DESC LIMIT %s",
        (*params, limit),
    )
    return [_delivery(row) for row in await cur.fetchall()]


async def get_delivery(conn: Conn, delivery_id: int) -> Delivery | None:
    if not 0 < delivery_id <= BIGINT_MAX:
        return None
    cur = await conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = %s", (delivery_id,)
    )
    row = await cur.fetchone()
    return None if row is None else _delivery(row)


async def replay(conn: Conn, delivery_id: int, actor: str = auth.CLI_ACTOR) -> Delivery | None:
    """Queue a dead or delivered delivery again, with a fresh count of attempts. None when
    there is no such delivery; NotReplayable when it is still pending."""
    if not 0 < delivery_id <= BIGINT_MAX:
        return None
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
            " next_attempt_at = now(), leased_until = NULL, delivered_at = NULL"
            f" WHERE id = %s AND status = ANY(%s) RETURNING {_DELIVERY_COLUMNS}",
            (delivery_id, list(REPLAYABLE)),
        )
        row = await cur.fetchone()
        if row is None:
            found = await get_delivery(conn, delivery_id)
            if found is None:
                return None
            raise NotReplayable(f"delivery {delivery_id} is {found.status}; it will be sent")
        await auth.audit(conn, actor, "webhook.replay", str(delivery_id))
        await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return _delivery(row)
