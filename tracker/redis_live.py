"""Redis side of the tracker: live device state (a GEO set plus one key per device),
event and position fan-out, and the epoch that tells whether Redis lost its data.

Writes are coalesced: one pipeline per processed batch, because a round trip per fix
would cost more than everything else per fix. The moved devices' states and GEO members
go as one msgpack argument to a script that issues the GEOADD and MSET in Redis: packed by
redis-py, their five arguments per device cost the tracker more than its geofence
evaluation's exact tests (bench/e2e at 15,000 fixes/s: 12 % of its samples). Per 1,000
devices the script takes the tracker 1.4 ms of CPU instead of 5.4 ms, and Redis 3.2 ms
instead of 0.9 ms: the work moves to the server that has room (a Redis core then takes
~300,000 moved devices/s, far more than the trackers of one deployment produce).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

import msgspec
import redis.asyncio as redis

from tracker.delivery_tracking import EtaUpdate
from tracker.events import Event
from tracker.live import LiveDevice, haversine_m

LIVE_GEO_KEY = "fleetpulse:live"
DEVICE_KEY_PREFIX = "fleetpulse:device:"
EVENTS_CHANNEL = "fleetpulse:events"
POSITIONS_CHANNEL = "fleetpulse:positions"
ETAS_CHANNEL = "fleetpulse:etas"
EPOCH_KEY = "fleetpulse:epoch"
# Each event goes out on the bus once. A tracker restarting from its checkpoint (after a
# crash, or losing Redis or PostgreSQL for a moment) evaluates again the fixes it had
# processed since, and gets the same events again (same ids): storing them is a no-op, and
# publishing them is one too, as long as the marker of their first publication lives. The
# marker is set by the same script that publishes, so no crash can part the two. Redis
# losing its data loses the markers too: those events go out again (clients drop ids they
# already have, see docs/websockets.md).
PUBLISHED_KEY_PREFIX = "fleetpulse:published:"
PUBLISHED_MEMORY_S = 3600  # longer than a supervisor takes to restart a tracker
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
    return redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return -1
"""
# KEYS[1]: the GEO set; ARGV[1]: the device key prefix; ARGV[2]: msgpack array of
# [lon, lat, device id, state JSON]. Commands go in chunks below Lua's unpack() limit.
_STORE_STATES = """
local rows = cmsgpack.unpack(ARGV[2])
local geo, kv = {}, {}
for _, row in ipairs(rows) do
    geo[#geo + 1] = row[1]
    geo[#geo + 1] = row[2]
    geo[#geo + 1] = row[3]
    kv[#kv + 1] = ARGV[1] .. row[3]
    kv[#kv + 1] = row[4]
    if #geo >= 3000 then
        redis.call('GEOADD', KEYS[1], unpack(geo))
        redis.call('MSET', unpack(kv))
        geo, kv = {}, {}
    end
end
if #geo > 0 then
    redis.call('GEOADD', KEYS[1], unpack(geo))
    redis.call('MSET', unpack(kv))
end
return #rows
"""

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_device = msgspec.json.Decoder(LiveDevice)


class EventMessage(msgspec.Struct, frozen=True):
    """An event as published and stored for the web layer: the event plus its id."""

    id: str
    device_id: str
    kind: str
    ts: str
    fence_id: str | None
    lat: float | None
    lon: float | None
    alt: float | None
    detail: str
    delivery_id: str | None


def event_message(event: Event) -> EventMessage:
    return EventMessage(
        id=event.id,
        device_id=event.device_id,
        kind=event.kind.value,
        ts=event.ts.isoformat(),
        fence_id=event.fence_id,
        lat=event.lat,
        lon=event.lon,
        alt=event.alt,
        detail=event.detail,
        delivery_id=event.delivery_id,
    )


class EtaMessage(msgspec.Struct, frozen=True):
    delivery_id: str
    vehicle_id: str
    state: str
    late_risk: bool
    p50: str
    p90: str
    computed_at: str
    method: str


