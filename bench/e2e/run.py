"""The end-to-end benchmark's sequence: private services and a fresh database, the two
bare ceilings, the world (fences, deliveries, a token), FleetPulse's stages and the
websocket clients as processes, then the offered rate in rising steps until a step does
not keep up, and a profile of the stages at that rate.

Every process started here is stopped here, and the database dropped, also when the run
fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import redis.asyncio as redis
from psycopg import sql

from bench.e2e import ceilings, fleet
from bench.e2e import profile as profiling
from bench.e2e.background import Background, descendants
from bench.e2e.ceilings import Ceiling
from bench.e2e.clients import EVENT_CLASSES
from bench.e2e.results import Run, Step, Stream
from bench.e2e.stages import StageProcess, ingest_env, tracker_env, web_env
from bench.ingest import database, figures, machine
from bench.ingest.children import REPO_ROOT, Child, child_env, python_module
from bench.ingest.ingester import fleetpulse_command
from bench.ingest.procstat import CpuMeter, peak_rss_mib
from bench.ws import results as ws_results
from bench.ws.histogram import Histogram
from fleetpulse.database import connect
from fleetpulse.local_servers import Mosquitto, Redis, free_port
from fleetpulse.settings import load_settings
from tracker import delivery_store
from tracker.handoff import stream_key
from web import auth

# Publishers: time to start the interpreter and connect before the common start time.
PUBLISHER_START_DELAY_S = 2.0
PUBLISHER_EXTRA_S = 90.0  # beyond the step: start-up and the last acknowledgements
CLIENTS_READY_TIMEOUT_S = 120.0
REPORT_TIMEOUT_S = 60.0
WEB_READY_TIMEOUT_S = 60.0
# A step's backlog must be stored and tracked within this (plus twice the step) or the
# ramp stops there.
DRAIN_TIMEOUT_MIN_S = 30.0
DRAIN_POLL_S = 0.2
BACKGROUND_BEFORE_S = 5.0
# Every customer connects from 127.0.0.1: the per-address limit of public endpoints
# would refuse all but the first few, so it is lifted for the run.
UNLIMITED = "1000000000"
DELIVERY_WINDOW = (timedelta(hours=-1), timedelta(hours=4))


@dataclass(frozen=True)
class Config:
    rates: tuple[float, ...]
    step_s: float
    warmup_s: float
    ceiling_s: float
    profile_s: float  # 0: no profile
    devices: int
    fences: int
    deliveries: int
    stops_per_van: int
    dispatch: int
    customers: int
    ingesters: int
    trackers: int
    web_workers: int
    publishers: int
    server_url: str
    database: str
    seed: int = 1
    keep_logs: bool = False

    @property
    def vans(self) -> int:
        return math.ceil(self.deliveries / self.stops_per_van) if self.deliveries else 0


def log(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


@dataclass
class Services:
    """Everything started for the steps, and what the steps need to know about it."""

    config: Config
    mqtt_url: str
    database_url: str
    broker_pid: int | None
    redis_pid: int | None
    redis: redis.Redis
    partitions: int
    epoch: float
    work: Path
    ingesters: list[StageProcess] = field(default_factory=list)
    trackers: list[StageProcess] = field(default_factory=list)
    webs: list[StageProcess] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # of the web workers
    clients: list[Child] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # per publisher: devices sent so far
    published: int = 0  # acknowledged by the broker, all steps

    def stages(self) -> list[StageProcess]:
        return [*self.ingesters, *self.trackers, *self.webs]


# --- the world ---------------------------------------------------------------------


async def _prepare(config: Config, url: str, env: dict[str, str], work: Path) -> dict[str, Any]:
    """Fences (through the product's import), deliveries on the first vans, a viewer
    token. Returns what was made, with the token and the customers' token file."""
    started = time.monotonic()
    fences_file = work / "fences.geojson"
    features = fleet.fences(config.fences, config.seed)
    fences_file.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    process = await asyncio.create_subprocess_exec(
        fleetpulse_command(),
        "geofences",
        "import",
        str(fences_file),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"fleetpulse geofences import failed:\n{out.decode(errors='replace')}")
    fences_s = time.monotonic() - started

    started = time.monotonic()
    vans = fleet.devices(config.vans, config.vans, config.seed) if config.vans else []
    now = datetime.now(UTC)
    tokens: list[str] = []
    conn = await connect(url)
    try:
        _, viewer = await auth.create_token(conn, "bench-e2e", auth.Role.VIEWER)
        async with conn.transaction():
            for n in range(config.deliveries):
                van, stop = vans[n % config.vans], n // config.vans
                lat, lon = fleet.stops(van, config.stops_per_van)[stop]
                delivery = delivery_store.NewDelivery(
                    id=fleet.delivery_id(van.number, stop),
                    vehicle_id=van.id,
                    dest_lat=lat,
                    dest_lon=lon,
                    window_start=now + DELIVERY_WINDOW[0],
                    window_end=now + DELIVERY_WINDOW[1],
                    sequence=stop,
                )
                tokens.append(await delivery_store.create(conn, delivery))
    finally:
        await conn.close()
    tokens_file = work / "tracking-tokens.txt"
    tokens_file.write_text("\n".join(tokens) + "\n")
    return {
        "fences": config.fences,
        "fences_import_s": round(fences_s, 1),
        "deliveries": config.deliveries,
        "vans": config.vans,
        "deliveries_s": round(time.monotonic() - started, 1),
        "expected_crossings_per_s": round(
            fleet.expected_crossings_per_s(config.devices, config.vans, config.fences)
        ),
        "viewer_token": viewer,
        "tokens_file": str(tokens_file),
    }


# --- processes ---------------------------------------------------------------------


async def _web_ready(base: str) -> None:
    deadline = time.monotonic() + WEB_READY_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base}/readyz: not ready in {WEB_READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)


