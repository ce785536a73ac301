"""The API documentation page in Debian's headless Chromium, against a served app: it
renders every operation of the served OpenAPI document with its parameters, the
schemas, and its "Try it" form calls the API with the token typed in. A screenshot is
kept as a test artifact (FLEETPULSE_ARTIFACTS, default artifacts/)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from fleetpulse.settings import Settings
from tests.conftest import make_token, running_web
from tests.e2e.processes import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--window-size=1280,900",
)
PAGE_TIMEOUT_S = 30.0
POLL_S = 0.1

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})",
)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console(driver: WebDriver) -> list[dict[str, Any]]:
    try:
        return list(driver.get_log("browser"))
    except WebDriverException:
        return []


def _poll(driver: WebDriver, script: str, what: str) -> Any:
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = driver.execute_script(script)
        except JavascriptException as exc:
            last = f"script failed: {exc.msg}"
        else:
            if last:
                return last
        time.sleep(POLL_S)
    log = "\n".join(entry["message"] for entry in console(driver))
    raise AssertionError(f"the page never showed {what} (last: {last!r})\nconsole:\n{log}")


async def page_shows(driver: WebDriver, script: str, what: str) -> Any:
    """Selenium blocks: poll in a thread while this event loop serves the app."""
    return await asyncio.to_thread(_poll, driver, script, what)


async def test_the_docs_page_renders_the_served_document(
    settings: Settings, browser: WebDriver
) -> None:
    token = await make_token(settings, "viewer")
    async with running_web(settings) as base:
        async with ClientSession() as http, http.get(f"{base}/api/openapi.json") as resp:
            document = await resp.json()
        await asyncio.to_thread(browser.get, f"{base}/api/docs")
        await page_shows(
            browser, "return document.querySelectorAll('section.op').length > 0;", "operations"
        )
        operation_ids = [
            op["operationId"] for methods in document["paths"].values() for op in methods.values()
        ]
        missing = browser.execute_script(
            "return arguments[0].filter((id) => !document.getElementById(id));", operation_ids
        )
        assert missing == []
        devices = browser.find_element("id", "get_devices").text
        assert "/api/v1/devices" in devices
        for words in ("bbox", "south,west,north,east", "radius_m", "≤ 1000", "DevicePage"):
            assert words in devices, words
        history = browser.find_element("id", "get_devices_device_id_history").text
        assert "application/gpx+xml" in history and "text/csv" in history
        schema = browser.find_element("id", "schema-Device").text
        assert "live" in schema and "LiveState" in schema and "required" in schema

        # Try it: the page sends the typed token and shows the answer.
        browser.find_element("id", "token").send_keys(token)
        section = browser.find_element("id", "get_devices")
        section.find_element("css selector", ".try button").click()
        answer = await page_shows(
            browser,
            "const p = document.querySelector('#get_devices .try pre');"
            " return p && p.textContent.startsWith('200') && p.textContent;",
            "the API's answer",
        )
        assert '"items"' in answer and "application/json" in answer

        path = artifacts_dir() / "api-docs-page.png"
        browser.save_screenshot(str(path))
        assert path.stat().st_size > 0
        errors = [e for e in console(browser) if e.get("level") == "SEVERE"]
        assert errors == [], errors


def artifacts_dir() -> Path:
    path = Path(os.environ.get("FLEETPULSE_ARTIFACTS") or ROOT / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