def eta_message(update: EtaUpdate) -> EtaMessage:
    return EtaMessage(
        delivery_id=update.delivery.id,
        vehicle_id=update.delivery.vehicle_id,
        state=update.delivery.state.value,
        late_risk=update.delivery.late_risk,
        p50=update.eta.p50.isoformat(),
        p90=update.eta.p90.isoformat(),
        computed_at=update.eta.computed_at.isoformat(),
        method=update.eta.method,
    )


class RedisLive:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._publish_once = client.register_script(_PUBLISH_ONCE)
        self._store_states = client.register_script(_STORE_STATES)

    async def epoch(self) -> str:
        """This Redis's data generation: it changes only when Redis has lost its data."""
        fresh = uuid.uuid4().hex
        await self._redis.set(EPOCH_KEY, fresh, nx=True)
        value = await self._redis.get(EPOCH_KEY)
        return value.decode() if isinstance(value, bytes) else str(value or fresh)

    async def write(
        self,
        devices: Iterable[LiveDevice],
        events: list[Event],
        etas: Sequence[EtaUpdate] = (),
    ) -> None:
        """Store states, move the GEO members, publish positions, events (each id once)
        and ETAs: one round trip."""
        latest = {d.device_id: d for d in devices}
        if not latest and not events and not etas:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            if latest:
                encoded = [_json.encode(d) for d in latest.values()]
                # Redis's cmsgpack reads no msgpack bin: the JSON goes as text.
                rows = [
                    (d.lon, d.lat, d.device_id, e.decode())
                    for d, e in zip(latest.values(), encoded, strict=True)
                ]
                await self._store_states(
                    keys=[LIVE_GEO_KEY],
                    args=[DEVICE_KEY_PREFIX, _msgpack.encode(rows)],
                    client=pipe,
                )
                # The JSON array of those same objects, without encoding them twice.
                pipe.publish(POSITIONS_CHANNEL, b"[" + b",".join(encoded) + b"]")
            for event in events:
                await self._publish_once(
                    keys=[PUBLISHED_KEY_PREFIX + event.id],
                    args=[EVENTS_CHANNEL, _json.encode(event_message(event)), PUBLISHED_MEMORY_S],
                    client=pipe,
                )
            for update in etas:
                pipe.publish(ETAS_CHANNEL, _json.encode(eta_message(update)))
            await pipe.execute()

    async def device(self, device_id: str) -> LiveDevice | None:
        raw = await self._redis.get(DEVICE_KEY_PREFIX + device_id)
        return None if raw is None else _device.decode(raw)

    async def near(self, lat: float, lon: float, radius_m: float) -> list[LiveDevice]:
        ids = await self._redis.geosearch(
            LIVE_GEO_KEY, longitude=lon, latitude=lat, radius=radius_m, unit="m", sort="ASC"
        )
        return await self._states(ids)

    async def in_box(
        self, south: float, west: float, north: float, east: float
    ) -> list[LiveDevice]:
        """Devices whose last position lies in the box (degrees)."""
        # GEOSEARCH boxes are metric around a centre: search the enclosing box, then cut.
        centre_lat, centre_lon = (south + north) / 2, (west + east) / 2
        height = haversine_m(south, centre_lon, north, centre_lon)
        width = max(haversine_m(lat, west, lat, east) for lat in (south, north, centre_lat))
        ids = await self._redis.geosearch(
            LIVE_GEO_KEY,
            longitude=centre_lon,
            latitude=centre_lat,
            width=width * 1.01,
            height=height * 1.01,
            unit="m",
        )
        return [
            d for d in await self._states(ids) if south <= d.lat <= north and west <= d.lon <= east
        ]

    async def _states(self, ids: Sequence[object]) -> list[LiveDevice]:
        if not ids:
            return []
        names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        raws = await self._redis.mget([DEVICE_KEY_PREFIX + name for name in names])
        return [_device.decode(raw) for raw in raws if raw is not None]
