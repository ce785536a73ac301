"""Prometheus metrics of the whole deployment, served by every web worker at `/metrics`.

Each app has its own registry (several apps can run in one process, as in the tests).
It holds the HTTP instruments this worker updates as it serves, and a collector that, at
scrape time, turns the latest `FleetReading` (PostgreSQL and Redis, cached a few
seconds) and the web components' stats objects into metric families. Every metric is
described in docs/operations.md.

The same middleware writes the access log: one compact line per request at INFO on the
`fleetpulse.web.access` logger, with credentials in the path or query masked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fleetpulse.logs import mask_secrets
from web import component_stats
from web.fleet_state import FleetReading, FleetState
from web.services import Services

access_log = logging.getLogger("fleetpulse.web.access")

# Request latencies from a cached lookup to a streamed history export.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Anything else a client sends as a method is counted as "OTHER": labels stay bounded.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
# Probes answered every few seconds: logged at DEBUG unless they fail.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499

# Tracker figures that are levels, not running totals (see Tracker.totals).
TRACKER_GAUGES = frozenset({"devices", "fences", "residuals_primed"})
# Ingest counters with a label instead of a name per value: prefix -> (metric, label).
INGEST_LABELLED = {
    "quarantined_": ("fleetpulse_ingest_rejects", "reason"),
    "ignored_": ("fleetpulse_ingest_ignored", "what"),
}

_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str) -> str:
    return _NOT_IN_NAME.sub("_", "_".join(parts))


def _package_version() -> str:
    try:
        return version("fleetpulse")
    except PackageNotFoundError:
        return "0+unknown"


def route_label(request: web.Request) -> str:
    """The route's template (`/api/v1/devices/{device_id}`), never the raw path, so that
    the number of series stays bounded."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


class AppMetrics:
    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleetpulse_http_requests",
            "HTTP requests answered by this web worker, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleetpulse_http_request_duration_seconds",
            "Time from request to complete response (websocket sessions excluded)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.fleet = FleetState()
        self.reading: FleetReading | None = None
        self.registry.register(_DeploymentCollector(self, app))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        if status != HTTPStatus.SWITCHING_PROTOCOLS:
            self.latency.labels(method, route).observe(seconds)

    async def exposition(self, services: Services) -> bytes:
        """The text exposition format, read fresh or from the reading cache."""
        self.reading = await self.fleet.reading(services)
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", AppMetrics)


def setup(app: web.Application) -> None:
    app[METRICS] = AppMetrics(app)


