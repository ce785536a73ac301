"""`fleetpulse demo`: the whole platform and a simulated fleet on one machine, in one
command, until Ctrl-C.

Which services it uses: each one whose URL is given (FLEETPULSE_DATABASE_URL,
FLEETPULSE_REDIS_URL, FLEETPULSE_MQTT_URL or their flags) is used as given; every other
one is embedded (`fleetpulse.embedded`, the `fleetpulse[embedded]` extra) in the data
directory. Servers that merely listen on the default ports are not used unasked: the
demo writes tokens, fences and deliveries, which do not belong in a database nobody
pointed it at.

Then it migrates the database, writes a few fences around the fleet's centre, creates a
dispatcher token, runs every stage (ingest, tracker, web) and the simulated fleet with
its deliveries, and prints the dispatch URL, the token and a few customer links. On
Ctrl-C (or SIGTERM) the stages stop first, as `fleetpulse run` stops them, then the
fleet, then the demo's deliveries are cancelled and its token revoked (they must not
outlive it in a real database), and the embedded servers stop last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from fleetpulse import app
from fleetpulse.arguments import lat_lon, positive, whole
from fleetpulse.database import connect
from fleetpulse.embedded import (
    BROKER_CHOICES,
    BrokerChoice,
    EmbeddedServers,
    Wanted,
    default_data_dir,
    mqtt_answers,
)
from fleetpulse.errors import FleetPulseError
from fleetpulse.local_servers import free_port
from fleetpulse.settings import OPTIONS, Settings
from fleetpulse.simulation import runner
from fleetpulse.simulation.commands import AddCommand
from fleetpulse.simulation.deliveries import CreatedDelivery
from fleetpulse.simulation.fleet import FleetConfig
from fleetpulse.simulation.geo import offset
from fleetpulse.simulation.streets import graph_centre, load_extract
from tracker import delivery_store, geojson
from tracker import store as tracker_store
from tracker.deliveries import DeliveryState
from tracker.fences import Fence
from web import auth
from web.auth import Role

log = logging.getLogger("fleetpulse.demo")

SERVICE_FIELDS = ("database_url", "redis_url", "mqtt_url")
ACCESS_LOGGER = "fleetpulse.web.access"
DEVICE_PREFIX = "demo-"
TOKEN_NAME = "fleetpulse demo"
FENCE_PREFIX = "demo-"
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.2
WATCH_EVERY_S = 5.0  # how often the embedded servers are checked while the demo runs
FLEET_STOP_TIMEOUT_S = 45.0  # the fleet's publisher drains its queues for up to 30 s
DEPOT_RADIUS_M = 250.0
DEPOT_DWELL_S = 300
NO_FLY_RADIUS_M = 350.0
NO_FLY_OFFSET_M = (600.0, 900.0)  # north, east of the centre: inside the drones' range
CENTRE_HALF_SIDE_M = 1_200.0


@dataclass(frozen=True)
class DemoOptions:
    vans: int = 8
    drones: int = 3
    interval_s: float = 2.0  # a lively map; `simulate` defaults to 5 s
    radius_m: float = 2_500.0
    centre: tuple[float, float] | None = None
    grid: bool = False  # a synthetic grid even when FLEETPULSE_OSM_PBF is set
    seed: int = 1
    links: int = 3  # customer tracking links printed
    data_dir: Path = field(default_factory=default_data_dir)
    broker: BrokerChoice = "auto"
    fresh: bool = False  # start the embedded servers from an empty data directory


def configured(env: Mapping[str, str], flags: Mapping[str, str | None]) -> frozenset[str]:
    """Settings given explicitly, by flag or environment (by field name)."""
    return frozenset(
        option.field
        for option in OPTIONS
        if flags.get(option.field) is not None or option.env in env
    )


def wanted_servers(given: frozenset[str], broker: BrokerChoice, inflight: int) -> Wanted:
    return Wanted(
        postgres="database_url" not in given,
        redis="redis_url" not in given,
        mqtt="mqtt_url" not in given,
        broker=broker,
        inflight=inflight,
    )


def _feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _point(lat: float, lon: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def demo_fences(centre: tuple[float, float]) -> list[Fence]:
    """The depot the fleet leaves from, a city-centre zone for the vans and a no-fly zone
    in the drones' range, around `centre`. Validated as any imported fence is."""
    lat, lon = centre
    south, west = offset(lat, lon, -CENTRE_HALF_SIDE_M, -CENTRE_HALF_SIDE_M)
    north, east = offset(lat, lon, CENTRE_HALF_SIDE_M, CENTRE_HALF_SIDE_M)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    no_fly = offset(lat, lon, *NO_FLY_OFFSET_M)
    features = [
        _feature(
            _point(lat, lon),
            id=f"{FENCE_PREFIX}depot",
            name="Depot",
            radius_m=DEPOT_RADIUS_M,
            dwell_s=DEPOT_DWELL_S,
            tags=["depot"],
        ),
        _feature(
            {"type": "Polygon", "coordinates": [ring]},
            id=f"{FENCE_PREFIX}city-centre",
            name="City centre (low-emission zone)",
            kinds=["vehicle"],
        ),
        _feature(
            _point(*no_fly),
            id=f"{FENCE_PREFIX}no-fly",
            name="No-fly zone (hospital helipad)",
            radius_m=NO_FLY_RADIUS_M,
            kinds=["drone"],
            altitude={"floor_m": 0, "ceiling_m": 500, "datum": "takeoff"},
            tags=["no-fly"],
        ),
    ]
    return [geojson.parse_feature(f, i) for i, f in enumerate(features)]


