"""Bearer tokens over REST, for admins: what `fleetpulse tokens` does. A token is shown
once, when it is made; lists carry no secrets, only the public id."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

import msgspec
from aiohttp import web

from web import auth
from web.api import Api, body, json_response, principal
from web.problems import Problem
from web.services import services

api = Api()

TAG = "tokens"
RoleName = Literal["viewer", "dispatcher", "admin"]


class TokenView(msgspec.Struct):
    id: str
    name: str
    role: RoleName
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=200, pattern=r"^[^\x00]*$", description="whose token it is"
        ),
    ]
    role: RoleName


class TokenCreated(msgspec.Struct):
    id: str
    name: str
    role: RoleName
    token: Annotated[str, msgspec.Meta(description="the bearer token: shown this once")]


@api.get(
    "/api/v1/tokens",
    summary="Every token, revoked ones included (no secrets)",
    role=auth.Role.ADMIN,
    tag=TAG,
    response=list[TokenView],
)
async def list_tokens(request: web.Request) -> web.Response:
    async with services(request).db() as conn:
        tokens = await auth.list_tokens(conn)
    return json_response([_view(t) for t in tokens])


@api.post(
    "/api/v1/tokens",
    summary="A new token; answered this once",
    role=auth.Role.ADMIN,
    tag=TAG,
    body=TokenRequest,
    response=TokenCreated,
    status=201,
)
async def create_token(request: web.Request) -> web.Response:
    wanted = await body(request, TokenRequest)
    role = auth.Role.parse(wanted.role)
    async with services(request).db() as conn:
        try:
            token_id, token = await auth.create_token(
                conn, wanted.name, role, actor=principal(request).token_id
            )
        except ValueError as exc:  # a blank name
            raise Problem(422, f"name: {exc}") from None
    return json_response(TokenCreated(token_id, wanted.name.strip(), wanted.role, token), 201)


@api.delete(
    "/api/v1/tokens/{token_id}",
    summary="Revoke a token at once",
    role=auth.Role.ADMIN,
    tag=TAG,
    status=204,
    errors=[404, 409],
)
async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    if "\x00" in token_id:  # PostgreSQL text cannot hold it, so no token has it
        raise Problem(404, f"no token {token_id!r}")
    async with services(request).db() as conn:
        if await auth.revoke_token(conn, token_id, actor=principal(request).token_id):
            return web.Response(status=204)
        known = {t.id: t.revoked_at for t in await auth.list_tokens(conn)}
    revoked = known.get(token_id)
    if revoked is not None:
        raise Problem(409, f"token {token_id!r} was revoked already, at {revoked.isoformat()}")
    raise Problem(404, f"no token {token_id!r}")


def _view(token: auth.TokenInfo) -> TokenView:
    role = cast(RoleName, token.role.label)
    return TokenView(
        token.id, token.name, role, token.created_at, token.revoked_at, token.last_used_at
    )
