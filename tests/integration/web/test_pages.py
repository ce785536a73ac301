"""Pages and their static files, served from the package: versioned URLs cached for
good, everything else revalidated, nothing outside the static folder reachable."""

from __future__ import annotations

import re

from fleetpulse.settings import Settings
from tests.conftest import web_client
from web.pages import STATIC_DIR


async def test_home_redirects_to_the_dispatch_page(settings: Settings) -> None:
    async with web_client(settings) as http, http.get("/", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/dispatch"


async def test_dispatch_page_refers_to_versioned_files_that_are_cached_for_good(
    settings: Settings,
) -> None:
    async with web_client(settings) as http:
        async with http.get("/dispatch") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert resp.headers["Cache-Control"] == "no-cache"
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            html = await resp.text()
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert {a.split("?")[0] for a in assets} >= {
            "/static/dispatch.js",
            "/static/dispatch.css",
            "/static/vendor/leaflet-1.9.4/leaflet.js",
            "/static/vendor/leaflet-1.9.4/leaflet.css",
        }
        for asset in assets:
            assert re.search(r"\?v=[0-9a-f]{12}$", asset), asset
            async with http.get(asset) as resp:
                assert resp.status == 200, asset
                assert "immutable" in resp.headers["Cache-Control"]
                assert (await resp.read()) == (STATIC_DIR / asset[8:].split("?")[0]).read_bytes()
        async with http.get("/static/dispatch.js") as resp:  # unversioned: revalidated
            assert resp.headers["Cache-Control"] == "no-cache"
            assert resp.content_type == "text/javascript"
        async with http.get("/static/dispatch.js?v=stale") as resp:
            assert resp.headers["Cache-Control"] == "no-cache"


async def test_vendored_libraries_carry_their_licence(settings: Settings) -> None:
    async with (
        web_client(settings) as http,
        http.get("/static/vendor/leaflet-1.9.4/LICENSE") as resp,
    ):
        assert resp.status == 200
        assert "BSD 2-Clause" in await resp.text()


async def test_nothing_outside_the_static_folder_is_served(settings: Settings) -> None:
    async with web_client(settings) as http:
        for path in (
            "/static/../pages.py",
            "/static/%2e%2e/pages.py",
            "/static/vendor/../../app.py",
            "/static/nothing-here.js",
        ):
            async with http.get(path) as resp:
                assert resp.status == 404, path
                assert resp.content_type == "application/problem+json"
