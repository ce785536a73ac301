"""The dispatch page in Debian's headless Chromium against a running FleetPulse fed over
MQTT: the page loads with the token from its link, markers move as fixes arrive, an
alert appears when a van enters a fence and greys out once acknowledged, a click on a
device opens its panel with its trail; after the web app was away, the page resumes
from the last event it saw. A screenshot is kept as a test artifact
(FLEETPULSE_ARTIFACTS, default artifacts/ at the repository root)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from bench.geofence import porto
from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import (
    eventually,
    make_token,
    running_ingester,
    running_tracker,
    running_web,
    with_options,
)
from tests.e2e.browser import (
    WebDriver,
    artifacts_dir,
    browser_fixture,
    console,
    needs_chromium,
    page_shows,
)
from tests.publisher import publish
from tracker import store
from tracker.events import EventKind

# A square fence of ~220 m around Avenida dos Aliados, Porto.
CENTRE = (41.1486, -8.6110)
HALF = 0.001
FENCE = {
    "type": "Feature",
    "geometry": {
        "type": "Polygon",
        "coordinates": [
            [
                [CENTRE[1] - HALF, CENTRE[0] - HALF],
                [CENTRE[1] + HALF, CENTRE[0] - HALF],
                [CENTRE[1] + HALF, CENTRE[0] + HALF],
                [CENTRE[1] - HALF, CENTRE[0] + HALF],
                [CENTRE[1] - HALF, CENTRE[0] - HALF],
            ]
        ],
    },
    "properties": {"id": "aliados", "name": "Aliados depot"},
}
# A circle and a corridor away from the route: drawn, never entered. Their bounds once
# broke the page before it had a view.
OTHER_FENCES: list[dict[str, Any]] = [
    {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [CENTRE[1] + 0.02, CENTRE[0] + 0.02]},
        "properties": {"id": "yard", "name": "Yard", "radius_m": 80},
    },
    {
        "type": "Feature",
        "geometry": {
            "type": "LineString",
            "coordinates": [
                [CENTRE[1] - 0.02, CENTRE[0] + 0.02],
                [CENTRE[1] - 0.01, CENTRE[0] + 0.02],
            ],
        },
        "properties": {"id": "lane", "name": "Bus lane", "width_m": 20},
    },
]
# The van drives north towards the fence: two fixes south of it, then one inside.
VAN_TRACK = [(CENTRE[0] - 0.004, CENTRE[1]), (CENTRE[0] - 0.0025, CENTRE[1]), CENTRE]
DRONE = (CENTRE[0] + 0.003, CENTRE[1] + 0.003)
PHONE = (CENTRE[0] - 0.001, CENTRE[1] - 0.004)

pytestmark = needs_chromium
browser = browser_fixture(1400, 900)


def fix(device: str, ts: int, lat: float, lon: float, **extra: Any) -> tuple[str, dict[str, Any]]:
    return f"fleet/{device}/telemetry", {"ts": ts, "lat": lat, "lon": lon, **extra}


def device_at(device: str, lat: float, lon: float) -> str:
    return (
        f"const d = window.fleetpulse && window.fleetpulse.device({device!r});"
        f" return d && Math.abs(d.lat - {lat}) < 1e-7 && Math.abs(d.lon - {lon}) < 1e-7"
        " && [d.lat, d.lon, d.status, d.kind];"
    )


def click_device(driver: WebDriver, device: str) -> None:
    point = driver.execute_script(f"return window.fleetpulse.screenPoint({device!r})")
    map_element = driver.find_element(By.ID, "map")
    box = map_element.rect
    # Selenium offsets are from the element's centre
    ActionChains(driver).move_to_element_with_offset(
        map_element,
        round(point["x"] - box["x"] - box["width"] / 2),
        round(point["y"] - box["y"] - box["height"] / 2),
    ).click().perform()


async def prepare(settings: Settings, *, roads: bool) -> tuple[Settings, str, int]:
    """Settings without the reorder wait (events at once), the fence stored, a
    dispatcher's token, and a start time a minute ago for the fixes."""
    extract = porto.data_dir() / "porto/porto_2022-11.osm.pbf"
    settings = with_options(
        settings,
        reorder_window="0",
        # roads under the fleet in the screenshot when the shared data is there
        osm_pbf=str(extract) if roads and extract.is_file() else "",
    )
    conn = await connect(settings.database_url)
    try:
        await store.save_fences(
            conn,
            [
                ("aliados", "Aliados depot", FENCE),
                *((f["properties"]["id"], f["properties"]["name"], f) for f in OTHER_FENCES),
            ],
        )
    finally:
        await conn.close()
    token = await make_token(settings, "dispatcher", name="dispatch page test")
    return settings, token, int(time.time() * 1000) - 60_000


