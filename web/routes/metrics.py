"""`/metrics` in Prometheus's text exposition format (see web.metrics)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from web.api import Api
from web.metrics import METRICS
from web.services import services

api = Api()


@api.get(
    "/metrics",
    summary="Prometheus metrics: ingest, tracker, hand-off, websockets, webhooks, HTTP",
    role=None,
    tag="operations",
    content={CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
)
async def metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS].exposition(services(request))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
