"""Where the time goes during the measured window, sampled every second or two:

- the CPU of every process the benchmark started, one by one (from /proc): a process
  whose reading fails (it exited) keeps its last good reading, so a figure is always
  CPU used between two readings of a live process over the time between them (never
  negative, never counting the CPU of a process that has gone as a loss);
- each web worker's dispatch outboxes (frames waiting to be sent) and clients, from its
  own `/metrics` (every worker listens on a port of its own for the benchmark);
- the bytes the kernel holds between the web workers and the clients (/proc/net/tcp):
  sent by a worker but not yet taken by the client's socket, and received by a client's
  socket but not yet read by the client process. Bytes waiting on the client side mean
  the clients, not the server, are behind;
- the feed the web workers have not read yet: bytes published on Redis waiting in their
  subscription sockets (the kernel's receive buffers, up to `tcp_rmem`'s maximum) and in
  Redis's output buffers for them. This is where a worker that cannot keep up with the
  bus leaves its backlog: its outboxes stay short, yet every message it sends is late;
- the tracker's lag behind the hand-off streams (`fleetpulse_tracker_lag_seconds`);
- the machine's time in interrupts (softirq: loopback TCP's work is done there; it is
  charged to the interrupted process too) and stolen by the hypervisor;
- how long each process was runnable but had no core (its main thread's run-queue wait,
  /proc/<pid>/schedstat): a process that waits most of the time is starved by the
  machine, however little CPU it shows.

The sampler runs in its own tasks, so a worker slow to answer `/metrics` delays none of
the CPU readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from bench.ingest.procstat import CLOCK_TICKS_PER_S, machine_busy_s

CPU_EVERY_S = 1.0
SCRAPE_EVERY_S = 2.0
SCRAPE_TIMEOUT_S = 5.0
TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TRACKER_LAG = "fleetpulse_tracker_lag_seconds"
# /proc/<pid>/stat fields after the command name: utime and stime.
_UTIME, _STIME = 14 - 3, 15 - 3


@dataclass(frozen=True)
class Reading:
    """One process at one time: CPU ticks used (all threads) and nanoseconds its main
    thread has waited, runnable, for a core (/proc/<pid>/schedstat)."""

    at: float  # monotonic seconds
    ticks: int
    waited_ns: int


def read_process(pid: int, at: float) -> Reading | None:
    """None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        sched = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return Reading(at, int(fields[_UTIME]) + int(fields[_STIME]), int(sched[1]))


@dataclass
class ProcessTrack:
    """First and last good readings of one process. A process that has exited keeps
    its last reading: its figures cover the time it was seen alive, never less."""

    first: Reading | None = None
    last: Reading | None = None

    def add(self, reading: Reading | None) -> None:
        if reading is None:
            return
        if self.first is None:
            self.first = reading
        self.last = reading

    def _span(self) -> tuple[Reading, Reading, float] | None:
        if self.first is None or self.last is None or self.last.at <= self.first.at:
            return None
        return self.first, self.last, self.last.at - self.first.at

    def cpu_percent(self) -> float | None:
        """CPU used, % of one core."""
        span = self._span()
        if span is None:
            return None
        first, last, seconds = span
        return 100.0 * (last.ticks - first.ticks) / CLOCK_TICKS_PER_S / seconds

    def waiting_percent(self) -> float | None:
        """Time runnable but waiting for a core, % of the time (main thread)."""
        span = self._span()
        if span is None:
            return None
        first, last, seconds = span
        return 100.0 * (last.waited_ns - first.waited_ns) / 1e9 / seconds