async def open_page(driver: WebDriver, base: str, token: str) -> None:
    view = f"{CENTRE[0] - 0.001},{CENTRE[1]},16"
    await asyncio.to_thread(driver.get, f"{base}/dispatch#token={token}&view={view}")
    await page_shows(
        driver,
        "return window.fleetpulse && window.fleetpulse.ready"
        " && window.fleetpulse.stream.state === 'live'",
        "a live stream",
    )


def alert_of_kind(kind: str) -> str:
    return (
        f"const all = document.querySelectorAll('#alerts li.alert[data-kind=\"{kind}\"]');"
        " return all.length && {id: all[0].dataset.eventId, text: all[0].innerText,"
        " count: all.length, first: all[0] === document.querySelector('#alerts li.alert')};"
    )


async def stored_event_ids(url: str, kind: str) -> list[str]:
    conn = await connect(url, autocommit=False)
    try:
        return [event.id async for event in store.events(conn, kind=EventKind(kind))]
    finally:
        await conn.close()


async def test_dispatch_page_follows_the_fleet_live(settings: Settings, browser: WebDriver) -> None:
    settings, token, t0 = await prepare(settings, roads=True)
    async with (
        running_ingester(settings),
        running_tracker(settings),
        running_web(settings) as base,
    ):
        await publish(
            settings.mqtt_url,
            [
                fix("van-1", t0, *VAN_TRACK[0], speed=9.0, kind="vehicle"),
                fix("drone-7", t0, *DRONE, alt=120.0, rel_alt=60.0, battery=81.0, kind="drone"),
                fix("phone-3", t0, *PHONE, speed=0.0, kind="phone"),
            ],
        )

        # Without a token the page asks for one.
        await asyncio.to_thread(browser.get, f"{base}/dispatch")
        await page_shows(
            browser,
            "return !document.getElementById('token-form').hidden",
            "the token form",
        )

        # A wrong token is refused, and asked for again.
        await asyncio.to_thread(browser.get, f"{base}/dispatch#token=fpt_not-a-token")
        refused = await page_shows(
            browser,
            "const error = document.getElementById('token-error');"
            " return !document.getElementById('token-form').hidden && !error.hidden"
            " && error.textContent;",
            "the token refused",
        )
        assert "unknown or revoked" in refused
        assert browser.execute_script("return localStorage.getItem('fleetpulse.token')") is None

        # The dispatcher's link: the token is kept and taken out of the address bar.
        await open_page(browser, base, token)
        assert token not in browser.current_url
        assert browser.execute_script("return localStorage.getItem('fleetpulse.token')") == token
        assert await page_shows(
            browser,
            "return window.fleetpulse.fences && window.fleetpulse.fences.count",
            "fences",
        ) == 1 + len(OTHER_FENCES)
        expected_basemap = "roads" if settings.osm_pbf else "plain"
        assert browser.execute_script("return window.fleetpulse.basemap.mode") == expected_basemap
        if settings.osm_pbf:
            classes = await page_shows(
                browser,
                "const r = window.fleetpulse.basemap.roads;"
                " return r.layer && r.layer.getLayers().map(l => l.feature.properties.class);",
                "roads drawn",
            )
            assert {"primary", "residential"} <= set(classes)

        # The snapshot puts every device on the map, with its kind.
        await page_shows(browser, device_at("van-1", *VAN_TRACK[0]), "van-1 where it started")
        drone = await page_shows(browser, device_at("drone-7", *DRONE), "the drone")
        assert drone[3] == "drone"
        phone = await page_shows(browser, device_at("phone-3", *PHONE), "the phone")
        assert phone[3] == "phone"
        draws = browser.execute_script("return window.fleetpulse.layer.stats.draws")

        # A fix arrives over MQTT: the van moves on the map.
        await publish(settings.mqtt_url, [fix("van-1", t0 + 10_000, *VAN_TRACK[1], speed=9.0)])
        moved = await page_shows(browser, device_at("van-1", *VAN_TRACK[1]), "van-1 moved")
        assert moved[2] == "moving"
        assert browser.execute_script("return window.fleetpulse.layer.stats.draws") > draws

        # It drives into the fence: the alert appears at the top of the feed.
        await publish(settings.mqtt_url, [fix("van-1", t0 + 20_000, *VAN_TRACK[2], speed=9.0)])
        await page_shows(browser, device_at("van-1", *VAN_TRACK[2]), "van-1 inside the fence")
        alert = await page_shows(browser, alert_of_kind("enter"), "the geofence alert")
        assert "van-1" in alert["text"] and "Aliados depot" in alert["text"]
        assert alert["first"]
        assert browser.find_element(By.ID, "unacked").text == "1"

        # Acknowledged: greyed in the feed.
        button = browser.find_element(
            By.CSS_SELECTOR, f'#alerts li[data-event-id="{alert["id"]}"] button.ack'
        )
        await asyncio.to_thread(button.click)
        acked = await page_shows(
            browser,
            f"const li = document.querySelector('#alerts li[data-event-id=\"{alert['id']}\"]');"
            " return li && li.classList.contains('acked') && li.innerText;",
            "the alert acknowledged",
        )
        assert "acknowledged by dispatch page test" in acked
        assert browser.find_element(By.ID, "unacked").text == "0"
        opacity = browser.execute_script(
            "return getComputedStyle(document.querySelector('#alerts li.acked')).opacity"
        )
        assert float(opacity) < 1

        # A click on the van opens its panel, with its trail of the last hour.
        await asyncio.to_thread(click_device, browser, "van-1")
        await page_shows(
            browser,
            "return !document.getElementById('panel').hidden"
            " && document.getElementById('panel-title').textContent === 'van-1'",
            "the device panel",
        )
        trail = await page_shows(
            browser,
            "const p = window.fleetpulse.panel;"
            " return p.trailState !== 'loading' && [p.trailState, p.trailCount];",
            "the trail loaded",
        )
        assert trail == ["loaded", 3], trail
        assert "moving" in browser.find_element(By.ID, "panel-fields").text

        # Zoomed out, the fleet is clustered; nothing went wrong in the page meanwhile.
        browser.execute_script("window.fleetpulse.map.setZoom(12)")
        await page_shows(
            browser,
            "const m = window.fleetpulse.map; return m.getZoom() === 12 && !m._animatingZoom"
            " && window.fleetpulse.layer.stats.clusters >= 1;",
            "a cluster",
        )
        browser.execute_script("window.fleetpulse.map.setZoom(16)")
        await page_shows(
            browser, "return window.fleetpulse.map.getZoom() === 16", "the street view again"
        )
        errors = [e["message"] for e in console(browser) if "Uncaught" in e["message"]]
        assert not errors, errors

        shot = artifacts_dir() / "dispatch_page.png"
        assert await asyncio.to_thread(browser.save_screenshot, str(shot))
        assert shot.stat().st_size > 10_000


