"""The API documentation page in Debian's headless Chromium, against a served app: it
renders every operation of the served OpenAPI document with its parameters, the
schemas, and its "Try it" form calls the API with the token typed in. A screenshot is
kept as a test artifact (FLEETPULSE_ARTIFACTS, default artifacts/)."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession

from fleetpulse.settings import Settings
from tests.conftest import make_token, running_web
from tests.e2e.browser import (
    WebDriver,
    artifacts_dir,
    browser_fixture,
    console,
    needs_chromium,
    page_shows,
)

pytestmark = needs_chromium
browser = browser_fixture(1280, 900)


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