def _port_free(host: str, port: int) -> bool:
    # No SO_REUSEPORT here, unlike the web app: a web app already on the port (which
    # would share it with ours and answer half the requests) makes it count as taken.
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def demo_settings(
    settings: Settings, given: frozenset[str], servers: EmbeddedServers | None
) -> Settings:
    """The settings the demo runs with: the embedded servers' URLs, a free web port when
    the default one is taken, and an ingester client id of its own."""
    changes: dict[str, Any] = {}
    if servers is not None:
        if servers.postgres is not None:
            changes["database_url"] = servers.database_url
        if servers.redis is not None:
            changes["redis_url"] = servers.redis_url
        if servers.broker is not None:
            changes["mqtt_url"] = servers.mqtt_url
    if "web_port" not in given and not _port_free(settings.web_host, settings.web_port):
        changes["web_port"] = free_port()
        log.warning(
            "port %d is taken; the demo's web app uses %d (FLEETPULSE_WEB_PORT chooses)",
            settings.web_port,
            changes["web_port"],
        )
    if "client_id" not in given:
        # Its persistent session must not be that of a `fleetpulse run` on this host.
        changes["client_id"] = f"fleetpulse-demo-{socket.gethostname()}"[:64]
    return dataclasses.replace(settings, **changes)


@dataclass
class Prepared:
    token_id: str
    token: str
    centre: tuple[float, float]
    osm_pbf: str


async def _prepare(settings: Settings, options: DemoOptions) -> Prepared:
    await app.prepare_database(settings)
    osm_pbf = "" if options.grid else settings.osm_pbf
    centre = options.centre
    if centre is None and osm_pbf:
        # The simulator centres on the extract's middle; the fences must agree with it.
        centre = graph_centre(await asyncio.to_thread(load_extract, osm_pbf))
    centre = centre or runner.DEFAULT_CENTRE
    conn = await connect(settings.database_url)
    try:
        fences = demo_fences(centre)
        await tracker_store.save_fences(
            conn, [(f.id, f.name, geojson.to_feature(f)) for f in fences]
        )
        token_id, token = await auth.create_token(conn, TOKEN_NAME, Role.DISPATCHER)
    finally:
        await conn.close()
    return Prepared(token_id, token, centre, osm_pbf)


async def _wait_ready(settings: Settings, stages: asyncio.Task[None]) -> None:
    """Until the web app says it is ready (PostgreSQL and Redis answer through it)."""
    host = settings.web_host
    if host in ("", "0.0.0.0", "::"):  # every address: this machine's loopback is one
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.web_port}/readyz"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while loop.time() < deadline:
            if stages.done():
                return  # ended (a signal or a failure): the caller learns which
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(READY_POLL_S)
    raise FleetPulseError(f"the web app was not ready at {url} within {READY_TIMEOUT_S:.0f} s")


