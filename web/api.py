"""Routes declared once: the handler, who may call it, its parameters, body and
responses. The same declaration registers the aiohttp route, enforces the role and
writes the route's part of the OpenAPI document, so the document cannot drift from
what the app does.

A module of routes makes an `Api()`, decorates its handlers with `api.get(...)` and
friends, and is listed in `web.app.ROUTE_MODULES`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

from web import auth
from web.problems import Problem, ProblemDetails
from web.services import services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

_json = msgspec.json.Encoder()
_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")

PRINCIPAL = web.RequestKey("principal", auth.Principal)
OPENAPI = web.AppKey("openapi", dict[str, Any])


@dataclass(frozen=True)
class Param:
    """A query or path parameter, with its JSON schema for the document."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    where: str = "query"


# Times in queries are RFC 3339 or epoch milliseconds, as on the command line.
TIME_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "integer", "description": "epoch milliseconds"},
    ]
}
# A time in a response: always with its offset, and documented as a date-time.
Time = Annotated[datetime, msgspec.Meta(tz=True)]


@dataclass
class Operation:
    method: str
    path: str  # aiohttp form, regex constraints included
    summary: str
    role: auth.Role | None
    tag: str
    params: Sequence[Param]
    body: Any
    response: Any
    status: int
    content: dict[str, dict[str, Any]] | None
    errors: Sequence[int]

    @property
    def openapi_path(self) -> str:
        return _PATH_PARAM.sub(r"{\1}", self.path)

    @property
    def operation_id(self) -> str:
        words = re.findall(r"\w+", self.openapi_path.replace("api/v1", ""))
        return "_".join([self.method.lower(), *words])