async def _start_stages(services: Services, env: dict[str, str]) -> None:
    config, work = services.config, services.work
    for i in range(config.ingesters):
        services.ingesters.append(
            StageProcess(f"ingest-{i}", "ingest", ingest_env(env, i), work / f"ingest-{i}.log")
        )
    for i in range(config.trackers):
        services.trackers.append(
            StageProcess(
                f"tracker-{i}",
                "tracker",
                tracker_env(env, i, config.trackers),
                work / f"tracker-{i}.log",
            )
        )
    services.ports = [free_port() for _ in range(config.web_workers)]
    for i, port in enumerate(services.ports):
        services.webs.append(
            StageProcess(f"web-{i}", "web", web_env(env, port), work / f"web-{i}.log")
        )
    for stage in services.stages():
        await stage.start()
    started = time.monotonic()
    for stage in services.stages():
        await stage.wait_ready()
    for port in services.ports:
        await _web_ready(f"http://127.0.0.1:{port}")
    log(f"stages ready in {time.monotonic() - started:.1f} s (the tracker indexes the fences)")


async def _start_clients(services: Services, setup: dict[str, Any]) -> None:
    """One process per role and web worker; customers spread over the tokens."""
    config = services.config
    ports = services.ports
    index = 0
    for role, total in (("dispatch", config.dispatch), ("track", config.customers)):
        per_worker = ws_split(total, len(ports))
        for port, (first, count) in zip(ports, per_worker, strict=False):
            argv = python_module(
                "bench.e2e.clients",
                role,
                f"--url=ws://127.0.0.1:{port}",
                f"--count={count}",
                f"--token={setup['viewer_token']}",
                f"--tokens={setup['tokens_file']}",
                f"--first={first}",
                f"--index={index}",
            )
            log_file = (services.work / f"clients-{index}.log").open("ab")
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=REPO_ROOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_file,
                )
            finally:
                log_file.close()
            services.clients.append(Child(f"{role}-{index}", process))
            index += 1
    for child in services.clients:
        ready = await asyncio.wait_for(child.read_json_line(), CLIENTS_READY_TIMEOUT_S)
        if ready is None:
            raise RuntimeError(f"{child.name} exited before connecting; see {services.work}")
        log(f"  {child.name}: {ready['connected']} connected, failed {ready['failed']}")


