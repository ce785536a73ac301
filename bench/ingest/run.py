"""The benchmark's sequence: broker and database, baseline, rising rates, verification.

Every process started here is stopped here, also when the run fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.ingest import database, figures, machine
from bench.ingest.children import (
    PUBLISHER_START_DELAY_S,
    Child,
    child_env,
    python_module,
    run_publishers,
)
from bench.ingest.ingester import IngesterProcess, fleetpulse_command
from bench.ingest.procstat import CpuMeter, MachineMeter, children_named, peak_rss_mib
from bench.ingest.results import Baseline, Run, Step, Verification
from fleetpulse.local_servers import Mosquitto, Redis

# Same shape as the ingester's filter, in a group of its own so that nothing the baseline
# leaves queued can reach the ingester.
BARE_FILTER = "$share/bench-bare/fleet/+/telemetry"
BARE_READY_TIMEOUT_S = 30.0
# A step's backlog must be committed within this many step lengths (plus the minimum)
# before the next step starts; otherwise the ramp stops: the ingester is overrun.
DRAIN_TIMEOUT_STEPS = 3.0
DRAIN_TIMEOUT_MIN_S = 30.0
# Ingester settings worth recording with the figures (from `fleetpulse config`).
RECORDED_SETTINGS = (
    "FLEETPULSE_BATCH_SIZE",
    "FLEETPULSE_FLUSH_INTERVAL",
    "FLEETPULSE_RECEIVE_MAXIMUM",
)


@dataclass(frozen=True)
class Services:
    """The private broker and Redis of this run: where they listen, which processes."""

    mqtt_url: str
    broker_pids: list[int]
    redis_pids: list[int]


@dataclass(frozen=True)
class Config:
    rates: tuple[float, ...]
    step_s: float
    bare_s: float
    bare_rate: float  # fixes/s offered during the baseline; 0: as fast as publishers can
    warmup_s: float
    publishers: int
    devices: int
    server_url: str
    database: str


def _percent(cpu_s: float, wall_s: float) -> float:
    return 100.0 * cpu_s / max(wall_s, 1e-9)


async def _sleep_until(epoch_s: float) -> None:
    await asyncio.sleep(max(0.0, epoch_s - time.time()))


def _ingester_settings(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        [fleetpulse_command(), "config"], env=env, capture_output=True, text=True, check=True
    ).stdout
    pairs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: pairs[name] for name in RECORDED_SETTINGS if name in pairs}


async def _baseline(config: Config, services: Services, receive_maximum: str) -> Baseline:
    url = services.mqtt_url
    argv = python_module(
        "bench.ingest.bare",
        f"--url={url}",
        f"--filter={BARE_FILTER}",
        f"--receive-maximum={receive_maximum}",
    )
    subscriber = await Child.start("bare", argv)
    samples: list[tuple[float, int]] = []
    drops: list[tuple[float, int]] = []

    async def collect() -> None:
        while (line := await subscriber.read_json_line()) is not None:
            samples.append((float(line["t"]), int(line["received"])))
            drops.append((float(line["t"]), int(line["dropped"])))

    collector: asyncio.Task[None] | None = None
    try:
        if await asyncio.wait_for(subscriber.read_json_line(), BARE_READY_TIMEOUT_S) is None:
            raise RuntimeError("the bare subscriber exited before subscribing")
        collector = asyncio.create_task(collect(), name="bench-bare-samples")
        start_at = time.time() + PUBLISHER_START_DELAY_S
        publishing = asyncio.create_task(
            run_publishers(
                url, config.bare_rate, config.bare_s, config.publishers, config.devices, 0, start_at
            )
        )
        await _sleep_until(start_at)
        meters = CpuMeter([subscriber.pid]), CpuMeter(services.broker_pids), MachineMeter()
        for meter in meters:
            meter.start()
        reports = await publishing
        sub_cpu, broker_cpu, machine_cpu = (meter.percent() for meter in meters)
    finally:
        await subscriber.stop()
        if collector is not None:
            await collector
    _, offered, start, end = figures.offered(reports)
    received = figures.rate_between(samples, start + config.warmup_s, end)
    dropped = figures.rate_between(drops, start + config.warmup_s, end)
    if received is None or dropped is None:
        raise RuntimeError("too few samples from the bare subscriber: lengthen --bare-duration")
    return Baseline(
        received_per_s=received,
        dropped_per_s=dropped,
        target_per_s=config.bare_rate,
        offered_per_s=offered,
        subscriber_cpu_pct=sub_cpu,
        broker_cpu_pct=broker_cpu,
        publishers_cpu_pct=_percent(sum(r["cpu_s"] for r in reports), end - start),
        machine_cpu_pct=machine_cpu,
    )


async def _step(
    number: int,
    rate: float,
    config: Config,
    services: Services,
    ingester: IngesterProcess,
    bare_per_s: float,
) -> Step:
    database_url = database.database_url(config.server_url, config.database)
    backends = await database.backend_pids(database_url, config.database)
    committed_before = ingester.committed()
    start_at = time.time() + PUBLISHER_START_DELAY_S
    publishing = asyncio.create_task(
        run_publishers(
            services.mqtt_url,
            rate,
            config.step_s,
            config.publishers,
            config.devices,
            number,
            start_at,
        )
    )
    await _sleep_until(start_at)
    meters = (
        CpuMeter([ingester.pid]),
        CpuMeter(services.broker_pids),
        CpuMeter(backends),
        CpuMeter(services.redis_pids),
        MachineMeter(),
    )
    for meter in meters:
        meter.start()
    reports = await publishing
    ingester_cpu, broker_cpu, postgres_cpu, redis_cpu, machine_cpu = (m.percent() for m in meters)
    published, offered, start, end = figures.offered(reports)
    drain_timeout = DRAIN_TIMEOUT_STEPS * config.step_s + DRAIN_TIMEOUT_MIN_S
    drained = await ingester.wait_committed(committed_before + published, drain_timeout)
    committed = figures.committed_rate(ingester.lines, start + config.warmup_s, end)
    p50, p99 = figures.latency(ingester.lines, start, time.time())
    return Step(
        target_per_s=rate,
        offered_per_s=offered,
        published=published,
        committed_per_s=committed,
        ratio_to_bare=None if committed is None else committed / bare_per_s,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        drain_s=max(0.0, ingester.lines[-1].at - end) if drained else None,
        ingester_cpu_pct=ingester_cpu,
        ingester_peak_rss_mib=peak_rss_mib(ingester.pid),
        broker_cpu_pct=broker_cpu,
        postgres_cpu_pct=postgres_cpu,
        redis_cpu_pct=redis_cpu,
        publishers_cpu_pct=_percent(sum(r["cpu_s"] for r in reports), end - start),
        machine_cpu_pct=machine_cpu,
    )


def _say(text: str) -> None:
    """Progress, on stderr: stdout carries only the table and the JSON line."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


