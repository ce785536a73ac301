"""The API's own description."""

from __future__ import annotations

from aiohttp import web

from web.api import OPENAPI, Api, json_response

api = Api()


@api.get(
    "/api/openapi.json",
    summary="This OpenAPI document",
    role=None,
    tag="meta",
    content={"application/json": {"schema": {"type": "object"}}},
)
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])
