"""The webhook sender: delivers the outbox (webhook_deliveries) to subscribers' endpoints.

Every web worker runs one. A sender claims due rows by leasing them in one statement
(`FOR UPDATE SKIP LOCKED`), so two senders never hold the same row, and records each
outcome only if its lease still holds: a row is sent by one sender at a time, and again
only if the previous attempt failed or its outcome was lost (a crash mid-request). That
is at-least-once delivery; receivers de-duplicate on X-FleetPulse-Delivery.

Senders wake when the events trigger NOTIFYs, when a retry falls due, and every poll
interval in case a notification was missed (the LISTEN connection was down).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

import aiohttp
import psycopg
import psycopg_pool
from aiohttp import web

from fleetpulse.database import Conn, connect
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.settings import Settings
from web.services import SERVICES
from web.webhook_store import NOTIFY_CHANNEL

log = logging.getLogger("fleetpulse.webhooks")

SIGNATURE_PREFIX = "sha256="
USER_AGENT = "FleetPulse-Webhooks/1"
MAX_IN_FLIGHT = 32  # requests at once per sender; also the most rows one claim takes
POLL_INTERVAL_S = 5.0  # look for due rows at least this often, notification or not
MIN_PAUSE_S = 0.05  # a row due but not claimable is being claimed by another sender
LEASE_MARGIN_S = 30.0  # lease = request timeout + this, for recording the outcome
RECONNECT_INTERVAL_S = 2.0
SHUTDOWN_GRACE_S = 5.0  # requests in flight may finish this long; the rest are retried later
ERROR_BODY_BYTES = 300  # of a refusing receiver's answer, kept as last_error
BACKOFF_CAP_S = 6 * 3600.0  # the longest wait between two attempts

# Errors of PostgreSQL being away; the sender waits and tries again.
_DB_DOWN = (psycopg.OperationalError, psycopg_pool.PoolTimeout, ServiceUnavailable)


# --- signing and backoff (pure) -------------------------------------------------------


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """X-FleetPulse-Signature: HMAC-SHA256 over "<timestamp>.<body>", keyed by the secret.
    The timestamp is signed too, so an old request cannot be replayed with a new one."""
    message = str(timestamp).encode() + b"." + body
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (in constant time); the docs show the same in a few lines."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: doubling from `base_s` (FLEETPULSE_WEBHOOK_BACKOFF), at
    most `cap_s`, with jitter."""

    base_s: float
    cap_s: float = BACKOFF_CAP_S

    def delay_s(self, failed_attempts: int, rand: float) -> float:
        """The wait after `failed_attempts` (1 or more) failures; `rand` in [0, 1).

        The delay is drawn from the upper half of the doubled interval: never much shorter
        than the schedule, yet senders that failed together (a receiver's outage) do not
        all come back at the same instant."""
        full = min(self.cap_s, self.base_s * 2.0 ** min(max(failed_attempts, 1) - 1, 62))
        return full / 2 + full / 2 * rand


# --- the sender ---------------------------------------------------------------------


@dataclass
class WebhookStats:
    """Outcome counters, cumulative since the worker started (exposed on /metrics)."""

    attempts: int = 0  # requests made
    delivered: int = 0  # 2xx answers
    retried: int = 0  # failed attempts with another one scheduled
    dead: int = 0  # failed attempts that were the last allowed
    lease_lost: int = 0  # outcomes not recorded: the lease ran out, another sender took over
    database_errors: int = 0  # claims or recordings that failed; the rows come back later

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    id: int
    attempts: int  # including this one; the lease's fingerprint
    event_kind: str
    url: str
    secret: str
    body: bytes


_CLAIM = """
UPDATE webhook_deliveries d
SET leased_until = now() + make_interval(secs => %(lease_s)s), attempts = d.attempts + 1
FROM webhook_subscriptions s
WHERE s.id = d.subscription_id AND d.id IN (
    SELECT w.id FROM webhook_deliveries w
    JOIN webhook_subscriptions ws ON ws.id = w.subscription_id
    WHERE w.status = 'pending' AND ws.active AND w.next_attempt_at <= now()
      AND (w.leased_until IS NULL OR w.leased_until <= now())
    ORDER BY w.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE OF w SKIP LOCKED
)
RETURNING d.id, d.attempts, d.event_kind, s.url, s.secret,
    jsonb_build_object('id', d.id, 'webhook_id', d.subscription_id, 'event', d.payload)::text
"""

_NEXT_DUE = """
SELECT extract(epoch FROM min(greatest(d.next_attempt_at, d.leased_until)) - now())
FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
WHERE d.status = 'pending' AND s.active
"""

# Each outcome is written only while this sender's lease holds (same attempt count, still
# pending): a sender whose lease ran out must not overwrite its successor's result.
_LEASE_HELD = " WHERE id = %(id)s AND attempts = %(attempts)s AND status = 'pending'"
_DELIVERED = (
    "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),"
    " leased_until = NULL, last_status = %(status)s, last_error = NULL" + _LEASE_HELD
)
_RETRY = (
    "UPDATE webhook_deliveries SET leased_until = NULL, last_status = %(status)s,"
    " last_error = %(error)s, next_attempt_at = now() + make_interval(secs => %(delay_s)s)"
    + _LEASE_HELD
)
_DEAD = (
    "UPDATE webhook_deliveries SET status = 'dead', leased_until = NULL,"
    " last_status = %(status)s, last_error = %(error)s" + _LEASE_HELD
)