def ws_split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) of `parts` near-equal slices of `total`, empty ones left out."""
    out, first = [], 0
    for i in range(parts):
        count = total // parts + (1 if i < total % parts else 0)
        if count:
            out.append((first, count))
        first += count
    return out


async def _stop_clients(services: Services) -> None:
    for child in services.clients:
        if child.process.stdin is not None and child.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                child.process.stdin.write(b"quit\n")
                await child.process.stdin.drain()
    for child in services.clients:
        with contextlib.suppress(ProcessLookupError):
            try:
                await asyncio.wait_for(child.process.wait(), 10.0)
            except TimeoutError:
                await child.stop()


# --- one step ----------------------------------------------------------------------


async def _stream_added(services: Services) -> tuple[float, int]:
    """(when, entries ever added to the hand-off streams): what the trackers must read."""
    async with services.redis.pipeline(transaction=False) as pipe:
        for p in range(services.partitions):
            pipe.xinfo_stream(stream_key(p))
        replies = await pipe.execute(raise_on_error=False)
    total = 0
    for reply in replies:
        if isinstance(reply, dict):  # an error: the stream has had no entry yet
            total += int(reply.get("entries-added", 0))
    return time.time(), total


def _tracked(services: Services) -> int:
    return sum(t.tracker_total("entries") for t in services.trackers)


async def _publish(
    services: Services, rate: float, duration_s: float, start_at: float
) -> list[Child]:
    config = services.config
    publishers = []
    for i in range(config.publishers):
        argv = python_module(
            "bench.e2e.publisher",
            f"--url={services.mqtt_url}",
            f"--rate={rate / config.publishers}",
            f"--duration={duration_s}",
            f"--devices={config.devices}",
            f"--vans={config.vans}",
            f"--index={i}",
            f"--publishers={config.publishers}",
            f"--epoch={services.epoch}",
            f"--start-at={start_at}",
            f"--offset={services.offsets[i]}",
            f"--seed={config.seed}",
        )
        publishers.append(await Child.start(f"publisher-{i}", argv))
    return publishers


async def _reports(children: list[Child], timeout_s: float) -> list[dict[str, Any]]:
    reports = []
    for child in children:
        report = await asyncio.wait_for(child.read_json_line(), timeout_s)
        if report is None:
            raise RuntimeError(f"{child.name} exited without a report")
        reports.append(report)
    return reports


def _meters(
    services: Services, publishers: list[Child], backends: list[int]
) -> dict[str, CpuMeter]:
    meters = {s.name: CpuMeter([s.pid]) for s in services.stages()}
    meters["broker"] = CpuMeter([services.broker_pid] if services.broker_pid else [])
    meters["redis"] = CpuMeter([services.redis_pid] if services.redis_pid else [])
    meters["postgres"] = CpuMeter(backends)
    meters["publishers"] = CpuMeter([p.pid for p in publishers])
    meters["clients"] = CpuMeter([c.pid for c in services.clients])
    meters["bench"] = CpuMeter([os.getpid()])
    return meters


def _peak_rss(services: Services) -> dict[str, float]:
    pids = {s.name: s.pid for s in services.stages()}
    pids.update({c.name: c.pid for c in services.clients})
    if services.broker_pid:
        pids["broker"] = services.broker_pid
    if services.redis_pid:
        pids["redis"] = services.redis_pid
    out = {}
    for name, pid in pids.items():
        rss = peak_rss_mib(pid)
        if rss is not None:
            out[name] = round(rss, 1)
    return out


def _streams(reports: list[dict[str, Any]], window_s: float) -> list[Stream]:
    """Per kind of delivery (as the websocket benchmark counts them), all clients."""
    merged = ws_results.streams(reports, window_s)
    return [Stream(s.kind, s.deliveries, s.per_s, s.p50_ms, s.p99_ms) for s in merged]


def _event_classes(reports: list[dict[str, Any]], window_s: float) -> list[Stream]:
    """Geofence events (held for the reorder window) and the others, apart."""
    out = []
    for kind in EVENT_CLASSES:
        histogram, count = Histogram(), 0
        for report in reports:
            count += int(report["deliveries"].get(kind, 0))
            if kind in report["latency"]:
                histogram.merge(Histogram.from_json(report["latency"][kind]))
        p50, p99 = histogram.percentile(0.50), histogram.percentile(0.99)
        out.append(
            Stream(
                kind,
                count,
                round(count / window_s, 1),
                None if p50 is None else round(p50, 1),
                None if p99 is None else round(p99, 1),
            )
        )
    return out


def _sum_rates(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 1) if known else None


async def _drain(services: Services, published_end: float, timeout_s: float) -> float | None:
    """Wait until every fix published so far is stored and every hand-off entry read;
    seconds since the last publish, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        committed = sum(i.committed() for i in services.ingesters)
        _, added = await _stream_added(services)
        if committed >= services.published and _tracked(services) >= added:
            # The trackers' totals are read once a second: the last line may be this old.
            return max(0.0, time.time() - published_end)
        if time.monotonic() > deadline or any(s.exited() for s in services.stages()):
            return None
        await asyncio.sleep(DRAIN_POLL_S)


