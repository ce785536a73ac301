"""The dispatch page's fleet layer with 10,000 devices in Debian's headless Chromium.

The page's benchmark mode (/dispatch?bench=N) makes N synthetic devices fill the screen
and moves every one of them every second, through the same path as the websocket's
messages (JSON text parsed, applied to the store, drawn on the canvas). Three phases:
every device drawn on its own (zoom 15), clustered (zoom 12), and panning, where the
layer redraws on every frame. Reported per phase: the time to draw the layer, the time
to apply a second's update of every device, and the interval between animation frames
(16.7 ms is 60 frames/s). Headless Chromium with --disable-gpu draws in software: a
desktop browser with a GPU is faster, so these are upper bounds.

    .venv/bin/python -m bench.dispatch_page [--devices 10000] [--seconds 5]

Prints a table, then one JSON line. Only the page's static files are served (by the web
app's own page module); no database, broker or Redis is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from fleetpulse.local_servers import free_port
from web import pages

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--window-size=1400,900",
)
POLL_S = 0.5


@contextmanager
def serving_pages() -> Iterator[str]:
    """The page module alone, on a free port, in a thread of its own."""
    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    pages.setup(app)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name="bench-pages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def run_in_browser(url: str, timeout_s: float) -> dict[str, Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = driver.execute_script(
                "return window.fleetpulse && window.fleetpulse.bench || null"
            )
            if result and result.get("done"):
                version = driver.capabilities.get("browserVersion", "?")
                return {**result, "browser": f"chromium {version}"}
            time.sleep(POLL_S)
        raise TimeoutError(f"the page's benchmark did not finish in {timeout_s} s")
    finally:
        driver.quit()


def table(result: dict[str, Any]) -> str:
    head = (
        f"{'phase':<40} {'drawn':>6} {'draw ms p50':>11} {'p95':>6} {'max':>6}"
        f" {'update ms p50':>13} {'max':>6} {'frame ms p50':>12} {'p95':>6}"
    )
    rows = [head]
    for p in result["phases"]:
        d, a, f = p["draw_ms"], p["apply_ms"], p["frame_interval_ms"]
        rows.append(
            f"{p['name']:<40} {p['drawn']:>6} {d['median']:>11} {d['p95']:>6} {d['max']:>6}"
            f" {a['median']:>13} {a['max']:>6} {f['median']:>12} {f['p95']:>6}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dispatch_page", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5, help="per phase")
    args = parser.parse_args(argv)
    with serving_pages() as base:
        url = f"{base}/dispatch?bench={args.devices}&seconds={args.seconds}"
        result = run_in_browser(url, timeout_s=60 + 3 * args.seconds * 4)
    print(f"{args.devices} devices, every one moving every second; viewport {result['viewport']}")
    print(table(result))
    machine = {"machine": platform.machine(), "cpus": os.cpu_count()}
    print(json.dumps({"bench": "dispatch_page", **result, **machine}))
    return 0