async def run(config: Config) -> Run:
    database_url = database.database_url(config.server_url, config.database)
    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-"))
    failed = True
    try:
        # Private servers: the machine's shared broker and Redis are never touched.
        with Mosquitto() as broker, Redis() as redis:
            services = Services(
                broker.url,
                children_named(os.getpid(), "mosquitto"),
                children_named(os.getpid(), "redis-server"),
            )
            env = child_env(
                FLEETPULSE_MQTT_URL=broker.url,
                FLEETPULSE_REDIS_URL=redis.url,
                FLEETPULSE_DATABASE_URL=database_url,
                FLEETPULSE_CLIENT_ID="bench-ingest",
                FLEETPULSE_TOPIC_PREFIX="fleet",
            )
            await database.recreate(config.server_url, config.database)
            await database.migrate(fleetpulse_command(), env)
            settings: dict[str, Any] = {**asdict(config), **_ingester_settings(env)}
            result = Run(await machine.describe(database_url), settings)
            _say(
                f"broker {broker.url}, redis {redis.url}, database {config.database}"
                f" (migrated), logs {workdir}"
            )

            offer = f"{config.bare_rate:,.0f} fixes/s" if config.bare_rate else "unpaced"
            _say(f"baseline: bare aiomqtt subscriber, offered {offer}, {config.bare_s:g} s")
            result.baseline = await _baseline(
                config, services, settings["FLEETPULSE_RECEIVE_MAXIMUM"]
            )
            _say(f"bare aiomqtt receive: {result.baseline.received_per_s:,.0f} msg/s")

            published, totals = await _ramp(result, config, services, env, workdir)
            counts = await database.stored_counts(database_url)
            result.verification = Verification(published, **counts, ingester_totals=totals)
        failed = False
        return result
    finally:
        if failed:
            _say(f"failed; logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _ramp(
    result: Run,
    config: Config,
    services: Services,
    env: dict[str, str],
    workdir: Path,
) -> tuple[int, dict[str, int]]:
    """Run the rate steps against one ingester; (fixes published, its final totals)."""
    assert result.baseline is not None
    ingester = IngesterProcess(env, workdir / "ingester.log")
    published = 0
    try:
        await ingester.start()
        for number, rate in enumerate(config.rates, start=1):
            _say(f"step {number}: {rate:,.0f} fixes/s for {config.step_s:g} s")
            step = await _step(
                number, rate, config, services, ingester, result.baseline.received_per_s
            )
            result.steps.append(step)
            published += step.published
            drain = "timed out" if step.drain_s is None else f"{step.drain_s:.1f} s"
            _say(
                f"offered {step.offered_per_s:,.0f}/s, committed"
                f" {step.committed_per_s or 0:,.0f}/s, backlog drained in {drain}"
            )
            if step.drain_s is None:
                _say("the ingester did not catch up: the ramp stops here")
                break
    finally:
        code = await ingester.stop()
        if code != 0:
            _say(f"the ingester exited with {code}; see {workdir / 'ingester.log'}")
    return published, ingester.lines[-1].totals if ingester.lines else {}