# --- the middleware: request metrics and the access log ----------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _log_access(request: web.Request, status: int, seconds: float) -> None:
    path = mask_secrets(request.path_qs)
    level = logging.DEBUG if request.path in PROBE_PATHS and status < 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    ms = round(seconds * 1000.0, 1)
    remote = request.remote or "-"
    access_log.log(
        level,
        "%s %s %d %.1fms %s",
        request.method,
        path,
        status,
        ms,
        remote,
        extra={
            "method": request.method,
            "path": path,
            "status": status,
            "ms": ms,
            "remote": remote,
        },
    )


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the final status, problem documents included."""
    started = time.perf_counter()
    status = web.HTTPInternalServerError.status_code
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.observe(request.method, route_label(request), status, elapsed)
        _log_access(request, status, elapsed)


# --- what the deployment looks like at scrape time ---------------------------------------


Family = CounterMetricFamily | GaugeMetricFamily


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _by_label(
    make: Callable[[str, str, Iterable[str]], Family],
    name: str,
    doc: str,
    label: str,
    values: Mapping[Any, float],
) -> Family:
    """A family with a sample per key of `values`, in key order, the key as `label`."""
    family = make(name, doc, [label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def reading_families(reading: FleetReading) -> Iterator[Metric]:
    """Metric families from one reading of PostgreSQL and Redis."""
    up = _gauge("fleetpulse_source_up", "1 if /metrics could read the source", ["source"])
    up.add_metric(["postgresql"], float(reading.database is not None))
    up.add_metric(["redis"], float(reading.redis is not None))
    yield up
    read = _gauge("fleetpulse_metrics_read_seconds", "Time the last reading of the sources took")
    read.add_metric([], reading.read_s)
    yield read
    if reading.redis is not None:
        yield from _process_families(reading)
        yield _by_label(
            _gauge,
            "fleetpulse_handoff_stream_entries",
            "Entries held in the ingest-to-tracker hand-off stream (XLEN), per partition",
            "partition",
            reading.redis.stream_lengths,
        )
        live = _gauge("fleetpulse_live_devices", "Devices with a live position in Redis")
        live.add_metric([], reading.redis.live_devices)
        yield live
    lag = reading.tracker_lag_s()
    if lag:
        yield _by_label(
            _gauge,
            "fleetpulse_tracker_lag_seconds",
            "Entry time of the newest hand-off entry minus that of the last one the"
            " partition's tracker checkpointed",
            "partition",
            lag,
        )
    if reading.database is not None:
        yield from _database_families(reading)


def _process_families(reading: FleetReading) -> Iterator[Metric]:
    assert reading.redis is not None
    families: dict[str, Family] = {}

    def family(kind: str, name: str, doc: str, labels: list[str]) -> Family:
        if name not in families:
            make = _gauge if kind == "gauge" else _counter
            families[name] = make(name, doc, labels)
        return families[name]

    processes = _gauge(
        "fleetpulse_stage_processes",
        "Ingest and tracker processes that published their counters recently",
        ["stage"],
    )
    per_stage: dict[str, int] = {}
    for proc in reading.redis.processes:
        per_stage[proc.stage] = per_stage.get(proc.stage, 0) + 1
        for field, value in sorted(proc.values.items()):
            labelled = next((v for k, v in INGEST_LABELLED.items() if field.startswith(k)), None)
            if proc.stage == "ingest" and labelled is not None:
                name, label = labelled
                prefix = next(k for k in INGEST_LABELLED if field.startswith(k))
                family(
                    "counter", name, f"Ingest: {label} counts per process", ["process", label]
                ).add_metric([proc.process, field.removeprefix(prefix)], value)
            elif proc.stage == "tracker" and field in TRACKER_GAUGES:
                family(
                    "gauge",
                    metric_name("fleetpulse_tracker", field),
                    f"Tracker: {field.replace('_', ' ')} now, per process",
                    ["process"],
                ).add_metric([proc.process], value)
            else:
                family(
                    "counter",
                    metric_name("fleetpulse", proc.stage, field),
                    f"{proc.stage.capitalize()}: {field.replace('_', ' ')} since the process"
                    " started",
                    ["process"],
                ).add_metric([proc.process], value)
    for stage in ("ingest", "tracker"):
        processes.add_metric([stage], per_stage.get(stage, 0))
    yield processes
    yield from families.values()


def _database_families(reading: FleetReading) -> Iterator[Metric]:
    db = reading.database
    assert db is not None
    yield _by_label(
        _counter,
        "fleetpulse_ingest_db_counter",
        "Counters all ingesters add to in PostgreSQL with each batch (exact across processes"
        " and restarts)",
        "counter",
        db.ingest_counters,
    )
    yield _by_label(
        _gauge,
        "fleetpulse_quarantine_last_hour",
        "Messages quarantined in the last hour, by reason",
        "reason",
        db.quarantine_recent,
    )
    yield _by_label(
        _gauge,
        "fleetpulse_events_last_hour",
        "Events recorded in the last hour, by kind",
        "kind",
        db.events_recent,
    )
    yield _by_label(
        _gauge,
        "fleetpulse_tracker_checkpoint_age_seconds",
        "Time since the partition's tracker last checkpointed",
        "partition",
        {partition: checkpoint.age_s for partition, checkpoint in db.checkpoints.items()},
    )
    yield _by_label(
        _gauge,
        "fleetpulse_deliveries_open",
        "Deliveries not yet finished, by state",
        "state",
        db.open_deliveries,
    )
    if db.webhooks_pending is not None:
        outbox = _gauge(
            "fleetpulse_webhook_outbox",
            "Webhook deliveries in the outbox: pending (to send) and dead (given up on,"
            " replayable)",
            ["status"],
        )
        outbox.add_metric(["pending"], db.webhooks_pending)
        outbox.add_metric(["dead"], db.webhooks_dead or 0)
        yield outbox
        oldest = _gauge(
            "fleetpulse_webhook_outbox_oldest_pending_seconds",
            "Age of the oldest webhook delivery still pending (0 when none)",
        )
        oldest.add_metric([], db.webhooks_oldest_pending_s or 0.0)
        yield oldest


def component_families(app: web.Application) -> Iterator[Metric]:
    families: dict[str, Family] = {}
    for item in component_stats.read(app):
        name = metric_name("fleetpulse", item.component.name, item.field)
        labels = ["key"] if item.key is not None else []
        family = families.get(name)
        if family is None:
            doc = f"{item.component.doc}: {item.field.replace('_', ' ')}"
            family = (_gauge if item.is_gauge else _counter)(name, doc, labels)
            families[name] = family
        if family.samples and bool(family.samples[0].labels) != bool(labels):
            continue  # a field that changed shape between readings; keep the first
        family.add_metric([item.key] if item.key is not None else [], item.value)
    yield from families.values()


class _DeploymentCollector(Collector):
    def __init__(self, metrics: AppMetrics, app: web.Application) -> None:
        self._metrics = metrics
        self._app = app

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily("fleetpulse_build", "The FleetPulse version serving")
        info.add_metric([], {"version": _package_version()})
        yield info
        if self._metrics.reading is not None:
            yield from reading_families(self._metrics.reading)
        yield from component_families(self._app)
