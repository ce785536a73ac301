"""The browsable API documentation: one static page that renders /api/openapi.json."""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from web.api import Api

api = Api()


@cache
def _page() -> bytes:
    # Read from the installed package, so a pip install serves it as a checkout does.
    return resources.files("web").joinpath("static/docs.html").read_bytes()


@api.get(
    "/api/docs",
    summary="This API's documentation, a page that renders the OpenAPI document",
    role=None,
    tag="meta",
    content={"text/html": {"schema": {"type": "string"}}},
)
async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=_page(), content_type="text/html", charset="utf-8")