async def run_step(
    services: Services,
    rate: float,
    duration_s: float,
    profile_into: list[profiling.Profile] | None = None,
) -> Step:
    config = services.config
    start_at = time.time() + PUBLISHER_START_DELAY_S
    window = (start_at + config.warmup_s, start_at + duration_s)
    window_s = window[1] - window[0]
    for client in services.clients:
        assert client.process.stdin is not None
        client.process.stdin.write(f"{window[0]} {window[1]}\n".encode())
        await client.process.stdin.drain()
    publishers = await _publish(services, rate, duration_s, start_at)
    try:
        await asyncio.sleep(max(0.0, window[0] - time.time()))
        backends = await database.backend_pids(services.database_url, config.database)
        meters = _meters(services, publishers, backends)
        for meter in meters.values():
            meter.start()
        background = Background()
        background.start()
        added_start = await _stream_added(services)
        spies = await _start_profiles(services, window_s) if profile_into is not None else []
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        cpu = {name: round(meter.percent(), 1) for name, meter in meters.items()}
        ours = descendants(os.getpid()) | set(backends)
        bg = background.stop(ours)
        cpu["machine"] = bg["machine_cpu_pct"]
        cpu["other"] = bg["other_cpu_pct"]
        added_end = await _stream_added(services)
        tracker_lag = added_end[1] - _tracked(services)
        rss = _peak_rss(services)
        reports = await _reports(publishers, duration_s + PUBLISHER_EXTRA_S)
    finally:
        for child in publishers:
            await child.stop()
    for i, report in enumerate(reports):
        services.offsets[i] += int(report["sent"])
    published, offered, _, published_end = figures.offered(reports)
    services.published += published
    client_reports = await _reports(services.clients, REPORT_TIMEOUT_S)
    if profile_into is not None:
        profile_into.extend(await _finish_profiles(spies, window_s))
    drain_s = await _drain(services, published_end, DRAIN_TIMEOUT_MIN_S + 2 * duration_s)

    committed, p50s, p99s = [], [], []
    for ingester in services.ingesters:
        lines = ingester.ingest_lines()
        committed.append(figures.committed_rate(lines, *window))
        p50, p99 = figures.latency(lines, *window)
        p50s.append(p50)
        p99s.append(p99)
    tracked = [
        figures.rate_between(t.tracker_samples("entries"), *window) for t in services.trackers
    ]
    events = [figures.rate_between(t.tracker_samples("events"), *window) for t in services.trackers]
    streams = _streams(client_reports, window_s)
    positions = next((s.deliveries for s in streams if s.kind == "positions"), 0)
    closed: dict[str, int] = {}
    for report in client_reports:
        for code, n in report["closed"].items():
            closed[code] = closed.get(code, 0) + int(n)
    added_s = added_end[0] - added_start[0]
    step = Step(
        target_per_s=rate,
        window_s=round(window_s, 1),
        published=published,
        offered_per_s=round(offered, 1),
        committed_per_s=_sum_rates(committed),
        # The worst ingester's: each reports its own percentiles.
        commit_p50_ms=max((v for v in p50s if v is not None), default=None),
        commit_p99_ms=max((v for v in p99s if v is not None), default=None),
        handed_on_per_s=round((added_end[1] - added_start[1]) / added_s, 1) if added_s else None,
        tracked_per_s=_sum_rates(tracked),
        tracker_lag_entries=tracker_lag,
        tracker_p99_ms=max(
            (p for t in services.trackers if (p := t.tracker_lag_p99(*window)) is not None),
            default=None,
        ),
        events_per_s=_sum_rates(events),
        streams=streams,
        event_classes=_event_classes(client_reports, window_s),
        dispatch_clients=config.dispatch,
        positions_per_client_s=round(positions / max(1, config.dispatch) / window_s, 1),
        ws_closed=closed,
        cpu_pct=cpu,
        peak_rss_mib=rss,
        background=bg,
        drain_s=None if drain_s is None else round(drain_s, 1),
    )
    step.judge()
    return step


