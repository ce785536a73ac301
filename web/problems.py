"""Errors as RFC 9457 problem details: every error response is JSON with a precise
message, and invalid input is a 4xx, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import msgspec
import psycopg
import psycopg_pool
from aiohttp import web

from fleetpulse.errors import ServiceUnavailable

log = logging.getLogger("fleetpulse.web")

PROBLEM_TYPE = "application/problem+json"
_json = msgspec.json.Encoder()


class Problem(Exception):
    """An error the client can act on: status, a short title and the precise detail."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


class ProblemDetails(msgspec.Struct, frozen=True):
    """What every error response carries (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fleetpulse"'
    return web.Response(
        status=status, body=_json.encode(body), content_type=PROBLEM_TYPE, headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.detail, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
        if exc.status == 404 and detail is None:
            detail = f"no such resource: {request.path}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return problem_response(exc.status, detail or exc.reason, kept)
    except (ServiceUnavailable, psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        log.warning("%s %s: a service is unavailable: %s", request.method, request.path, exc)
        return problem_response(503, "a service FleetPulse needs is unavailable; retry shortly")
