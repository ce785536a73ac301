"""The web app: REST API, websockets and pages on one port. Several workers may serve
the same port (SO_REUSEPORT); they share nothing but PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from fleetpulse.settings import Settings
from web.api import OPENAPI, Api, openapi_document
from web.metrics import observe_requests
from web.problems import problems_middleware
from web.services import SERVICES, Services, open_services

log = logging.getLogger("fleetpulse.web")

# Modules of REST routes; each has `api`. Order is the order of the OpenAPI document's tags.
ROUTE_MODULES = (
    "web.routes.meta",
    "web.routes.docs",
    "web.routes.devices",
    "web.routes.history",
    "web.routes.events",
    "web.routes.alerts",
    "web.routes.fences",
    "web.routes.basemap",
    "web.routes.deliveries",
    "web.routes.tracking",
    "web.routes.tokens",
    "web.routes.audit",
    "web.routes.webhooks",
    "web.routes.health",
    "web.routes.metrics",
)
# Modules that add websockets, pages or background work: each has `setup(app)`.
SETUP_MODULES: tuple[str, ...] = (
    "web.webhooks",
    "web.metrics",
    "web.rate_limit",
    "web.ws_track",
    "web.ws_dispatch",
    "web.pages",
)

MAX_BODY_BYTES = 4 * 1024 * 1024


def package_version() -> str:
    try:
        return version("fleetpulse")
    except PackageNotFoundError:
        return "0+unknown"


def route_apis() -> list[Api]:
    return [import_module(name).api for name in ROUTE_MODULES]


def build_app(services: Services) -> web.Application:
    app = web.Application(
        # observe_requests first: it times and counts what problems_middleware answers.
        middlewares=[observe_requests, problems_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SERVICES] = services
    apis = route_apis()
    for api in apis:
        app.router.add_routes(api.routes)
    app[OPENAPI] = openapi_document(
        apis,
        title="FleetPulse",
        version=package_version(),
        base_url=services.settings.web_base_url,
    )
    for name in SETUP_MODULES:
        setup: Callable[[web.Application], None] = import_module(name).setup
        setup(app)
    return app


async def serve(
    settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Serve until `stop` is set, then close websockets and finish requests in flight."""
    async with open_services(settings) as services:
        runner = web.AppRunner(
            build_app(services), access_log=None, handle_signals=False, shutdown_timeout=5
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.web_host, settings.web_port, reuse_port=True)
            await site.start()
            log.info("web app listening on %s", settings.web_base_url)
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
