"""Debian's headless Chromium under Selenium for the page tests: the `needs_chromium` skip
mark, a `browser_fixture` of a given window size, the page's console log, polling a
script until the page shows what a test waits for, and the folder screenshots are kept
in (FLEETPULSE_ARTIFACTS, default artifacts/ at the repository root)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, WebDriverException
from selenium.webdriver.chrome.service import Service

from tests.e2e.processes import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
PAGE_TIMEOUT_S = 30.0
POLL_S = 0.1

WebDriver = webdriver.Chrome

needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})",
)


def artifacts_dir() -> Path:
    path = Path(os.environ.get("FLEETPULSE_ARTIFACTS") or ROOT / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def browser_fixture(width: int, height: int) -> Callable[[], Iterator[WebDriver]]:
    """A `browser` fixture: a fresh Chromium with a window of `width` x `height` pixels
    for each test, its console log kept at every level."""

    @pytest.fixture
    def browser() -> Iterator[WebDriver]:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*BROWSER_FLAGS, f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()

    return browser


def console(driver: WebDriver) -> list[dict[str, Any]]:
    """The console entries logged since the last call (Chromium hands each out once)."""
    try:
        return list(driver.get_log("browser"))  # type: ignore[no-untyped-call]
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
    raise AssertionError(
        f"the page never showed {what} in {PAGE_TIMEOUT_S} s (last: {last!r})\n"
        f"browser console:\n{log}"
    )


async def page_shows(driver: WebDriver, script: str, what: str) -> Any:
    """Run `script` in the page until it returns something truthy. Selenium blocks, so
    it runs in a thread while this event loop goes on serving the app (and whatever
    stages the test runs)."""
    return await asyncio.to_thread(_poll, driver, script, what)
