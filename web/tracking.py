"""A customer's tracking token, loaded into what the reveal rules need: the delivery it
opens, the latest ETA for its current vehicle, the vehicle's live state, and how many of
that vehicle's active stops come first. Shared by the REST route and the websocket.

An unknown token and an expired one get the same 404 with the same words, so nobody can
tell a token that once worked from one that never did.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fleetpulse.database import Conn
from fleetpulse.settings import Settings
from tracker import delivery_store
from tracker.deliveries import FINAL_STATES, Delivery
from tracker.live import LiveDevice
from tracker.redis_live import EtaMessage, RedisLive
from tracker.reveal import EtaFacts, RevealRules, TrackView, customer_view
from web.problems import Problem
from web.services import Services

NOT_FOUND = "no such tracking link, or it has expired"
# Tokens are 32 characters; anything much longer is not one, and is not worth a query.
MAX_TOKEN_CHARS = 128
_FINAL = tuple(sorted(state.value for state in FINAL_STATES))

# The same order as tracker.deliveries.next_stop: sequence, then window end, then id.
_FACTS = """
SELECT d.id, d.updated_at, d.token_expires_at,
       (SELECT count(*) FROM deliveries o
         WHERE o.vehicle_id = d.vehicle_id AND o.id <> d.id AND o.state <> ALL(%(final)s)
           AND (o.sequence, o.window_end, o.id) < (d.sequence, d.window_end, d.id)),
       e.p50, e.p90, e.predicted_at
  FROM deliveries d
  LEFT JOIN LATERAL (
        SELECT p50, p90, predicted_at FROM eta_predictions
         WHERE delivery_id = d.id AND vehicle_id = d.vehicle_id
         ORDER BY predicted_at DESC LIMIT 1) e ON true
 WHERE d.token_hash = %(hash)s AND d.token_expires_at > %(now)s
"""


@dataclass(frozen=True)
class Tracked:
    """One delivery as its customer's token opens it, with what decides what they see."""

    delivery: Delivery
    expires_at: datetime
    eta: EtaFacts | None  # the latest for the delivery's current vehicle
    vehicle: LiveDevice | None
    stops_before: int
    updated_at: datetime  # the row's version when read: a newer one means re-read

    def with_eta(self, eta: EtaFacts, vehicle_id: str) -> Tracked:
        """An ETA given for this delivery; one given on another vehicle (before a
        reassignment) or older than the one held changes nothing."""
        if vehicle_id != self.delivery.vehicle_id:
            return self
        if self.eta is not None and eta.computed_at <= self.eta.computed_at:
            return self
        return replace(self, eta=eta)

    def with_vehicle(self, state: LiveDevice) -> Tracked:
        if state.device_id != self.delivery.vehicle_id:
            return self
        if self.vehicle is not None and state.ts < self.vehicle.ts:
            return self
        return replace(self, vehicle=state)


def with_stops(tracked: Tracked, stops_before: int) -> Tracked:
    return replace(tracked, stops_before=stops_before)


def eta_facts(message: EtaMessage) -> EtaFacts:
    return EtaFacts(
        datetime.fromisoformat(message.p50),
        datetime.fromisoformat(message.p90),
        datetime.fromisoformat(message.computed_at),
    )


def reveal_rules(settings: Settings) -> RevealRules:
    return RevealRules(settings.reveal_eta, settings.reveal_stops, settings.h3_coarse_res)


def view(tracked: Tracked, settings: Settings, now: datetime | None = None) -> TrackView:
    return customer_view(
        tracked.delivery,
        tracked.eta,
        tracked.vehicle,
        tracked.stops_before,
        reveal_rules(settings),
        now or datetime.now(UTC),
        settings.timezone,
    )


async def load(conn: Conn, live: RedisLive, token: str, now: datetime) -> Tracked | None:
    """What the token opens at `now`; None when it is unknown or has expired."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    # The facts first, then the delivery: if the row changes in between, the version
    # kept is the older one, and the next poll reads it again (never the reverse).
    params = {"hash": delivery_store.hash_token(token), "now": now, "final": list(_FINAL)}
    cur = await conn.execute(_FACTS, params)
    row = await cur.fetchone()
    if row is None:
        return None
    delivery_id, updated_at, expires_at, stops_before, p50, p90, computed_at = row
    delivery = await delivery_store.by_token(conn, token, now)
    if delivery is None or delivery.id != delivery_id:
        return None
    eta = None if p50 is None else EtaFacts(p50, p90, computed_at)
    vehicle = await live.device(delivery.vehicle_id)
    return Tracked(delivery, expires_at, eta, vehicle, int(stops_before), updated_at)


async def open_token(services: Services, token: str) -> Tracked:
    """The token's delivery, or the 404 problem."""
    async with services.db() as conn:
        tracked = await load(conn, services.live, token, datetime.now(UTC))
    if tracked is None:
        raise Problem(404, NOT_FOUND)
    return tracked


async def stops_before(conn: Conn, deliveries: Collection[Delivery]) -> dict[str, int]:
    """For each delivery, its vehicle's active stops served before it: one query for
    all of them."""
    vehicles = sorted({d.vehicle_id for d in deliveries})
    if not vehicles:
        return {}
    cur = await conn.execute(
        "SELECT vehicle_id, sequence, window_end, id FROM deliveries"
        " WHERE vehicle_id = ANY(%s) AND state <> ALL(%s)",
        (vehicles, list(_FINAL)),
    )
    stops: dict[str, list[tuple[int, datetime, str]]] = defaultdict(list)
    for vehicle, sequence, window_end, id_ in await cur.fetchall():
        stops[vehicle].append((sequence, window_end, id_))
    counts = {}
    for d in deliveries:
        mine = (d.sequence, d.window_end, d.id)
        counts[d.id] = sum(1 for stop in stops[d.vehicle_id] if stop < mine)
    return counts


async def changed_since(
    conn: Conn, delivery_ids: Collection[str], since: datetime
) -> dict[str, datetime]:
    """The versions of these deliveries' rows changed after `since` (looking back a
    margin: a version is stamped before its commit, so it can become visible late)."""
    if not delivery_ids:
        return {}
    cur = await conn.execute(
        "SELECT id, updated_at FROM deliveries WHERE id = ANY(%s)"
        " AND updated_at > %s::timestamptz - %s::interval",
        (list(delivery_ids), since, f"{delivery_store.POLL_OVERLAP_S} seconds"),
    )
    return {id_: at for id_, at in await cur.fetchall()}


async def valid_tokens(conn: Conn, tokens: Collection[str]) -> set[str]:
    """Those of `tokens` that still open a delivery (not expired, not re-issued)."""
    by_hash = {delivery_store.hash_token(t): t for t in tokens}
    if not by_hash:
        return set()
    cur = await conn.execute(
        "SELECT token_hash FROM deliveries WHERE token_hash = ANY(%s) AND token_expires_at > now()",
        (list(by_hash),),
    )
    return {by_hash[row[0]] for row in await cur.fetchall()}
