"""The two bare ceilings measured in the same run, on the same private broker, before
FleetPulse starts (nothing of it is subscribed yet, so nothing queues for it):

- the broker's: unpaced publishers to a subscriber that only acknowledges and counts
  (`bench.e2e.bare_broker`): what Mosquitto routes publish→subscribe on this machine;
- the MQTT client's: stock aiomqtt at the top step's rate, exactly as `bench.ingest`
  measures it (its `_baseline`, reused rather than copied).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.ingest import figures
from bench.ingest import run as ingest_run
from bench.ingest.children import PUBLISHER_START_DELAY_S, Child, python_module, run_publishers
from bench.ingest.procstat import CpuMeter, MachineMeter

BROKER_FILTER = "$share/e2e-bare-broker/fleet/+/telemetry"
READY_TIMEOUT_S = 30.0
# The ingester's default; aiomqtt's queue is bounded to two of these windows.
RECEIVE_MAXIMUM = "4000"
# Left out at the start: connections and the broker's queues settling.
WARMUP_S = 1.0


@dataclass(frozen=True)
class Ceiling:
    what: str
    received_per_s: float
    offered_per_s: float
    target_per_s: float  # 0: publishers unpaced
    dropped_per_s: float  # by the subscriber's own bounded queue
    subscriber_cpu_pct: float
    broker_cpu_pct: float
    publishers_cpu_pct: float
    machine_cpu_pct: float


async def broker(
    url: str,
    broker_pids: list[int],
    duration_s: float,
    publishers: int,
    devices: int,
) -> Ceiling:
    subscriber = await Child.start(
        "bare-broker",
        python_module("bench.e2e.bare_broker", f"--url={url}", f"--filter={BROKER_FILTER}"),
    )
    samples: list[tuple[float, int]] = []

    async def collect() -> None:
        while (line := await subscriber.read_json_line()) is not None:
            if "received" in line:
                samples.append((float(line["t"]), int(line["received"])))

    collector: asyncio.Task[None] | None = None
    try:
        if await asyncio.wait_for(subscriber.read_json_line(), READY_TIMEOUT_S) is None:
            raise RuntimeError("the bare broker subscriber exited before subscribing")
        collector = asyncio.create_task(collect(), name="e2e-bare-broker-samples")
        start_at = time.time() + PUBLISHER_START_DELAY_S
        publishing = asyncio.create_task(
            run_publishers(url, 0.0, duration_s, publishers, devices, 0, start_at)
        )
        await asyncio.sleep(max(0.0, start_at - time.time()))
        meters = CpuMeter([subscriber.pid]), CpuMeter(broker_pids), MachineMeter()
        for meter in meters:
            meter.start()
        reports = await publishing
        sub_cpu, broker_cpu, machine_cpu = (meter.percent() for meter in meters)
    finally:
        await subscriber.stop()
        if collector is not None:
            await collector
    _, offered, start, end = figures.offered(reports)
    received = figures.rate_between(samples, start + WARMUP_S, end)
    if received is None:
        raise RuntimeError("too few samples from the bare broker subscriber")
    return Ceiling(
        what="broker (publish→subscribe, raw MQTT v5 QoS 1, publishers unpaced)",
        received_per_s=received,
        offered_per_s=offered,
        target_per_s=0.0,
        dropped_per_s=0.0,
        subscriber_cpu_pct=sub_cpu,
        broker_cpu_pct=broker_cpu,
        publishers_cpu_pct=100.0 * sum(r["cpu_s"] for r in reports) / max(end - start, 1e-9),
        machine_cpu_pct=machine_cpu,
    )


async def mqtt_client(
    url: str,
    broker_pids: list[int],
    redis_pids: list[int],
    rate: float,
    duration_s: float,
    publishers: int,
    devices: int,
) -> Ceiling:
    config = ingest_run.Config(
        rates=(rate,),
        step_s=duration_s,
        bare_s=duration_s,
        bare_rate=rate,
        warmup_s=WARMUP_S,
        publishers=publishers,
        devices=devices,
        server_url="",  # the baseline touches no database
        database="",
    )
    services = ingest_run.Services(url, broker_pids, redis_pids)
    baseline = await ingest_run._baseline(config, services, RECEIVE_MAXIMUM)
    return Ceiling(
        what="MQTT client (stock aiomqtt subscriber, as bench.ingest measures it)",
        received_per_s=baseline.received_per_s,
        offered_per_s=baseline.offered_per_s,
        target_per_s=baseline.target_per_s,
        dropped_per_s=baseline.dropped_per_s,
        subscriber_cpu_pct=baseline.subscriber_cpu_pct,
        broker_cpu_pct=baseline.broker_cpu_pct,
        publishers_cpu_pct=baseline.publishers_cpu_pct,
        machine_cpu_pct=baseline.machine_cpu_pct,
    )