def banner(
    settings: Settings,
    prepared: Prepared,
    created: Sequence[CreatedDelivery],
    options: DemoOptions,
    where: str,
) -> str:
    base = settings.web_base_url
    lines = [
        "",
        f"FleetPulse demo: {options.vans} vans and {options.drones} drones around "
        f"{prepared.centre[0]:.5f},{prepared.centre[1]:.5f} ({where})",
        f"  dispatch:  {base}/dispatch#token={prepared.token}",
        f"  token:     {prepared.token}  (dispatcher; REST: Authorization: Bearer <token>)",
    ]
    # Each van's next stop first: the links a customer would be watching right now.
    shown = sorted(created, key=lambda d: (d.sequence, d.vehicle_id))[: options.links]
    for i, delivery in enumerate(shown):
        label = "customers:" if i == 0 else ""
        lines.append(
            f"  {label:<10} {delivery.tracking_url}  "
            f"({delivery.id}, stop {delivery.sequence} of {delivery.vehicle_id})"
        )
    lines += [f"  API docs:  {base}/api/docs", "Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


async def _finish_demo_records(settings: Settings, token_id: str, deliveries: list[str]) -> None:
    """Cancel the demo's unfinished deliveries and revoke its token: in a configured
    database they would otherwise raise late alerts and grant access for good."""
    conn = await connect(settings.database_url)
    try:
        cancelled = 0
        now = datetime.now(UTC)
        for delivery_id in deliveries:
            with contextlib.suppress(delivery_store.DeliveryConflict):  # finished already
                async with conn.transaction():
                    events = await delivery_store.report(
                        conn, delivery_id, DeliveryState.CANCELLED, now, "the demo stopped"
                    )
                    await tracker_store.save_events(conn, events)
                    cancelled += 1
        await auth.revoke_token(conn, token_id, actor="demo")
    finally:
        await conn.close()
    log.info("demo token revoked; %d unfinished demo deliveries cancelled", cancelled)


def _stop_stages(stages: asyncio.Task[None]) -> None:
    """Ask `run_stages` to stop as Ctrl-C would: it owns SIGINT and SIGTERM while it runs
    (and only then: a signal after it has ended would find no handler)."""
    if not stages.done():
        signal.raise_signal(signal.SIGTERM)


async def _watch_servers(
    servers: EmbeddedServers, stages: asyncio.Task[None], failed: list[str]
) -> None:
    """A server that died, or a broker that stopped answering (see
    `fleetpulse.embedded.IOTCORE_DEFECT`), stops the demo instead of leaving a platform
    that silently receives nothing."""
    while not stages.done():
        await asyncio.sleep(WATCH_EVERY_S)
        problems = [f"the embedded {name} exited" for name in servers.dead()]
        broker = servers.broker
        if (
            broker is not None
            and broker.running()
            and not await asyncio.to_thread(mqtt_answers, broker.port)
        ):
            problems.append(f"the embedded {broker.name} broker stopped answering MQTT")
        if problems:
            failed.extend(problems)
            log.error("%s; stopping the demo", "; ".join(problems))
            _stop_stages(stages)
            return


def _fleet_ended(
    stages: asyncio.Task[None], failed: list[str]
) -> Callable[[asyncio.Task[Any]], None]:
    def ended(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or stages.done():
            return
        exc = task.exception()
        failed.append(f"the simulated fleet stopped: {exc or 'it reached its end'}")
        log.error("%s; stopping the demo", failed[-1])
        _stop_stages(stages)

    return ended


def _describe(servers: EmbeddedServers | None, given: frozenset[str]) -> str:
    parts = []
    if servers is not None:
        names = [s.name for s in (servers.postgres, servers.redis, servers.broker) if s]
        parts.append(f"embedded {', '.join(names)} in {servers.data_dir}")
    configured_ones = [f.removesuffix("_url") for f in SERVICE_FIELDS if f in given]
    if configured_ones:
        parts.append(f"configured {', '.join(configured_ones)}")
    return "; ".join(parts)


def _own_signals(handler: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handler)


def _say_stopping() -> None:
    log.warning("already stopping: the demo cleans up and stops its servers")


async def run(
    settings: Settings, options: DemoOptions, given: frozenset[str], out: TextIO = sys.stdout
) -> None:
    """The demo, until SIGINT or SIGTERM."""
    interrupted = asyncio.Event()
    _own_signals(interrupted.set)  # until the stages take the signals over
    wanted = wanted_servers(given, options.broker, settings.receive_maximum)
    servers = None
    if wanted.postgres or wanted.redis or wanted.mqtt:
        servers = EmbeddedServers(options.data_dir, wanted, fresh=options.fresh)
    try:
        if servers is not None:
            await asyncio.to_thread(servers.start)
        if not interrupted.is_set():
            settings = demo_settings(settings, given, servers)
            await _run_platform(settings, options, given, servers, interrupted, out)
    finally:
        _own_signals(_say_stopping)  # a second Ctrl-C must not cut the shutdown short
        try:
            if servers is not None:
                await asyncio.to_thread(servers.stop)
        finally:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    print("FleetPulse demo stopped.", file=out, flush=True)


async def _run_platform(
    settings: Settings,
    options: DemoOptions,
    given: frozenset[str],
    servers: EmbeddedServers | None,
    interrupted: asyncio.Event,
    out: TextIO,
) -> None:
    prepared = await _prepare(settings, options)
    created: list[CreatedDelivery] = []
    deliveries_made = asyncio.Event()
    failed: list[str] = []
    fleet_stop = asyncio.Event()
    fleet: asyncio.Task[Any] | None = None
    helpers: list[asyncio.Task[None]] = []
    stages = asyncio.create_task(
        app.run_stages(settings, ingest=True, tracker=True, web=True), name="stages"
    )
    await asyncio.sleep(0)  # run_stages has installed its signal handlers now
    if interrupted.is_set():
        _stop_stages(stages)  # a Ctrl-C that came before: hand it on
    try:
        await _wait_ready(settings, stages)
        if not stages.done():
            fleet = asyncio.create_task(
                runner.simulate(
                    settings,
                    _simulate_options(options, prepared, settings),
                    stop=fleet_stop,
                    on_deliveries=_collect(created, deliveries_made),
                ),
                name="fleet",
            )
            fleet.add_done_callback(_fleet_ended(stages, failed))
            helpers.append(
                asyncio.create_task(
                    _show_when_fleet_ready(
                        created, deliveries_made, fleet, stages, settings, prepared, options,
                        _describe(servers, given), out,
                    ),
                    name="banner",
                )
            )  # fmt: skip
            if servers is not None:
                helpers.append(
                    asyncio.create_task(_watch_servers(servers, stages, failed), name="watch")
                )
        await stages
    finally:
        if not stages.done():  # we got here by an error of our own
            _stop_stages(stages)
            with contextlib.suppress(Exception):
                await stages
        _own_signals(_say_stopping)
        for helper in helpers:
            helper.cancel()
        if fleet is not None:
            await _stop_fleet(fleet, fleet_stop)
        try:
            await _finish_demo_records(settings, prepared.token_id, [d.id for d in created])
        except FleetPulseError as exc:
            log.warning("could not revoke the demo token or cancel its deliveries: %s", exc)
    if failed:
        raise FleetPulseError("; ".join(failed))


def _collect(
    created: list[CreatedDelivery], made: asyncio.Event
) -> Callable[[list[CreatedDelivery]], None]:
    def collect(new: list[CreatedDelivery]) -> None:
        created.extend(new)
        made.set()

    return collect


async def _stop_fleet(fleet: asyncio.Task[Any], stop: asyncio.Event) -> None:
    stop.set()
    done, _ = await asyncio.wait({fleet}, timeout=FLEET_STOP_TIMEOUT_S)
    if not done:
        log.warning("the simulated fleet did not finish in %.0f s", FLEET_STOP_TIMEOUT_S)
        fleet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fleet
        return
    if not fleet.cancelled() and fleet.exception() is None:
        report = fleet.result()
        log.log(
            logging.WARNING if report.progress.unsent else logging.INFO,
            "the simulated fleet sent %d fixes in %d messages (%d errors, %d unsent)",
            report.progress.fixes,
            report.progress.messages,
            report.progress.errors,
            report.progress.unsent,
        )


def _simulate_options(
    options: DemoOptions, prepared: Prepared, settings: Settings
) -> runner.SimulateOptions:
    fleet = FleetConfig(
        vans=options.vans,
        drones=options.drones,
        interval_s=options.interval_s,
        radius_m=options.radius_m,
        device_prefix=DEVICE_PREFIX,
        seed=options.seed,
        drone=runner.drone_spec(settings, options.radius_m),
    )
    return runner.SimulateOptions(
        fleet=fleet,
        centre=prepared.centre,
        osm_pbf=prepared.osm_pbf,
        create_deliveries=options.vans > 0,
    )


async def _show_when_fleet_ready(
    created: list[CreatedDelivery],
    deliveries_made: asyncio.Event,
    fleet: asyncio.Task[Any],
    stages: asyncio.Task[None],
    settings: Settings,
    prepared: Prepared,
    options: DemoOptions,
    where: str,
    out: TextIO,
) -> None:
    """The banner, once the fleet's deliveries exist (their links are in it)."""
    if options.vans > 0:
        made = asyncio.create_task(deliveries_made.wait())
        try:
            await asyncio.wait({made, fleet, stages}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            made.cancel()
    if fleet.done() or stages.done():
        return
    print(banner(settings, prepared, created, options, where), file=out, flush=True)


# --- the command ---------------------------------------------------------------------------


def add_command(command: AddCommand) -> None:
    demo = command(
        "demo",
        "the platform and a simulated fleet with deliveries and fences, on embedded servers"
        " unless FLEETPULSE_DATABASE_URL / _REDIS_URL / _MQTT_URL name them; until Ctrl-C",
    )
    defaults = DemoOptions()
    demo.add_argument(
        "--vans",
        type=whole(0),
        default=defaults.vans,
        metavar="N",
        help=f"delivery vans, each with a round of deliveries (default {defaults.vans})",
    )
    demo.add_argument(
        "--drones",
        type=whole(0),
        default=defaults.drones,
        metavar="M",
        help=f"drones flying sorties from the depot (default {defaults.drones})",
    )
    demo.add_argument(
        "--interval",
        type=positive,
        default=defaults.interval_s,
        metavar="S",
        help=f"each device reports every S s (default {defaults.interval_s:g})",
    )
    demo.add_argument(
        "--center",
        type=lat_lon,
        metavar="LAT,LON",
        help="the depot and the middle of the fleet's area (default: the extract's middle,"
        " else Porto)",
    )
    demo.add_argument(
        "--grid",
        action="store_true",
        help="drive a synthetic street grid even when FLEETPULSE_OSM_PBF is set",
    )
    demo.add_argument(
        "--links",
        type=whole(0),
        default=defaults.links,
        metavar="N",
        help=f"customer tracking links to print (default {defaults.links})",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        metavar="DIR",
        help=f"where the embedded servers keep their data (default {defaults.data_dir})",
    )
    demo.add_argument(
        "--broker",
        choices=BROKER_CHOICES,
        default=defaults.broker,
        help="the embedded MQTT broker: mosquitto when installed, else iotcore (auto, default)",
    )
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="start the embedded servers from an empty data directory",
    )


async def command(settings: Settings, args: argparse.Namespace) -> None:
    if args.vans + args.drones == 0:
        raise FleetPulseError("demo: a fleet needs at least one van or drone")
    given = configured(os.environ, {o.field: getattr(args, o.field, None) for o in OPTIONS})
    if "log_level" not in given:
        # One line per request (the dispatch page polls every second) would bury the
        # banner; FLEETPULSE_LOG_LEVEL, when given, decides instead.
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    options = DemoOptions(
        vans=args.vans,
        drones=args.drones,
        interval_s=args.interval,
        centre=args.center,
        grid=args.grid,
        links=args.links,
        data_dir=args.data_dir,
        broker=args.broker,
        fresh=args.fresh,
    )
    await run(settings, options, given)
