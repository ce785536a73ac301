"""A simulated fleet as a stream of device messages in simulated time. Pure.

Every device reports every `interval_s`, devices staggered over the interval so the
load is even; each fix goes through the fault injector. Fix times are the fleet's start
plus simulated seconds: ideal report times, whatever the publishing lags behind. A run of
`duration_s` gives each device exactly `ticks` fixes, so the number of fixes a run must
store is known in advance.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fleetpulse.simulation.drones import Drone, DroneSpec
from fleetpulse.simulation.faults import FaultConfig, FaultInjector
from fleetpulse.simulation.messages import Outgoing, delivery_report, epoch_ms
from fleetpulse.simulation.streets import depot_node, stop_candidates
from fleetpulse.simulation.vehicles import SERVICE_S, STOPS_PER_ROUND, Van
from mqtt.payloads import FixPayload
from tracker.positions import DeviceKind
from tracker.roads import RoadGraph
from tracker.routing import Router, RoutingRules

VAN_ACC_M = 5.0  # a GPS unit's usual horizontal accuracy in a street
DRONE_ACC_M = 2.0
SEARCH_CACHE_MIB = 64.0  # routes in flight for the vans: memory kept for route searches
_POSITION_DIGITS = 7  # ~1 cm: more digits only cost bytes


@dataclass(frozen=True)
class FleetConfig:
    vans: int = 3
    drones: int = 0
    interval_s: float = 5.0
    duration_s: float | None = None  # None: until stopped
    radius_m: float = 3_000.0  # stops and drone destinations around the centre
    stops_per_van: int = STOPS_PER_ROUND
    service_s: float = SERVICE_S
    device_prefix: str = "sim-"
    seed: int = 1
    faults: FaultConfig = field(default_factory=FaultConfig)
    drone: DroneSpec = field(default_factory=DroneSpec)

    def __post_init__(self) -> None:
        if self.vans < 0 or self.drones < 0 or self.vans + self.drones == 0:
            raise ValueError("a fleet needs at least one van or drone")
        if not self.interval_s > 0:
            raise ValueError(f"the report interval must be positive, got {self.interval_s}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"the duration must be positive, got {self.duration_s}")
        if not self.radius_m > 0:
            raise ValueError(f"the radius must be positive, got {self.radius_m}")
        if self.stops_per_van < 1:
            raise ValueError(f"a van needs at least one stop per round, got {self.stops_per_van}")
        if not self.service_s >= 0:
            raise ValueError(f"the service time must be 0 or more, got {self.service_s}")

    @property
    def ticks(self) -> int | None:
        """Fixes each device reports in a run, None when it runs until stopped."""
        if self.duration_s is None:
            return None
        return max(1, math.ceil(self.duration_s / self.interval_s - 1e-9))

    def van_id(self, index: int) -> str:
        return f"{self.device_prefix}van-{index:03d}"

    def drone_id(self, index: int) -> str:
        return f"{self.device_prefix}drone-{index:03d}"


@dataclass
class SimDevice:
    id: str
    model: Van | Drone
    offset_s: float  # its first report, seconds after the fleet's start
    reports: int = 0
    clock_s: float = 0.0


class Fleet:
    def __init__(
        self,
        config: FleetConfig,
        devices: list[SimDevice],
        started_at: datetime,
        faults: FaultInjector,
    ) -> None:
        self.config = config
        self.devices = devices
        self.started_at = started_at
        self.faults = faults
        self.generated = 0  # fixes produced (each comes out exactly once)
        # (van id, round, sequence) -> delivery id: the stops deliveries were created for.
        self.deliveries: dict[tuple[str, int, int], str] = {}
        self.reports = 0
        self._due = [(d.offset_s, i) for i, d in enumerate(devices)]
        heapq.heapify(self._due)

    @property
    def vans(self) -> list[tuple[SimDevice, Van]]:
        return [(d, d.model) for d in self.devices if isinstance(d.model, Van)]

    def next_time_s(self) -> float | None:
        """When something is next due (a report, a held message), None when done."""
        times = [self._due[0][0]] if self._due else []
        release = self.faults.next_release_s()
        if release is not None:
            times.append(release)
        return min(times, default=None)

    def advance_to(self, now_s: float) -> list[Outgoing]:
        """Everything due up to `now_s`, in time order."""
        out: list[Outgoing] = []
        while True:
            release = self.faults.next_release_s()
            report = self._due[0][0] if self._due else None
            if release is not None and release <= now_s and (report is None or release <= report):
                out.extend(self.faults.due(release))
            elif report is not None and report <= now_s:
                out.extend(self._report(*heapq.heappop(self._due)))
            else:
                return out

    def finish(self) -> list[Outgoing]:
        """What is still held back when the run ends."""
        return self.faults.drain()

    def time_of(self, seconds: float) -> datetime:
        return self.started_at + timedelta(seconds=seconds)

    def _report(self, t: float, index: int) -> list[Outgoing]:
        device = self.devices[index]
        out: list[Outgoing] = []
        if device.reports:
            step = t - device.clock_s
            if isinstance(device.model, Van):
                for served in device.model.advance(step):
                    delivery = self.deliveries.get(
                        (device.id, served.stop.round, served.stop.sequence)
                    )
                    if delivery is not None:
                        at = self.time_of(device.offset_s + served.at_s)
                        out.append(delivery_report(device.id, delivery, at, "simulated drop"))
                        self.reports += 1
            else:
                device.model.advance(step)
        device.clock_s = t
        fix = self._fix(device, t)
        device.reports += 1
        self.generated += 1
        if self.config.ticks is None or device.reports < self.config.ticks:
            heapq.heappush(self._due, (t + self.config.interval_s, index))
        out.extend(self.faults.feed(t, device.id, fix))
        return out

    def _fix(self, device: SimDevice, t: float) -> FixPayload:
        ts = epoch_ms(self.time_of(t))
        seq = device.reports
        if isinstance(device.model, Van):
            van = device.model.state()
            return FixPayload(
                ts=ts,
                lat=round(van.lat, _POSITION_DIGITS),
                lon=round(van.lon, _POSITION_DIGITS),
                speed=round(van.speed_mps, 2),
                heading=round(van.heading_deg, 1),
                acc=VAN_ACC_M,
                kind=DeviceKind.VEHICLE,
                seq=seq,
            )
        drone = device.model.state()
        return FixPayload(
            ts=ts,
            lat=round(drone.lat, _POSITION_DIGITS),
            lon=round(drone.lon, _POSITION_DIGITS),
            alt=round(drone.alt_m, 2),
            rel_alt=round(drone.rel_alt_m, 2),
            speed=round(drone.speed_mps, 2),
            heading=round(drone.heading_deg, 1),
            acc=DRONE_ACC_M,
            battery=round(drone.battery_pct, 1),
            kind=DeviceKind.DRONE,
            seq=seq,
        )


def build_fleet(
    config: FleetConfig,
    graph: RoadGraph,
    centre: tuple[float, float],
    started_at: datetime | None = None,
) -> Fleet:
    """Vans on `graph` with stops within the radius of `centre`; drones based at the
    depot (the road node nearest the centre). Seeded: the same config, the same fleet."""
    rng = random.Random(config.seed)
    depot = depot_node(graph, centre)
    devices: list[SimDevice] = []
    if config.vans:
        candidates = stop_candidates(graph, centre, config.radius_m)
        router = Router(graph, None, UTC, RoutingRules(search_cache_mib=SEARCH_CACHE_MIB))
        for i in range(1, config.vans + 1):
            device_id = config.van_id(i)
            van = Van(
                graph,
                router,
                depot,
                candidates,
                random.Random(f"{config.seed}:{device_id}"),
                stops_per_round=config.stops_per_van,
                service_s=config.service_s,
            )
            devices.append(SimDevice(device_id, van, rng.uniform(0, config.interval_s)))
    base = (graph.lat[depot], graph.lon[depot])
    for i in range(1, config.drones + 1):
        device_id = config.drone_id(i)
        drone = Drone(base, random.Random(f"{config.seed}:{device_id}"), config.drone)
        devices.append(SimDevice(device_id, drone, rng.uniform(0, config.interval_s)))
    faults = FaultInjector(config.faults, random.Random(f"{config.seed}:faults"))
    return Fleet(config, devices, started_at or datetime.now(UTC), faults)
