"""Requests per minute per client address on the public (customer) endpoints, counted in
Redis so that every web worker on every host enforces one shared limit.

A sliding-window counter: the count of the current minute plus the previous minute's,
weighted by how much of it still lies inside the last 60 s. Unlike a fixed window it
does not let a client send twice the limit across a minute boundary, and it costs one
round trip: a small Lua script that checks and counts atomically. Refused requests are
not counted, so a client that waits the Retry-After it was given gets in.

Clocks: the worker's clock picks the minute; workers' clocks agree to well under a
second (NTP), which moves a boundary, never the limit.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as redis
from aiohttp import web

from fleetpulse.errors import ServiceUnavailable
from web.problems import Handler, problem_response
from web.services import SERVICES

log = logging.getLogger("fleetpulse.web.rate_limit")

WINDOW_S = 60
KEY_PREFIX = "fleetpulse:ratelimit:"
# Customers' endpoints: the tracking API, its websocket and its page.
PUBLIC_PREFIXES = ("/api/v1/track/", "/ws/track/", "/track/")
# An IPv6 client usually holds a whole /64: limit the prefix, not each address.
IPV6_PREFIX_BITS = 64

# KEYS: this minute's counter, the previous minute's. ARGV: the previous minute's weight,
# the limit, the counter's lifetime in seconds. Returns {allowed, current, previous}.
_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if previous * tonumber(ARGV[1]) + current + 1 > tonumber(ARGV[2]) then
  return {0, current, previous}
end
current = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, current, previous}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int  # 0 when allowed


def retry_after_s(current: int, previous: int, elapsed_s: float, limit: int) -> int:
    """Whole seconds until a refused client's next request fits under the limit, given
    this minute's and the previous minute's counts, `elapsed_s` into this minute."""
    window = float(WINDOW_S)
    if current + 1 <= limit:
        # This minute has room: wait until enough of the previous one has slid out.
        if previous <= 0:
            return 1
        fits_at = window * (1 - (limit - 1 - current) / previous)
        wait = fits_at - elapsed_s
    else:
        # This minute is full: wait for the next, then for this one to slide out enough.
        fits_at = window * (1 - (limit - 1) / current)
        wait = window - elapsed_s + max(fits_at, 0.0)
    return max(1, math.ceil(wait))


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def client_address(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str | None:
    """The client behind our own reverse proxies: the peer, unless it is a trusted proxy,
    then the right-most address of X-Forwarded-For that is not one. Addresses left of it
    were written by the client and prove nothing."""
    address = peer
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    while address is not None and _within(address, trusted) and hops:
        address = hops.pop()
    return address


def _within(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_key(address: str | None) -> str:
    """Whom a request is counted against: its peer address (an IPv6 one by /64)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        network = ipaddress.IPv6Network((ip, IPV6_PREFIX_BITS), strict=False)
        return str(network)
    return str(ip)


class RateLimiter:
    def __init__(self, client: redis.Redis, limit_per_minute: int) -> None:
        self.limit = limit_per_minute
        self._script = client.register_script(_SCRIPT)
        self.allowed = 0
        self.rejected = 0  # read by /metrics

    async def check(self, key: str) -> Verdict:
        now = time.time()
        minute, elapsed = divmod(now, WINDOW_S)
        weight = (WINDOW_S - elapsed) / WINDOW_S
        base = f"{KEY_PREFIX}{{{key}}}:"  # one hash slot per client, for Redis Cluster
        try:
            allowed, current, previous = await self._script(
                keys=[f"{base}{int(minute)}", f"{base}{int(minute) - 1}"],
                args=[f"{weight:.6f}", self.limit, 2 * WINDOW_S + 1],
            )
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"Redis, for the rate limit: {exc}") from exc
        if allowed:
            self.allowed += 1
            return Verdict(True, 0)
        self.rejected += 1
        return Verdict(False, retry_after_s(int(current), int(previous), elapsed, self.limit))


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    limiter = request.app[RATE_LIMITER]
    address = client_address(
        request.remote,
        request.headers.get("X-Forwarded-For"),
        request.app[SERVICES].settings.trusted_proxies,
    )
    verdict = await limiter.check(client_key(address))
    if verdict.allowed:
        return await handler(request)
    response = problem_response(
        429,
        f"too many requests from this address: tracking links allow {limiter.limit} a "
        f"minute; retry in {verdict.retry_after_s} s",
    )
    response.headers["Retry-After"] = str(verdict.retry_after_s)
    return response


def setup(app: web.Application) -> None:
    services = app[SERVICES]
    app[RATE_LIMITER] = RateLimiter(services.redis, services.settings.public_rate_limit)
    app.middlewares.append(rate_limit_middleware)