def every_process() -> dict[int, tuple[str, int]]:
    """Every process's (command name, CPU ticks used so far)."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = text[text.rindex(")") + 2 :].split()
        name = text[text.index("(") + 1 : text.rindex(")")]
        out[int(entry.name)] = (name, int(fields[_UTIME]) + int(fields[_STIME]))
    return out


def busiest_others(
    before: dict[int, tuple[str, int]],
    after: dict[int, tuple[str, int]],
    ours: set[int],
    seconds: float,
    top: int = 5,
) -> dict[str, float]:
    """The processes not of this run that used the most CPU between two readings of
    `every_process`, by command name, % of a core (those that started or ended in
    between are not seen)."""
    by_name: dict[str, float] = {}
    for pid, (name, ticks) in after.items():
        if pid in ours or pid not in before:
            continue
        used = 100.0 * (ticks - before[pid][1]) / CLOCK_TICKS_PER_S / max(seconds, 1e-9)
        by_name[name] = by_name.get(name, 0.0) + used
    busiest = sorted(by_name.items(), key=lambda item: -item[1])[:top]
    return {name: round(pct, 1) for name, pct in busiest if pct >= 0.5}


@dataclass(frozen=True)
class SocketQueues:
    """Bytes the kernel holds, summed over sockets (see `socket_queues`)."""

    unsent: int = 0  # sent by the web workers, not yet in their clients' sockets
    unread: int = 0  # in the clients' sockets, not yet read by the client processes
    feed_unread: int = 0  # from Redis, not yet read by the processes subscribed to it

    def __add__(self, other: SocketQueues) -> SocketQueues:
        return SocketQueues(
            self.unsent + other.unsent,
            self.unread + other.unread,
            self.feed_unread + other.feed_unread,
        )


def tcp_queues(server_ports: Iterable[int], redis_port: int) -> SocketQueues:
    """`socket_queues` over the IPv4 and IPv6 tables."""
    total = SocketQueues()
    for table in TCP_TABLES:
        try:
            text = table.read_text()
        except FileNotFoundError:
            continue
        total += socket_queues(text, server_ports, redis_port)
    return total


def socket_queues(table: str, server_ports: Iterable[int], redis_port: int) -> SocketQueues:
    """The queues of one /proc/net/tcp{,6} text. Both ends of a loopback connection are
    listed: the end whose local port is a web worker's counts its send queue, the end
    whose remote port is a worker's its receive queue, and the end whose remote port is
    Redis's its receive queue (what Redis sent that process and it has not read)."""
    ports = set(server_ports)
    unsent = unread = feed_unread = 0
    for line in table.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        local_port = int(parts[1].rsplit(":", 1)[1], 16)
        remote_port = int(parts[2].rsplit(":", 1)[1], 16)
        tx, rx = (int(v, 16) for v in parts[4].split(":"))
        if local_port in ports:
            unsent += tx
        elif remote_port in ports:
            unread += rx
        elif remote_port == redis_port:
            feed_unread += rx
    return SocketQueues(unsent, unread, feed_unread)


async def redis_pubsub_backlog(client: redis.Redis) -> int:
    """Bytes Redis holds in its output buffers for pub/sub subscribers (CLIENT LIST omem)."""
    total = 0
    for entry in await client.client_list():
        if int(entry.get("sub", 0)) or int(entry.get("psub", 0)):
            total += int(entry.get("omem", 0))
    return total


