"""The `fleetpulse simulate` and `fleetpulse replay` commands: their arguments and what
they do. `fleetpulse.cli` adds them to its parser and its command table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from fleetpulse.arguments import lat_lon, number, positive, share, whole
from fleetpulse.errors import FleetPulseError
from fleetpulse.settings import Settings
from fleetpulse.simulation import recordings, replay, runner
from fleetpulse.simulation.deliveries import CreatedDelivery
from fleetpulse.simulation.faults import FaultConfig
from fleetpulse.simulation.fleet import FleetConfig
from fleetpulse.simulation.publisher import DEVICE_PLACEHOLDER, Credentials, Publisher
from fleetpulse.simulation.streets import RoadNetworkError
from mqtt.topics import TopicScheme

AddCommand = Callable[[str, str], argparse.ArgumentParser]


def _device_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    devices = parser.add_argument_group("devices")
    devices.add_argument(
        "--device-prefix",
        default=prefix,
        metavar="TEXT",
        help=f"put before every device id (default {prefix!r})",
    )
    devices.add_argument(
        "--device-password",
        metavar="TEMPLATE",
        help=f"each device's MQTT password, {DEVICE_PLACEHOLDER} standing for its id"
        " (the username is the device id; default: no password)",
    )
    devices.add_argument(
        "--rate", type=positive, metavar="MSG/S", help="at most this many messages per second"
    )


def add_commands(command: AddCommand) -> None:
    sim = command("simulate", "publish a simulated fleet of vans and drones over MQTT")
    fleet = sim.add_argument_group("fleet")
    fleet.add_argument("--vans", type=whole(0), default=10, metavar="N", help="default 10")
    fleet.add_argument("--drones", type=whole(0), default=0, metavar="M", help="default 0")
    fleet.add_argument(
        "--center",
        type=lat_lon,
        metavar="LAT,LON",
        help="depot and centre of the stops (default: the extract's middle, else Porto)",
    )
    fleet.add_argument(
        "--radius",
        type=positive,
        default=3000.0,
        metavar="M",
        help="stops lie within this distance of the centre (default 3000)",
    )
    fleet.add_argument(
        "--grid",
        action="store_true",
        help="drive a synthetic street grid even when --osm-pbf / FLEETPULSE_OSM_PBF is set",
    )
    fleet.add_argument(
        "--stops", type=whole(0), default=5, metavar="N", help="stops per van round (default 5)"
    )
    fleet.add_argument(
        "--service-s",
        type=number,
        default=120.0,
        metavar="S",
        help="time a van stays at each stop (default 120)",
    )
    fleet.add_argument(
        "--interval", type=positive, default=5.0, metavar="S", help="report every S s (default 5)"
    )
    fleet.add_argument(
        "--duration", type=positive, metavar="S", help="stop after S s (default: run until ^C)"
    )
    fleet.add_argument("--seed", type=int, default=1, help="the same seed, the same fleet")
    fleet.add_argument(
        "--create-deliveries",
        action="store_true",
        help="create a delivery for each stop of each van's first round; print tracking links",
    )
    _device_options(sim, "sim-")
    faults = sim.add_argument_group("faults (each RATE is the share of fixes it hits, 0-1)")
    for flag, help in (
        ("--jitter", "fixes displaced by GPS noise of --jitter-m"),
        ("--late", "fixes sent --late-s late"),
        ("--out-of-order", "fixes sent after the device's next one"),
        ("--duplicates", "messages sent twice"),
        ("--offline", "fixes that start an offline spell of --offline-s, flushed as one array"),
        ("--malformed", "fixes followed by a broken message (refused with a known reason)"),
    ):
        faults.add_argument(flag, type=share, default=0.0, metavar="RATE", help=help)
    faults.add_argument("--jitter-m", type=number, default=15.0, metavar="M", help="default 15")
    faults.add_argument("--late-s", type=number, default=30.0, metavar="S", help="default 30")
    faults.add_argument("--offline-s", type=number, default=60.0, metavar="S", help="default 60")

    rep = command("replay", "replay recorded trips over MQTT (Porto taxi CSV, GPX, DJI logs)")
    rep.add_argument("files", nargs="+", metavar="FILE")
    rep.add_argument("--format", choices=["auto", *recordings.FORMATS], default="auto")
    rep.add_argument(
        "--speed",
        type=positive,
        default=1.0,
        metavar="X",
        help="recorded seconds per second (default 1; inf: as fast as the broker takes them)",
    )
    rep.add_argument(
        "--shift-to-now",
        action="store_true",
        help="move fix times so the replay happens now (default: keep the recorded times)",
    )
    _device_options(rep, "")


def _credentials(args: argparse.Namespace) -> Credentials:
    return Credentials(args.device_password)


async def simulate(settings: Settings, args: argparse.Namespace) -> None:
    try:
        fleet = FleetConfig(
            vans=args.vans,
            drones=args.drones,
            interval_s=args.interval,
            duration_s=args.duration,
            radius_m=args.radius,
            stops_per_van=args.stops,
            service_s=args.service_s,
            device_prefix=args.device_prefix,
            seed=args.seed,
            faults=FaultConfig(
                jitter=args.jitter,
                jitter_m=args.jitter_m,
                late=args.late,
                late_s=args.late_s,
                out_of_order=args.out_of_order,
                duplicate=args.duplicates,
                offline=args.offline,
                offline_s=args.offline_s,
                malformed=args.malformed,
            ),
            drone=runner.drone_spec(settings, args.radius),
        )
    except ValueError as exc:
        raise FleetPulseError(f"simulate: {exc}") from None
    options = runner.SimulateOptions(
        fleet=fleet,
        centre=args.center,
        osm_pbf="" if args.grid else settings.osm_pbf,
        rate=args.rate,
        create_deliveries=args.create_deliveries,
        credentials=_credentials(args),
    )
    try:
        report = await runner.simulate(
            settings, options, display=sys.stderr, on_deliveries=_print_deliveries
        )
    except RoadNetworkError as exc:
        raise FleetPulseError(str(exc)) from None
    progress = report.progress
    faults = ", ".join(f"{name} {n}" for name, n in sorted(report.faults.items())) or "none"
    print(
        f"simulated {report.devices} devices on {report.network}: {report.generated:,} fixes"
        f" generated, {progress.fixes:,} sent (duplicates included) in {progress.messages:,}"
        f" messages, {report.malformed:,} malformed on purpose, {report.delivery_reports}"
        f" delivery reports; faults: {faults}; {progress.errors} errors",
        file=sys.stderr,
    )
    if progress.unsent:
        raise FleetPulseError(f"{progress.unsent} messages were not acknowledged by the broker")


def _print_deliveries(created: list[CreatedDelivery]) -> None:
    for delivery in created:
        record = {
            "id": delivery.id,
            "vehicle_id": delivery.vehicle_id,
            "sequence": delivery.sequence,
            "dest": list(delivery.dest),
            "window_end": delivery.window_end.isoformat(),
            "tracking_token": delivery.tracking_token,
            "tracking_url": delivery.tracking_url,
        }
        print(json.dumps(record), flush=True)


async def replay_files(settings: Settings, args: argparse.Namespace) -> None:
    sources = [recordings.open_recording(f, args.format, args.device_prefix) for f in args.files]
    for source in sources:
        print(f"replaying {source.description}", file=sys.stderr)
    played = [list(source.records()) for source in sources]
    if not any(played):
        raise FleetPulseError("nothing to replay: the recordings hold no fixes")
    newest = datetime.fromtimestamp(max(r[-1].ts_ms for r in played if r) / 1000, UTC)
    age = datetime.now(UTC) - newest
    if not args.shift_to_now and settings.max_fix_age and age > settings.max_fix_age:
        print(
            "fleetpulse: warning: the recording is older than FLEETPULSE_MAX_FIX_AGE; the"
            " ingester will quarantine its fixes as ts_too_old (use --shift-to-now, or"
            " set FLEETPULSE_MAX_FIX_AGE_S=0 on the ingester)",
            file=sys.stderr,
        )
    publisher = Publisher(
        settings.mqtt_url,
        TopicScheme(settings.topic_prefix, settings.owntracks_prefix),
        _credentials(args),
        args.rate,
        display=sys.stderr,
    )
    async with publisher:
        done = await replay.play(played, publisher, args.speed, args.shift_to_now)
        progress = await publisher.close()
    print(
        f"replayed {done.records:,} records of {done.devices} devices: {progress.fixes:,}"
        f" fixes acknowledged by the broker, {progress.errors} errors",
        file=sys.stderr,
    )
    if progress.unsent:
        raise FleetPulseError(f"{progress.unsent} messages were not acknowledged by the broker")