# --- profiles ----------------------------------------------------------------------


async def _start_profiles(
    services: Services, duration_s: float
) -> list[tuple[str, asyncio.subprocess.Process, Path]]:
    binary = profiling.py_spy()
    if binary is None:
        return []
    spies = []
    # The first of each stage: the others run the same code.
    for stage in (services.ingesters[:1], services.trackers[:1], services.webs[:1]):
        for process in stage:
            out = services.work / f"profile-{process.name}.txt"
            spy = await profiling.record(binary, process.pid, duration_s, out)
            spies.append((process.name, spy, out))
    return spies


async def _finish_profiles(
    spies: list[tuple[str, asyncio.subprocess.Process, Path]], duration_s: float
) -> list[profiling.Profile]:
    if not spies:
        return [profiling.Profile("stages", 0, [], [], "py-spy is not installed (the bench extra)")]
    return [await profiling.finish(name, spy, out, duration_s) for name, spy, out in spies]


# --- the run -----------------------------------------------------------------------


async def _background_before() -> dict[str, Any]:
    background = Background()
    background.start()
    await asyncio.sleep(BACKGROUND_BEFORE_S)
    return background.stop(descendants(os.getpid()))


async def _drop(server_url: str, name: str) -> None:
    admin = psycopg.conninfo.make_conninfo(server_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


async def _ceilings(config: Config, broker: Mosquitto, redis_server: Redis) -> list[Ceiling]:
    broker_pids = [broker.pid] if broker.pid else []
    redis_pids = [redis_server.pid] if redis_server.pid else []
    log(f"ceiling of the broker: unpaced publishers, {config.ceiling_s:g} s")
    found = [
        await ceilings.broker(
            broker.url, broker_pids, config.ceiling_s, config.publishers, config.devices
        )
    ]
    top = max(config.rates)
    log(f"ceiling of the MQTT client (aiomqtt): offered {top:,.0f}/s, {config.ceiling_s:g} s")
    found.append(
        await ceilings.mqtt_client(
            broker.url,
            broker_pids,
            redis_pids,
            top,
            config.ceiling_s,
            config.publishers,
            config.devices,
        )
    )
    for ceiling in found:
        log(f"  {ceiling.what}: {ceiling.received_per_s:,.0f} msg/s")
    return found


async def _ramp(result: Run, services: Services) -> None:
    """The rates in turn, until one does not keep up; then the profiling step."""
    config = services.config
    for rate in config.rates:
        log(f"step: {rate:,.0f} fixes/s for {config.step_s:g} s")
        step = await run_step(services, rate, config.step_s)
        result.steps.append(step)
        pos = step.stream("positions")
        log(
            f"  offered {step.offered_per_s:,.0f}/s, stored {step.committed_per_s or 0:,.0f}/s,"
            f" tracked {step.tracked_per_s or 0:,.0f} of {step.handed_on_per_s or 0:,.0f}"
            f" entries/s, events {step.events_per_s or 0:,.0f}/s, positions p99"
            f" {pos.p99_ms if pos else '-'} ms, drain {step.drain_s} s, machine"
            f" {step.cpu_pct['machine']:.0f}% (other {step.cpu_pct['other']:.0f}%)"
        )
        if not step.kept_up:
            log(f"  did not keep up ({', '.join(step.limits)}): the ramp stops here")
            break
    if config.profile_s > 0 and result.steps:
        failing = next((s for s in result.steps if not s.kept_up), result.steps[-1])
        result.profile_rate = failing.target_per_s
        log(f"profiling the stages at {failing.target_per_s:,.0f}/s for {config.profile_s:g} s")
        profiles: list[profiling.Profile] = []
        await run_step(services, failing.target_per_s, config.profile_s, profiles)
        result.profiles = profiles


async def _stop(services: Services) -> bool:
    """Clients, then stages (before the broker and Redis they use); False when a stage
    did not stop cleanly."""
    clean = True
    await _stop_clients(services)
    for stage in reversed(services.stages()):
        code = await stage.stop()
        if code != 0:
            log(f"{stage.name} exited with {code}; see {stage.log_path}")
            clean = False
    await services.redis.aclose()
    return clean


async def run(config: Config) -> Run:
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-e2e-"))
    finished = False
    log(f"measuring the machine's background load for {BACKGROUND_BEFORE_S:g} s; logs in {work}")
    before = await _background_before()
    try:
        with Mosquitto() as broker, Redis() as redis_server:
            url = database.database_url(config.server_url, config.database)
            await database.recreate(config.server_url, config.database)
            env = child_env(
                FLEETPULSE_DATABASE_URL=url,
                FLEETPULSE_MQTT_URL=broker.url,
                FLEETPULSE_REDIS_URL=redis_server.url,
                FLEETPULSE_TOPIC_PREFIX="fleet",
                FLEETPULSE_PUBLIC_RATE_LIMIT=UNLIMITED,
            )
            await database.migrate(fleetpulse_command(), env)
            result = Run(
                config={
                    k: v for k, v in asdict(config).items() if k not in ("server_url", "keep_logs")
                },
                machine=await machine.describe(url),
                setup={},
                background_before=before,
            )
            result.ceilings = await _ceilings(config, broker, redis_server)

            log(f"creating {config.fences:,} fences and {config.deliveries:,} deliveries")
            setup = await _prepare(config, url, env, work)
            result.setup = {
                k: v for k, v in setup.items() if k not in ("viewer_token", "tokens_file")
            }
            services = Services(
                config=config,
                mqtt_url=broker.url,
                database_url=url,
                broker_pid=broker.pid,
                redis_pid=redis_server.pid,
                redis=redis.Redis.from_url(redis_server.url),
                partitions=load_settings(env).partitions,
                epoch=time.time(),
                work=work,
                offsets=[0] * config.publishers,
            )
            try:
                log(
                    f"starting {config.ingesters} ingest, {config.trackers} tracker and"
                    f" {config.web_workers} web processes"
                )
                await _start_stages(services, env)
                log(
                    f"connecting {config.dispatch} dispatch and {config.customers} customer clients"
                )
                await _start_clients(services, setup)
                await _ramp(result, services)
            finally:
                clean = await _stop(services)
            finished = clean
            return result
    finally:
        with contextlib.suppress(psycopg.Error):
            await _drop(config.server_url, config.database)
        if finished and not config.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"the processes' logs are kept in {work}")