async def test_dispatch_page_catches_up_after_the_server_comes_back(
    settings: Settings, browser: WebDriver
) -> None:
    """The web app goes away while the van leaves the fence: the page retries, comes
    back with the last event id it saw, and shows what it missed, once."""
    settings, token, t0 = await prepare(settings, roads=False)
    async with running_ingester(settings), running_tracker(settings):
        await publish(settings.mqtt_url, [fix("van-1", t0, *VAN_TRACK[1])])
        async with running_web(settings) as base:
            await open_page(browser, base, token)
            await page_shows(browser, device_at("van-1", *VAN_TRACK[1]), "van-1")
            await publish(settings.mqtt_url, [fix("van-1", t0 + 10_000, *CENTRE)])
            entered = await page_shows(browser, alert_of_kind("enter"), "the enter alert")

        await page_shows(
            browser, "return window.fleetpulse.stream.state !== 'live'", "the stream lost"
        )
        await publish(settings.mqtt_url, [fix("van-1", t0 + 20_000, *VAN_TRACK[0])])
        exit_events = await eventually(lambda: stored_event_ids(settings.database_url, "exit"))

        async with running_web(settings):
            left = await page_shows(browser, alert_of_kind("exit"), "the missed exit alert")
            assert left["id"] == exit_events[0] and left["count"] == 1 and left["first"]
            again = await page_shows(browser, alert_of_kind("enter"), "the enter alert")
            assert again == {**entered, "first": False}  # still there, still once
            stream = browser.execute_script("return window.fleetpulse.stream.stats")
            assert stream["connects"] == 2
            assert (
                browser.execute_script("return window.fleetpulse.stream.lastEventId")
                == (exit_events[0])
            )
            await page_shows(
                browser, device_at("van-1", *VAN_TRACK[0]), "van-1 where it went meanwhile"
            )
