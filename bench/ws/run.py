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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.ingest import database, machine
from bench.ingest.children import REPO_ROOT, Child, child_env, python_module
from bench.ingest.ingester import fleetpulse_command
from bench.ingest.procstat import CpuMeter, MachineMeter
from bench.ws import fleet, results
from bench.ws.clients import raise_open_file_limit
from fleetpulse.database import connect
from fleetpulse.local_servers import Mosquitto, Redis, free_port
from tracker import delivery_store
from web import auth

READY_TIMEOUT_S = 60.0
CLIENTS_READY_TIMEOUT_S = 300.0
REPORT_TIMEOUT_S = 120.0
# Publishers: time to start the interpreter and connect before the common start time.
PUBLISHER_START_DELAY_S = 2.0
# Clients exit when the window ends; their CPU time is read this long before.
CPU_READ_BEFORE_END_S = 1.0
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


async def _scrape_ws(http: aiohttp.ClientSession, bases: list[str]) -> dict[str, float]:
    """The web workers' websocket counters, summed over the workers."""
    totals: dict[str, float] = {}
    for base in bases:
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("fleetpulse_ws_") and not sample.name.endswith(
                    "_created"
                ):
                    name = sample.name.removeprefix("fleetpulse_")
                    totals[name] = totals.get(name, 0.0) + sample.value
    return totals


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
            ports = [free_port() for _ in range(config.web_workers)]
            env = child_env(
                FLEETPULSE_DATABASE_URL=url,
                FLEETPULSE_MQTT_URL=broker.url,
                FLEETPULSE_REDIS_URL=redis_server.url,
                FLEETPULSE_CLIENT_ID=f"wsbench-ingest-{config.seed}",
                FLEETPULSE_PUBLIC_RATE_LIMIT=UNLIMITED,
            )
            log("migrating a fresh database")
            await database.migrate(fleetpulse_command(), env)
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
                        ws_base = bases[index % len(bases)].replace("http://", "ws://")
                        argv = python_module(
                            "bench.ws.clients",
                            role,
                            f"--url={ws_base}",
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
                meters = {
                    "web": CpuMeter([c.pid for c in webs]),
                    "ingest": CpuMeter([children[0].pid]),
                    "tracker": CpuMeter([children[1].pid]),
                    "broker": CpuMeter([broker.pid] if broker.pid else []),
                    "redis": CpuMeter([redis_server.pid] if redis_server.pid else []),
                    "postgres": CpuMeter(pg_backends),
                    "clients": CpuMeter([c.pid for c in clients]),
                    "publishers": CpuMeter([c.pid for c in publishers]),
                }
                for meter in meters.values():
                    meter.start()
                whole = MachineMeter()
                whole.start()
                # A saturated worker answers /metrics late: counters are taken as the
                # difference of scrapes before and after the window, levels (clients
                # connected) from one in its middle.
                before = await _scrape_ws(http, bases)
                await asyncio.sleep(max(0.0, window_start + config.duration_s / 2 - time.time()))
                middle = await _scrape_ws(http, bases)
                # Clients exit as the window ends: their CPU is read just before.
                await asyncio.sleep(max(0.0, window_end - CPU_READ_BEFORE_END_S - time.time()))
                cpu = {name: round(meter.percent(), 1) for name, meter in meters.items()}
                cpu["machine"] = round(whole.percent(), 1)

            reports = []
            for child in clients:
                report = await asyncio.wait_for(child.read_json_line(), REPORT_TIMEOUT_S)
                if report is None:
                    raise RuntimeError(f"{child.name} exited without a report; see {work}")
                reports.append(report)
            async with aiohttp.ClientSession() as http:
                after = await _scrape_ws(http, bases)
            server = {
                name: round(after[name] - before.get(name, 0.0))
                if name.endswith("_total")
                else middle.get(name, 0.0)
                for name in after
            }
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
                machine=await machine.describe(url),
                dispatch=dispatch,
                customers=customers,
                window_s=config.duration_s,
                published=published,
                acked=acked,
                offered_per_s=round(published / (config.warmup_s + config.duration_s), 1),
                streams=results.streams(reports, config.duration_s),
                server=server,
                cpu_pct=cpu,
            )
    finally:
        for child in reversed(children):
            with contextlib.suppress(ProcessLookupError):
                await child.stop()
        if finished and not config.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"the processes' logs are kept in {work}")
