"""The pages people open in a browser, and their static files, served from the installed
package: no CDN and no build step, so a pip install on a laptop without internet serves
them as they are.

Pages refer to their scripts and styles with `?v=<version of the static files>`: a
versioned URL is cached for a year, an unversioned one is revalidated each time, so a
new release is picked up at once without anyone clearing a cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from web.problems import Problem
from web.services import SERVICES

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
VERSION_PLACEHOLDER = "{{static_version}}"
PAGES = {"/dispatch": "dispatch.html"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Pages render only text nodes from the data; a policy still keeps a stray injection
# from running script or sending the stored token elsewhere.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: {tiles};"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

# Stated rather than guessed from the system's tables: a module script served as
# anything but JavaScript is refused by the browser.
_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

STATIC_VERSION = web.AppKey("static_version", str)


def setup(app: web.Application) -> None:
    app[STATIC_VERSION] = static_version(STATIC_DIR)
    app.router.add_get("/", _home)
    for path in PAGES:
        app.router.add_get(path, _page)
    app.router.add_get(STATIC_PREFIX + "{path:.+}", _static)


def static_version(root: Path) -> str:
    """Changes whenever a static file does: a digest of every file's path, size and time."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dispatch")


async def _page(request: web.Request) -> web.Response:
    html = (STATIC_DIR / PAGES[request.path]).read_text(encoding="utf-8")
    html = html.replace(VERSION_PLACEHOLDER, request.app[STATIC_VERSION])
    # Pages need nothing else of the services: the benchmark serves them alone.
    svc = request.app.get(SERVICES)
    tiles = svc.settings.basemap_url if svc is not None else ""
    return web.Response(
        text=html,
        content_type="text/html",
        headers={
            "Cache-Control": REVALIDATE,
            "Content-Security-Policy": _CSP.format(tiles=_tile_source(tiles)),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _tile_source(template: str) -> str:
    """The CSP source that lets the page load the configured tiles: the template's
    origin, with a `{s}` subdomain placeholder widened to a wildcard."""
    if not template:
        return ""
    parts = urlsplit(template.replace("{s}", "*"))
    return f"{parts.scheme}://{parts.netloc}"


async def _static(request: web.Request) -> web.FileResponse:
    relative = request.match_info["path"]
    root = STATIC_DIR.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise Problem(404, f"no such static file: {relative}")
    versioned = request.query.get("v") == request.app[STATIC_VERSION]
    headers = {
        "Cache-Control": IMMUTABLE if versioned else REVALIDATE,
        "X-Content-Type-Options": "nosniff",
    }
    content_type = _CONTENT_TYPES.get(path.suffix)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)