class WebhookSender:
    def __init__(
        self,
        settings: Settings,
        pool: psycopg_pool.AsyncConnectionPool[Conn],
        *,
        backoff: Backoff | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.stats = WebhookStats()
        self._settings = settings
        self._pool = pool
        self._backoff = backoff or Backoff(settings.webhook_backoff.total_seconds())
        self._poll_interval_s = poll_interval_s
        self._max_in_flight = max_in_flight
        self._rand = rand
        self._timeout_s = settings.webhook_timeout.total_seconds()
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then give requests in flight a short grace."""
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with aiohttp.ClientSession(
            timeout=timeout, headers={"User-Agent": USER_AGENT}
        ) as http:
            helpers = [
                asyncio.create_task(self._listen(), name="webhook-listen"),
                asyncio.create_task(self._wake_on(stop), name="webhook-stop-watch"),
            ]
            try:
                while not stop.is_set():
                    self._wake.clear()
                    if await self._claim_and_send(http):
                        continue  # a full claim: more rows may be due already
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), await self._pause_s())
            finally:
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await self._finish_in_flight()

    async def _claim_and_send(self, http: aiohttp.ClientSession) -> bool:
        """Start requests for due rows; True when it took as many as it had room for."""
        room = self._max_in_flight - len(self._in_flight)
        if room <= 0:
            return False  # a finishing request sets the wake-up
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    _CLAIM, {"lease_s": self._timeout_s + LEASE_MARGIN_S, "limit": room}
                )
                rows = await cur.fetchall()
        except _DB_DOWN as exc:
            self.stats.database_errors += 1
            log.warning("cannot claim webhook deliveries: %s", exc)
            await asyncio.sleep(RECONNECT_INTERVAL_S)
            return False
        for row in rows:
            job = _Job(row[0], row[1], row[2], row[3], row[4], str(row[5]).encode())
            task = asyncio.create_task(self._deliver(http, job), name=f"webhook-{job.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(rows) == room

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
        self._wake.set()  # room for more, and perhaps a retry that is due soon

    async def _pause_s(self) -> float:
        """Until the next pending row falls due, at most the poll interval."""
        if len(self._in_flight) >= self._max_in_flight:
            return self._poll_interval_s
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(_NEXT_DUE)
                row = await cur.fetchone()
        except _DB_DOWN:
            return RECONNECT_INTERVAL_S
        if row is None or row[0] is None:
            return self._poll_interval_s
        return min(self._poll_interval_s, max(MIN_PAUSE_S, float(row[0])))

    async def _deliver(self, http: aiohttp.ClientSession, job: _Job) -> None:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-FleetPulse-Event": job.event_kind,
            "X-FleetPulse-Delivery": str(job.id),
            "X-FleetPulse-Timestamp": str(timestamp),
            "X-FleetPulse-Signature": sign(job.secret, timestamp, job.body),
        }
        status: int | None = None
        error: str | None = None
        try:
            async with http.post(
                job.url, data=job.body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    answer = await resp.content.read(ERROR_BODY_BYTES)
                    text = answer.decode(errors="replace").strip()
                    error = f"HTTP {status} {resp.reason or ''}".strip() + (
                        f": {text}" if text else ""
                    )
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except (ValueError, OSError) as exc:  # a URL aiohttp cannot use, a socket error
            error = f"{type(exc).__name__}: {exc}"
        self.stats.attempts += 1
        await self._record(job, status, error)

    async def _record(self, job: _Job, status: int | None, error: str | None) -> None:
        params: dict[str, object] = {"id": job.id, "attempts": job.attempts, "status": status}
        if error is None:
            statement, counter = _DELIVERED, "delivered"
        elif job.attempts >= self._settings.webhook_max_attempts:
            statement, counter = _DEAD, "dead"
            params["error"] = error
        else:
            statement, counter = _RETRY, "retried"
            params["error"] = error
            params["delay_s"] = self._backoff.delay_s(job.attempts, self._rand())
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(statement, params)
        except _DB_DOWN as exc:
            # The lease runs out and the row is sent again: at-least-once, never lost.
            self.stats.database_errors += 1
            log.warning("webhook delivery %d: outcome not recorded: %s", job.id, exc)
            return
        if cur.rowcount == 0:
            self.stats.lease_lost += 1
            log.warning("webhook delivery %d: lease lost before its outcome was recorded", job.id)
            return
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if counter == "dead":
            log.warning(
                "webhook delivery %d is dead after %d attempts: %s", job.id, job.attempts, error
            )

    async def _listen(self) -> None:
        """Wake the sender on each NOTIFY; reconnect when PostgreSQL goes away."""
        while True:
            try:
                conn = await connect(self._settings.database_url)
                try:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._wake.set()  # whatever was notified while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
                finally:
                    await conn.close()
            except (psycopg.Error, ServiceUnavailable) as exc:
                log.warning("webhook wake-ups: LISTEN connection lost (%s); polling meanwhile", exc)
            await asyncio.sleep(RECONNECT_INTERVAL_S)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _finish_in_flight(self) -> None:
        if not self._in_flight:
            return
        _, late = await asyncio.wait(set(self._in_flight), timeout=SHUTDOWN_GRACE_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            log.info("%d webhook requests cut short by shutdown; they will be retried", len(late))


# --- the web worker's background task -------------------------------------------------

WEBHOOK_SENDER = web.AppKey("webhook_sender", WebhookSender)


def setup(app: web.Application) -> None:
    """One sender per web worker; its counters are at `app[WEBHOOK_SENDER].stats`."""
    services = app[SERVICES]
    app[WEBHOOK_SENDER] = WebhookSender(services.settings, services.pool)
    app.cleanup_ctx.append(_run_sender)


async def _run_sender(app: web.Application) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(app[WEBHOOK_SENDER].run(stop), name="webhook-sender")
    task.add_done_callback(_report_stop)
    yield
    stop.set()
    # A crash was logged when it happened; shutting down goes on regardless.
    await asyncio.gather(task, return_exceptions=True)


def _report_stop(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the webhook sender stopped", exc_info=task.exception())
