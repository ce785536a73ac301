"""The customer's tracking page in Debian's headless Chromium, phone-sized, against a
served app with real PostgreSQL and Redis: it loads for a real delivery, shows its ETA
and only the coarse area while the van is far, then follows a new ETA and the van's
moves as the tracker would publish them. Screenshots are kept as test artifacts
(FLEETPULSE_ARTIFACTS, default artifacts/ at the repository root)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from fleetpulse.settings import Settings
from tests.conftest import running_web
from tests.e2e.browser import (
    WebDriver,
    artifacts_dir,
    browser_fixture,
    console,
    needs_chromium,
    page_shows,
)
from tests.integration.web.tracking_setup import (
    FAR,
    NEAR,
    give_eta,
    move,
    new_delivery,
    vehicle_state,
)

pytestmark = needs_chromium
browser = browser_fixture(412, 915)  # a phone


def shown_eta(driver: WebDriver) -> str:
    return str(driver.execute_script("return document.getElementById('eta').dataset.p50"))


async def test_the_page_follows_a_delivery_live(settings: Settings, browser: WebDriver) -> None:
    token = await new_delivery(settings, "p-17", "van-17", sequence=3)
    await new_delivery(settings, "p-15", "van-17", sequence=1)
    await new_delivery(settings, "p-16", "van-17", sequence=2)
    t0 = datetime.now(UTC)
    await move(settings, vehicle_state("van-17", FAR, t0))
    first = await give_eta(settings, "p-17", 45)
    async with running_web(settings) as base:
        await asyncio.to_thread(browser.get, f"{base}/track/{token}")
        shown = await page_shows(
            browser,
            "const e = document.getElementById('eta');"
            " return e.dataset.p50 && e.textContent.includes(':') && e.dataset.p50;",
            "the ETA",
        )
        assert datetime.fromisoformat(shown) == first.p50
        # Far away: the coarse area on the map, not the van.
        await page_shows(
            browser,
            "return document.getElementById('app').dataset.revealed === 'no'"
            " && !document.getElementById('map-card').hidden"
            " && document.getElementById('map-note').textContent.includes('shaded area');",
            "the coarse area",
        )
        assert "2 stops before yours" in browser.find_element("id", "stops").text
        assert "p-15" not in browser.page_source and "van-17" not in browser.page_source
        await page_shows(
            browser,
            "return document.getElementById('connection').dataset.live === 'yes';",
            "a live connection",
        )
        browser.save_screenshot(str(artifacts_dir() / "track-page-far.png"))

        # A new ETA, close enough to reveal the van, then the van moving closer.
        later = await give_eta(settings, "p-17", 6, at=NEAR)
        await page_shows(
            browser,
            f"return document.getElementById('eta').dataset.p50 !== {shown!r};",
            "the new ETA",
        )
        assert datetime.fromisoformat(shown_eta(browser)) == later.p50
        await page_shows(
            browser, "return document.getElementById('app').dataset.revealed === 'yes';", "the van"
        )
        await move(settings, vehicle_state("van-17", NEAR, t0 + timedelta(seconds=30)))
        await page_shows(
            browser,
            "return document.getElementById('map-note').textContent.includes('Your driver, seen');",
            "the van's position",
        )
        range_text = browser.find_element("id", "eta-range").text
        assert range_text.startswith("Expected between")
        assert browser.find_element("id", "headline").text == "Your parcel is scheduled"
        # The map is drawn: the canvas holds more than its background colour.
        colours = browser.execute_script(
            "const c = document.getElementById('map');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " const seen = new Set(); for (let i = 0; i < d.length; i += 64)"
            " seen.add(d[i] + ',' + d[i+1] + ',' + d[i+2]); return seen.size;"
        )
        assert colours > 5
        path = artifacts_dir() / "track-page.png"
        browser.save_screenshot(str(path))
        assert path.stat().st_size > 0
        errors = [e for e in console(browser) if e.get("level") == "SEVERE"]
        assert errors == [], errors


async def test_an_unknown_link_says_so(settings: Settings, browser: WebDriver) -> None:
    async with running_web(settings) as base:
        await asyncio.to_thread(browser.get, f"{base}/track/no-such-token")
        await page_shows(
            browser,
            "return !document.getElementById('gone').hidden"
            " && document.getElementById('app').dataset.state === 'gone';",
            "the dead-link notice",
        )
        browser.save_screenshot(str(artifacts_dir() / "track-page-gone.png"))
