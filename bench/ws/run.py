"""The websocket benchmark's sequence: services, a fresh database with fences, deliveries
and a token, FleetPulse's stages as processes, client processes, publishers, figures.

Every process started here is stopped here, also when the run fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.ingest import database, machine
from bench.ingest.children import REPO_ROOT, Child, child_env, python_module
from bench.ingest.ingester import fleetpulse_command
from bench.ws import fleet, results
from bench.ws.clients import raise_open_file_limit
from bench.ws.feed import FeedCounter
from bench.ws.sampler import TRACKER_LAG, Sampler, scrape_ws
from fleetpulse.database import connect
from fleetpulse.local_servers import Mosquitto, Redis, free_port
from tracker import delivery_store
from web import auth

READY_TIMEOUT_S = 60.0
CLIENTS_READY_TIMEOUT_S = 300.0
REPORT_TIMEOUT_S = 120.0
# Publishers: time to start the interpreter and connect before the common start time.
PUBLISHER_START_DELAY_S = 2.0
# Clients exit when the window ends; the sampler stops this long before.
SAMPLER_STOP_BEFORE_END_S = 1.0
SCRAPE_TIMEOUT_S = 30.0
# Every customer connects from 127.0.0.1: the per-address limit on public endpoints
# would refuse all but the first few, so it is lifted for the run.
UNLIMITED = "1000000000"


@dataclass(frozen=True)
class Config:
    dispatch: int
    customers: int
    rate: float
    vans: int
    duration_s: float
    warmup_s: float
    dispatch_procs: int
    customer_procs: int
    publishers: int
    web_workers: int
    deflate: bool
    server_url: str
    database: str
    seed: int = 1
    keep_logs: bool = False


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _prepare_database(config: Config, url: str, work: Path) -> tuple[str, Path]:
    """Fences across every van's leg, the customers' deliveries, a viewer token; returns
    (the token, a file of the customers' tracking tokens)."""
    vans = fleet.fleet(config.vans, config.seed)
    per_van = math.ceil(config.customers / config.vans) if config.customers else 0
    now = datetime.now(UTC)
    tokens: list[str] = []
    conn = await connect(url)
    try:
        _, viewer = await auth.create_token(conn, "bench-ws", auth.Role.VIEWER)
        async with conn.transaction():
            for n in range(config.customers):
                van = vans[n % config.vans]
                stop = n // config.vans
                lat, lon = fleet.stops(van, per_van)[stop]
                delivery = delivery_store.NewDelivery(
                    id=fleet.delivery_id(van.number, stop),
                    vehicle_id=van.id,
                    dest_lat=lat,
                    dest_lon=lon,
                    window_start=now - timedelta(hours=1),
                    window_end=now + timedelta(hours=4),
                    sequence=stop,
                )
                tokens.append(await delivery_store.create(conn, delivery))
    finally:
        await conn.close()
    tokens_file = work / "tracking-tokens.txt"
    tokens_file.write_text("\n".join(tokens) + "\n")
    fences_file = work / "fences.geojson"
    fences_file.write_text(
        json.dumps({"type": "FeatureCollection", "features": [fleet.fence(v) for v in vans]})
    )
    return viewer, fences_file


async def _cli(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        fleetpulse_command(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"fleetpulse {' '.join(args)} failed:\n{out.decode(errors='replace')}")
    return out.decode(errors="replace")


async def _wait_until(what: str, check: Callable[[], Any], timeout_s: float) -> None:
    """Poll `check` (sync or async) until it is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def _ready(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


def _logged(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


async def _scrape_each(http: aiohttp.ClientSession, bases: list[str]) -> list[dict[str, float]]:
    """Every web worker's websocket figures, each from its own port."""
    out = []
    for base in bases:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            values = await scrape_ws(http, base)
        values.pop(TRACKER_LAG, None)  # the deployment's, sampled by the Sampler
        out.append(values)
    return out


def _server_figures(
    before: list[dict[str, float]],
    after: list[dict[str, float]],
    levels: list[dict[str, float]],
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(summed over the workers, each worker's): counters as their growth over the
    window, levels (`clients`, `queued`) as of the sampler's last complete reading."""
    workers = []
    for was, now, level in zip(before, after, levels, strict=True):
        workers.append(
            {
                name: round(now[name] - was.get(name, 0.0))
                if name.endswith("_total")
                else level.get(name, 0.0)
                for name in now
            }
        )
    summed: dict[str, float] = {}
    for worker in workers:
        for name, value in worker.items():
            summed[name] = summed.get(name, 0.0) + value
    return summed, workers


async def _start(
    name: str, argv: list[str], env: dict[str, str] | None, log_path: Path | None, stdin: bool
) -> Child:
    stderr = log_path.open("ab") if log_path is not None else None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin else None,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    finally:
        if stderr is not None:
            stderr.close()
    return Child(name, process)


def _distinct_ports(count: int) -> list[int]:
    """A port per web worker, so that each worker's /metrics is scraped on its own (on one
    shared SO_REUSEPORT port a scrape reaches whichever worker the kernel picks)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) of `parts` near-equal slices of `total`, empty ones left out."""
    parts = max(1, min(parts, total)) if total else 0
    out, first = [], 0
    for i in range(parts):
        count = total // parts + (1 if i < total % parts else 0)
        out.append((first, count))
        first += count
    return out


async def run(config: Config) -> results.Run:
    limit = raise_open_file_limit()  # the web workers and the clients inherit it
    needed = config.dispatch + config.customers + 100
    if limit < needed // max(1, config.web_workers):
        raise RuntimeError(f"open-file limit {limit} is too low for {needed} sockets")
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-ws-"))
    children: list[Child] = []
    finished = False
    try:
        with Mosquitto() as broker, Redis() as redis_server:
            url = database.database_url(config.server_url, config.database)
            await database.recreate(config.server_url, config.database)
            ports = _distinct_ports(config.web_workers)
            env = child_env(
                FLEETPULSE_DATABASE_URL=url,
                FLEETPULSE_MQTT_URL=broker.url,
                FLEETPULSE_REDIS_URL=redis_server.url,
                FLEETPULSE_CLIENT_ID=f"wsbench-ingest-{config.seed}",
                FLEETPULSE_PUBLIC_RATE_LIMIT=UNLIMITED,
            )
            log("migrating a fresh database")
            await database.migrate(fleetpulse_command(), env)
            # Before this run's own processes start: the load average is the background's.
            described = await machine.describe(url)
            log(f"creating {config.vans} fences and {config.customers} deliveries")
            viewer, fences_file = await _prepare_database(config, url, work)
            await _cli(env, "geofences", "import", str(fences_file))
            tokens_file = work / "tracking-tokens.txt"

            log("starting ingest, tracker and web processes")
            ingest_log = work / "ingest.log"
            children.append(
                await _start("ingest", [fleetpulse_command(), "ingest"], env, ingest_log, False)
            )
            children.append(
                await _start(
                    "tracker", [fleetpulse_command(), "tracker"], env, work / "tracker.log", False
                )
            )
            web_env = {**env, "FLEETPULSE_LOG_LEVEL": "WARNING"}  # no access log per socket
            webs = []
            for i, port in enumerate(ports):
                worker_env = {**web_env, "FLEETPULSE_WEB_PORT": str(port)}
                webs.append(
                    await _start(
                        f"web-{i}",
                        [fleetpulse_command(), "web"],
                        worker_env,
                        work / f"web-{i}.log",
                        False,
                    )
                )
            children.extend(webs)
            bases = [f"http://127.0.0.1:{port}" for port in ports]
            async with aiohttp.ClientSession() as http:
                for base in bases:
                    await _wait_until(
                        f"{base}/readyz", functools.partial(_ready, http, base), READY_TIMEOUT_S
                    )
                await _wait_until(
                    "the ingester's subscription",
                    lambda: _logged(ingest_log, "subscribed as"),
                    READY_TIMEOUT_S,
                )

                log(
                    f"connecting {config.dispatch} dispatch and {config.customers} customer clients"
                )
                clients: list[Child] = []
                groups = (
                    ("dispatch", config.dispatch, config.dispatch_procs),
                    ("track", config.customers, config.customer_procs),
                )
                index = 0
                for role, total, procs in groups:
                    for first, count in _split(total, procs):
                        ws_bases = ",".join(b.replace("http://", "ws://") for b in bases)
                        argv = python_module(
                            "bench.ws.clients",
                            role,
                            f"--url={ws_bases}",
                            f"--count={count}",
                            f"--token={viewer}",
                            f"--tokens={tokens_file}",
                            f"--first={first}",
                            f"--index={index}",
                            *(["--deflate"] if config.deflate else []),
                        )
                        child = await _start(
                            f"{role}-{index}", argv, None, work / "clients.log", True
                        )
                        children.append(child)
                        clients.append(child)
                        index += 1
                for child in clients:
                    ready = await asyncio.wait_for(child.read_json_line(), CLIENTS_READY_TIMEOUT_S)
                    if ready is None:
                        raise RuntimeError(f"{child.name} exited before connecting; see {work}")
                    log(f"  {child.name}: {ready['connected']} connected, failed {ready['failed']}")

                feed = FeedCounter(redis_server.url)
                await feed.start()
                epoch = time.time() + PUBLISHER_START_DELAY_S
                window_start = epoch + config.warmup_s
                window_end = window_start + config.duration_s
                for child in clients:
                    assert child.process.stdin is not None
                    child.process.stdin.write(f"{window_start} {window_end}\n".encode())
                    await child.process.stdin.drain()
                log(
                    f"publishing {config.rate:g} fixes/s from {config.vans} vans:"
                    f" {config.warmup_s:g} s warm-up, {config.duration_s:g} s measured"
                )
                publishers = []
                for i in range(config.publishers):
                    argv = python_module(
                        "bench.ws.publisher",
                        f"--url={broker.url}",
                        f"--rate={config.rate / config.publishers}",
                        f"--duration={config.warmup_s + config.duration_s}",
                        f"--vans={config.vans}",
                        f"--index={i}",
                        f"--publishers={config.publishers}",
                        f"--epoch={epoch}",
                        f"--start-at={epoch}",
                        f"--seed={config.seed}",
                    )
                    publishers.append(
                        await _start(f"publisher-{i}", argv, None, work / "publishers.log", False)
                    )
                children.extend(publishers)

                await asyncio.sleep(max(0.0, window_start - time.time()))
                pg_backends = await database.backend_pids(url, config.database)
                processes: dict[str, list[int]] = {c.name: [c.pid] for c in webs}
                processes |= {
                    "ingest": [children[0].pid],
                    "tracker": [children[1].pid],
                    "broker": [broker.pid] if broker.pid else [],
                    "redis": [redis_server.pid] if redis_server.pid else [],
                    "postgres": pg_backends,
                }
                processes |= {c.name: [c.pid] for c in clients + publishers}
                processes["harness"] = [os.getpid()]
                cpu_groups = {
                    "web": [c.name for c in webs],
                    **{name: [name] for name in ("ingest", "tracker", "broker", "redis")},
                    "postgres": ["postgres"],
                    "dispatch clients": [c.name for c in clients if c.name.startswith("dispatch")],
                    "customer clients": [c.name for c in clients if c.name.startswith("track")],
                    "publishers": [c.name for c in publishers],
                    "harness": ["harness"],
                }
                sampler = Sampler(
                    processes,
                    cpu_groups,
                    {c.name: b for c, b in zip(webs, bases, strict=True)},
                    ports,
                    redis_server.url,
                    int(urlsplit(redis_server.url).port or 6379),
                )
                sampler.start(http)
                # A saturated worker answers /metrics late: its counters are taken as the
                # difference of scrapes before and after the window.
                before = await _scrape_each(http, bases)
                before_at = time.monotonic()
                # Clients exit as the window ends: the sampler stops just before, and the
                # counters are read then.
                await asyncio.sleep(max(0.0, window_end - SAMPLER_STOP_BEFORE_END_S - time.time()))
                await sampler.stop()
                await feed.stop()
                feed_end = time.time()
                after = await _scrape_each(http, bases)
                # Each scrape's figures are as of its answer: the span is between answers.
                after_at = time.monotonic()
                sampled = sampler.report()
                sampled["server_counters_over_s"] = round(after_at - before_at, 1)
                sampled["feed_published"] = feed.report(window_start, feed_end)

            reports = []
            for child in clients:
                report = await asyncio.wait_for(child.read_json_line(), REPORT_TIMEOUT_S)
                if report is None:
                    raise RuntimeError(f"{child.name} exited without a report; see {work}")
                reports.append(report)
            server, per_worker = _server_figures(before, after, sampler.last_levels(len(bases)))
            published = acked = 0
            for child in publishers:
                report = await asyncio.wait_for(child.read_json_line(), REPORT_TIMEOUT_S)
                if report is None:
                    raise RuntimeError(f"{child.name} exited without a report; see {work}")
                published += int(report["sent"])
                acked += int(report["acked"])
            dispatch = results.Clients("dispatch", config.dispatch)
            customers = results.Clients("customers", config.customers)
            for report in reports:
                (dispatch if report["role"] == "dispatch" else customers).add(report)
            finished = True
            return results.Run(
                config={
                    k: v for k, v in vars(config).items() if k not in ("server_url", "keep_logs")
                },
                machine=described,
                dispatch=dispatch,
                customers=customers,
                window_s=config.duration_s,
                published=published,
                acked=acked,
                offered_per_s=round(published / (config.warmup_s + config.duration_s), 1),
                streams=results.streams(reports, config.duration_s),
                server=server,
                server_per_worker=per_worker,
                cpu_pct=sampled.pop("cpu_pct"),
                sampled=sampled,
            )
    finally:
        for child in reversed(children):
            with contextlib.suppress(ProcessLookupError):
                await child.stop()
        if finished and not config.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"the processes' logs are kept in {work}")