class Api:
    def __init__(self) -> None:
        self.routes = web.RouteTableDef()
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        role: auth.Role | None,
        tag: str,
        params: Sequence[Param] = (),
        body: Any = None,
        response: Any = None,
        status: int = 200,
        content: dict[str, dict[str, Any]] | None = None,
        errors: Sequence[int] = (),
    ) -> Callable[[Handler], Handler]:
        """`response` is a type msgspec can describe (a Struct, `list[Struct]`), or None
        with `content` giving media types and schemas by hand (GeoJSON, CSV, GPX)."""
        path_params = [
            Param(name, f"the {name.replace('_', ' ')}", required=True, where="path")
            for name in _PATH_PARAM.findall(path)
            if all(p.name != name for p in params)
        ]
        operation = Operation(
            method.upper(),
            path,
            summary,
            role,
            tag,
            [*path_params, *params],
            body,
            response,
            status,
            content,
            errors,
        )
        self.operations.append(operation)
        query_names = [p.name for p in operation.params if p.where == "query"]

        def decorate(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def guarded(request: web.Request) -> web.StreamResponse:
                if role is not None:  # who asks comes first: a stranger learns nothing
                    request[PRINCIPAL] = await authenticate(request, role)
                for name in query_names:
                    _present(request, name)
                return await handler(request)

            self.routes.route(method.upper(), path)(guarded)
            return guarded

        return decorate

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


async def authenticate(
    request: web.Request, role: auth.Role, *, allow_query: bool = False
) -> auth.Principal:
    token = auth.bearer_token(request, allow_query=allow_query)
    found = None
    if token is not None:
        async with services(request).db() as conn:
            found = await auth.principal(conn, token)
    return auth.require_role(found, role, had_token=token is not None)


def principal(request: web.Request) -> auth.Principal:
    return request[PRINCIPAL]


# --- request parsing: every failure is a 400 naming the parameter -----------------------


def _present(request: web.Request, name: str) -> str | None:
    """The parameter's value; an empty one is refused rather than read as absent, so
    that `?to=` cannot silently widen a query."""
    text = request.query.get(name)
    if text is None:
        return None
    if text == "":
        raise Problem(400, f"query parameter {name!r} is empty; leave it out instead")
    if "\x00" in text:
        raise Problem(400, f"query parameter {name!r} contains a NUL character")
    return text


def query_text(request: web.Request, name: str, default: str | None = None) -> str | None:
    text = _present(request, name)
    return default if text is None else text


def query_time(request: web.Request, name: str) -> datetime | None:
    """RFC 3339 (no offset means UTC) or epoch milliseconds."""
    text = _present(request, name)
    if text is None:
        return None
    try:
        if text.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        value = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise Problem(
            400,
            f"query parameter {name!r}: expected RFC 3339 (2026-11-27T09:00:00Z) or epoch "
            f"milliseconds, got {text!r}",
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def query_period(request: web.Request) -> tuple[datetime | None, datetime | None]:
    """`from` and `to` (see query_time), each optional, `from` before `to` when both are
    given."""
    start, end = query_time(request, "from"), query_time(request, "to")
    if start is not None and end is not None and start >= end:
        raise Problem(400, f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})")
    return start, end


def query_int(
    request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    text = _present(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Problem(
            400, f"query parameter {name!r}: expected a whole number, got {text!r}"
        ) from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise Problem(
            400, f"query parameter {name!r}: must be at least {minimum}{upper}, got {value}"
        )
    return value


def query_float(request: web.Request, name: str, *, required: bool = False) -> float | None:
    text = _present(request, name)
    if text is None:
        if required:
            raise Problem(400, f"query parameter {name!r} is required")
        return None
    try:
        value = float(text)
    except ValueError:
        raise Problem(400, f"query parameter {name!r}: expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise Problem(400, f"query parameter {name!r}: expected a finite number, got {text!r}")
    return value


def query_choice(
    request: web.Request, name: str, choices: Sequence[str], default: str | None = None
) -> str | None:
    text = _present(request, name)
    if text is None:
        return default
    if text not in choices:
        raise Problem(
            400, f"query parameter {name!r}: expected one of {', '.join(choices)}, got {text!r}"
        )
    return text


async def body(request: web.Request, kind: type[T]) -> T:
    """The JSON body decoded into `kind`; a 400 for malformed JSON, 422 for a body that
    does not fit, naming the field."""
    raw = await request.read()
    if not raw:
        raise Problem(400, "a JSON body is required")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise Problem(422, f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Problem(400, "the body is nested too deeply") from None


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_json.encode(value), status=status, content_type="application/json", headers=headers
    )


def next_page_link(request: web.Request, cursor: str) -> str:
    """The Link header's value that names the next page: this request with `after`."""
    return f'<{request.rel_url.update_query(after=cursor)}>; rel="next"'


# --- the OpenAPI document -----------------------------------------------------------------

_ERROR_PHRASES = {
    400: "malformed request",
    401: "no token, or an unknown or revoked one",
    403: "the token's role does not allow this",
    404: "no such resource",
    409: "conflicts with the current state",
    413: "the body is too large",
    422: "the body does not fit the schema",
    429: "too many requests; retry after the Retry-After header",
    503: "a service FleetPulse needs is unavailable; retry shortly",
}


def openapi_document(
    apis: Sequence[Api], *, title: str, version: str, base_url: str
) -> dict[str, Any]:
    operations = [op for api in apis for op in api.operations]
    types = [ProblemDetails]
    for op in operations:
        types.extend(t for t in (op.body, op.response) if t is not None)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = {id(t): s for t, s in zip(types, schemas, strict=True)}
    problem = {"application/problem+json": {"schema": schema_of[id(ProblemDetails)]}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.operation_id,
            "tags": [op.tag],
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in op.params
            ],
        }
        if op.role is not None:
            entry["security"] = [{"bearer": []}]
            entry["description"] = f"Needs a token with the {op.role.label} role or higher."
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[id(op.body)]}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if op.content is not None:
            ok["content"] = op.content
        elif op.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of[id(op.response)]}}
        responses: dict[str, Any] = {str(op.status): ok}
        errors = set(op.errors)
        if op.params or op.body is not None:
            errors.add(400)
        if op.body is not None:
            errors.add(422)
        if op.role is not None:
            errors.update((401, 403))
        for code in sorted(errors):
            responses[str(code)] = {"description": _ERROR_PHRASES[code], "content": problem}
        entry["responses"] = responses
        paths.setdefault(op.openapi_path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "servers": [{"url": base_url}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "created with `fleetpulse tokens create`",
                }
            },
        },
    }