def interrupt_ticks() -> tuple[int, int]:
    """(irq + softirq, steal) ticks since boot over all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[5] + fields[6], fields[7]


def spread(values: list[float]) -> dict[str, float] | None:
    """min / median / max of a series; None when empty."""
    if not values:
        return None
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


class Sampler:
    """Started at the window's start, stopped just before its end (the clients exit at
    its end); `report()` summarises what it saw."""

    def __init__(
        self,
        processes: dict[str, list[int]],
        groups: dict[str, list[str]],
        workers: dict[str, str],
        ports: list[int],
        redis_url: str,
        redis_port: int,
    ) -> None:
        """`processes`: name -> pids (a PostgreSQL server has several); `groups`: a
        label -> the names of the processes it sums; `workers`: worker name -> base URL."""
        self.processes = processes
        self.groups = groups
        self.workers = workers
        self.ports = ports
        self.redis_port = redis_port
        self._redis = redis.Redis.from_url(redis_url)
        self._cpu = {pid: ProcessTrack() for pids in processes.values() for pid in pids}
        self._machine: list[tuple[float, float]] = []
        self._interrupts: list[tuple[int, int]] = []
        self.scrapes: dict[str, list[dict[str, float] | None]] = {w: [] for w in workers}
        self.tracker_lag_s: list[float] = []
        self.unsent_kib: list[float] = []
        self.unread_kib: list[float] = []
        self.feed_unread_kib: list[float] = []
        self.feed_in_redis_kib: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._everyone_before: tuple[float, dict[int, tuple[str, int]]] = (0.0, {})
        self._everyone_after: tuple[float, dict[int, tuple[str, int]]] = (0.0, {})

    def start(self, http: aiohttp.ClientSession) -> None:
        self._everyone_before = (time.monotonic(), every_process())
        self._read_cpu()
        self._tasks = [
            asyncio.create_task(self._cpu_forever(), name="ws-bench-cpu"),
            asyncio.create_task(self._redis_forever(), name="ws-bench-redis"),
        ]
        self._tasks += [
            asyncio.create_task(self._scrape_forever(http, name, base), name=f"scrape-{name}")
            for name, base in self.workers.items()
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._read_cpu()
        self._everyone_after = (time.monotonic(), every_process())
        await self._redis.aclose()

    def _read_cpu(self) -> None:
        at = time.monotonic()
        for pid, track in self._cpu.items():
            track.add(read_process(pid, at))
        self._machine.append(machine_busy_s())
        self._interrupts.append(interrupt_ticks())

    async def _cpu_forever(self) -> None:
        while True:
            await asyncio.sleep(CPU_EVERY_S)
            self._read_cpu()
            # The kernel's socket table of 10,000 clients is read in a thread: a few
            # tens of milliseconds the event loop would otherwise stall for.
            queues = await asyncio.to_thread(tcp_queues, self.ports, self.redis_port)
            self.unsent_kib.append(queues.unsent / 1024)
            self.unread_kib.append(queues.unread / 1024)
            self.feed_unread_kib.append(queues.feed_unread / 1024)

    async def _redis_forever(self) -> None:
        while True:
            await asyncio.sleep(SCRAPE_EVERY_S)
            with contextlib.suppress(redis.RedisError, OSError):
                self.feed_in_redis_kib.append(await redis_pubsub_backlog(self._redis) / 1024)

    async def _scrape_forever(self, http: aiohttp.ClientSession, name: str, base: str) -> None:
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                    values = await scrape_ws(http, base)
                lag = values.pop(TRACKER_LAG, None)
                if lag is not None:
                    self.tracker_lag_s.append(lag)
                self.scrapes[name].append(values)
            except (TimeoutError, aiohttp.ClientError):
                self.scrapes[name].append(None)  # it did not answer in time: counted
            await asyncio.sleep(max(0.0, SCRAPE_EVERY_S - (time.monotonic() - started)))

    def last_levels(self, workers: int) -> list[dict[str, float]]:
        """Each worker's figures from the last round of scrapes every worker answered."""
        rounds = list(zip(*self.scrapes.values(), strict=False))
        for samples in reversed(rounds):
            if all(s is not None for s in samples):
                return [s for s in samples if s is not None]
        return [{} for _ in range(workers)]

    def cpu_percent(self, name: str) -> float | None:
        """One process's (or a PostgreSQL server's backends') CPU % over the window."""
        values = [self._cpu[pid].cpu_percent() for pid in self.processes[name]]
        known = [v for v in values if v is not None]
        return round(sum(known), 1) if known else None

    def waiting_percent(self, name: str) -> float | None:
        """How much of the window a process was runnable but had no core (the most
        waiting of a PostgreSQL server's backends)."""
        values = [self._cpu[pid].waiting_percent() for pid in self.processes[name]]
        known = [v for v in values if v is not None]
        return round(max(known), 1) if known else None

    def report(self) -> dict[str, Any]:
        per_process = {name: self.cpu_percent(name) for name in self.processes}
        groups = {
            label: round(sum(per_process[n] or 0.0 for n in names), 1)
            for label, names in self.groups.items()
        }
        (busy0, t0), (busy1, t1) = self._machine[0], self._machine[-1]
        machine = round(100.0 * (busy1 - busy0) / max(t1 - t0, 1e-9), 1)
        groups["machine"] = machine
        (irq0, steal0), (irq1, steal1) = self._interrupts[0], self._interrupts[-1]
        seconds = max(t1 - t0, 1e-9) * CLOCK_TICKS_PER_S
        groups["interrupts"] = round(100.0 * (irq1 - irq0) / seconds, 1)
        groups["steal"] = round(100.0 * (steal1 - steal0) / seconds, 1)
        # Interrupt time is also charged to the process it interrupted (tick-based
        # accounting), so it is shown, not subtracted. What neither a process of this run
        # nor the hypervisor used is the background.
        ours = sum(v for v in per_process.values() if v is not None)
        groups["others"] = round(machine - ours - groups["steal"], 1)
        queued = []
        for samples in zip(*self.scrapes.values(), strict=False):
            if all(s is not None for s in samples):
                queued.append(sum(s.get("ws_dispatch_queued", 0.0) for s in samples if s))
        ours_pids = {pid for pids in self.processes.values() for pid in pids}
        (at0, everyone0), (at1, everyone1) = self._everyone_before, self._everyone_after
        return {
            "cpu_pct": groups,
            "busiest_others_pct": busiest_others(everyone0, everyone1, ours_pids, at1 - at0),
            "cpu_pct_per_process": per_process,
            "waiting_for_cpu_pct": {name: self.waiting_percent(name) for name in self.processes},
            "dispatch_queued": spread(queued),
            "dispatch_queued_series": [round(q) for q in queued],
            "scrapes_unanswered": {
                name: sum(1 for s in samples if s is None) for name, samples in self.scrapes.items()
            },
            "kernel_unsent_kib": spread(self.unsent_kib),
            "kernel_unread_kib": spread(self.unread_kib),
            "feed_unread_kib": spread(self.feed_unread_kib),
            "feed_unread_kib_series": [round(v) for v in self.feed_unread_kib],
            "feed_in_redis_kib": spread(self.feed_in_redis_kib),
            "tracker_lag_s": spread(self.tracker_lag_s),
        }


async def scrape_ws(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """One web worker's websocket figures from its `/metrics`, and the tracker's lag."""
    async with http.get(f"{base}/metrics") as resp:
        resp.raise_for_status()
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("fleetpulse_ws_") and not sample.name.endswith("_created"):
                name = sample.name.removeprefix("fleetpulse_")
                values[name] = values.get(name, 0.0) + sample.value
            elif sample.name == TRACKER_LAG:  # per partition: the worst one
                values[TRACKER_LAG] = max(values.get(TRACKER_LAG, 0.0), sample.value)
    return values
