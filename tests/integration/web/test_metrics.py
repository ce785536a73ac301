"""`/metrics` scraped from a running app while real fixes go through a running ingester
and tracker; parsed with Prometheus's own parser."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from fleetpulse import process_stats
from fleetpulse.local_servers import Redis
from fleetpulse.settings import Settings
from ingest.ingester import Ingester
from tests.conftest import eventually, running_ingester, running_tracker, web_client
from tests.publisher import publish
from tracker.handoff import partition_of
from tracker.service import Tracker
from web import fleet_state

PUBLISH_EVERY_S = 0.1
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def fresh_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scrape reads the sources again, so a test sees a change without waiting out
    the production cache."""
    monkeypatch.setattr(fleet_state, "CACHE_S", 0.0)


async def scrape(http: ClientSession) -> Samples:
    async with http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@asynccontextmanager
async def publishing(
    settings: Settings, snapshots: dict[str, Callable[[], dict[str, int]]]
) -> AsyncIterator[str]:
    """The stats publisher `fleetpulse run` starts, for stages running in this test;
    yields the process label the metrics carry."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        process_stats.publish_forever(settings.redis_url, snapshots, stop, PUBLISH_EVERY_S)
    )
    try:
        yield process_stats.process_name()
    finally:
        stop.set()
        await task


def ingest_snapshot(ingester: Ingester) -> Callable[[], dict[str, int]]:
    return lambda: dict(ingester.stats.counts)


def tracker_snapshot(tracker: Tracker) -> Callable[[], dict[str, int]]:
    return tracker.totals


async def test_scrape_parses_and_names_its_sources(settings: Settings) -> None:
    async with web_client(settings) as http:
        samples = await scrape(http)
    assert value(samples, "fleetpulse_source_up", source="postgresql") == 1
    assert value(samples, "fleetpulse_source_up", source="redis") == 1
    assert value(samples, "fleetpulse_handoff_stream_entries", partition="0") == 0
    assert value(samples, "fleetpulse_stage_processes", stage="ingest") == 0
    assert value(samples, "fleetpulse_live_devices") == 0
    # The components of this web worker are found on the app and read.
    assert value(samples, "fleetpulse_webhooks_delivered_total") == 0
    assert value(samples, "fleetpulse_ws_track_clients") == 0
    assert value(samples, "fleetpulse_webhook_outbox", status="pending") == 0


async def test_ingest_counters_rise_as_real_fixes_are_committed(settings: Settings) -> None:
    now_ms = int(time.time() * 1000)
    fixes = [
        (f"fleet/van-{i % 3}/telemetry", {"ts": now_ms - i * 1000, "lat": 41.15, "lon": -8.61})
        for i in range(30)
    ]
    async with (
        running_ingester(settings) as ingester,
        publishing(settings, {"ingest": ingest_snapshot(ingester)}) as process,
        web_client(settings) as http,
    ):
        before = await scrape(http)
        assert total(before, "fleetpulse_ingest_fixes_committed_total") == 0
        await publish(settings.mqtt_url, [*fixes, ("fleet/van-0/telemetry", b"{not json")])

        async def committed() -> Samples | None:
            samples = await scrape(http)
            done = value(samples, "fleetpulse_ingest_fixes_committed_total", process=process)
            rejected = value(
                samples, "fleetpulse_ingest_rejects_total", process=process, reason="invalid_json"
            )
            return samples if done == 30 and rejected == 1 else None

        after = await eventually(committed)
    assert value(after, "fleetpulse_ingest_messages_total", process=process) == 31
    assert value(after, "fleetpulse_stage_processes", stage="ingest") == 1
    assert value(after, "fleetpulse_quarantine_last_hour", reason="invalid_json") == 1
    assert total(after, "fleetpulse_handoff_stream_entries") >= 1


async def test_tracker_progress_and_events_are_shown(settings: Settings) -> None:
    now_ms = int(time.time() * 1000)
    device = "van-7"
    async with running_ingester(settings) as ingester, running_tracker(settings) as tracker:
        snapshots = {"ingest": ingest_snapshot(ingester), "tracker": tracker_snapshot(tracker)}
        async with publishing(settings, snapshots) as process, web_client(settings) as http:
            await publish(
                settings.mqtt_url,
                [
                    (f"fleet/{device}/telemetry", {"ts": now_ms, "lat": 41.15, "lon": -8.61}),
                    (f"fleet/{device}/status", b"offline"),
                ],
            )

            async def tracked() -> Samples | None:
                samples = await scrape(http)
                shown = value(samples, "fleetpulse_events_last_hour", kind="offline")
                counted = value(samples, "fleetpulse_tracker_events_total", process=process)
                return samples if shown == 1 and counted == 1 else None

            samples = await eventually(tracked)
            assert value(samples, "fleetpulse_tracker_devices", process=process) == 1
            assert value(samples, "fleetpulse_live_devices") == 1
    # Stopping checkpoints every partition the tracker owns; the device's is caught up.
    async with web_client(settings) as http:
        samples = await scrape(http)
    partition = str(partition_of(device, settings.partitions))
    assert value(samples, "fleetpulse_tracker_lag_seconds", partition=partition) == 0
    age = value(samples, "fleetpulse_tracker_checkpoint_age_seconds", partition=partition)
    assert age is not None and age >= 0


async def test_http_requests_are_counted_by_route_and_status(settings: Settings) -> None:
    async with web_client(settings) as http:
        async with http.get("/api/openapi.json") as resp:
            assert resp.status == 200
        async with http.get("/api/v1/no-such-thing?access_token=secret") as resp:
            assert resp.status == 404
        samples = await scrape(http)
    ok = {"method": "GET", "route": "/api/openapi.json"}
    assert value(samples, "fleetpulse_http_requests_total", status="200", **ok) == 1
    assert value(samples, "fleetpulse_http_request_duration_seconds_count", **ok) == 1
    assert (
        value(
            samples,
            "fleetpulse_http_requests_total",
            method="GET",
            route="unmatched",
            status="404",
        )
        == 1
    )


async def test_access_log_masks_tokens(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fleetpulse.web.access")
    url = "/api/openapi.json?access_token=fpt_very_secret&x=1"
    async with web_client(settings) as http, http.get(url) as resp:
        assert resp.status == 200
    lines = [r for r in caplog.records if r.name == "fleetpulse.web.access"]
    assert len(lines) == 1
    line = lines[0].getMessage()
    assert "fpt_very_secret" not in line
    assert line.startswith("GET /api/openapi.json?access_token=***&x=1 200 ")
    assert lines[0].__dict__["status"] == 200


async def test_scrape_still_answers_while_redis_is_down(settings: Settings) -> None:
    with Redis() as private:
        own = dataclasses.replace(settings, redis_url=private.url)
        async with web_client(own) as http:
            private.stop()
            samples = await scrape(http)
    assert value(samples, "fleetpulse_source_up", source="redis") == 0
    assert value(samples, "fleetpulse_source_up", source="postgresql") == 1
    assert value(samples, "fleetpulse_quarantine_last_hour", reason="invalid_json") is None
    assert total(samples, "fleetpulse_http_requests_total") >= 0
