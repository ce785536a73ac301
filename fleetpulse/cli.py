"""The `fleetpulse` command line."""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import redis.asyncio as redis

from fleetpulse import (
    app,
    demo,
    device_credentials,
    dynsec,
    env_template,
    logs,
    mavlink_bridge,
    supervisor,
)
from fleetpulse.arguments import lat_lon
from fleetpulse.database import connect
from fleetpulse.errors import ConfigError, FleetPulseError, ServiceUnavailable
from fleetpulse.settings import OPTIONS, Settings, load_settings, mask_url
from fleetpulse.simulation import commands as simulation_commands
from ingest import store
from ingest.schema import TELEMETRY_COLUMNS, status
from mqtt.credentials import ServiceRole
from mqtt.rejects import Reason
from tracker import delivery_store, eta_accuracy, geojson, profile_store
from tracker import store as tracker_store
from tracker.deliveries import Delivery, DeliveryState, ServiceType
from tracker.events import Event, EventKind
from tracker.positions import DeviceKind
from tracker.redis_live import RedisLive, event_message
from web import auth, dispatch_filter, history_formats, webhook_store
from web import watch as dispatch_watch
from web.auth import Role


def parse_time(text: str) -> datetime:
    """RFC 3339 (no offset means UTC) or epoch milliseconds."""
    try:
        if text.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        value = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"expected RFC 3339 (2026-11-27T09:00:00Z) or epoch milliseconds, got {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    # Settings flags go before or after the command; after it they must not reset to None
    # what was given before it, hence SUPPRESS there.
    settings = argparse.ArgumentParser(add_help=False)
    group = settings.add_argument_group("settings (each also FLEETPULSE_<NAME>)")
    for option in OPTIONS:
        group.add_argument(
            option.flag,
            dest=option.field,
            metavar="VALUE",
            help=option.help,
            default=argparse.SUPPRESS,
        )

    parser = argparse.ArgumentParser(
        prog="fleetpulse",
        description="Real-time fleet telemetry and tracking.",
        parents=[settings],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[settings])

    command("config", "print the effective settings, secrets masked").add_argument(
        "--env-template",
        action="store_true",
        help="print every setting with its default and help, as an environment file",
    )
    db = command("db", "database schema")
    db.add_argument("action", choices=["migrate", "status"])
    for name, help in (
        ("tracker", "run the tracker stage: live state, geofence and device events"),
        ("ingest", "run the ingest stage: MQTT in, every fix stored once"),
        ("web", "run the web app: REST API, websockets and pages"),
        (
            "run",
            "migrate the schema, then run every stage: in one process, or with --workers"
            " as supervised processes",
        ),
    ):
        stage = command(name, help)
        stage.add_argument(
            "--stats-every",
            type=float,
            default=60.0,
            metavar="S",
            help="seconds between ingest statistics lines (default 60)",
        )
        stage.add_argument(
            "--stats-json", action="store_true", help="print statistics as JSON lines on stdout"
        )
        if name == "run":
            supervisor.add_options(stage)
    history = command("history", "print a device's stored fixes in fix-time order")
    history.add_argument("device")
    history.add_argument("--from", dest="start", type=parse_time, metavar="T")
    history.add_argument("--to", dest="end", type=parse_time, metavar="T")
    history.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    quarantine = command("quarantine", "list rejected messages, newest first, with reasons")
    quarantine.add_argument("--reason", choices=[r.value for r in Reason])
    quarantine.add_argument("--since", type=parse_time, metavar="T")
    quarantine.add_argument("--limit", type=int, default=100)
    quarantine.add_argument("--format", choices=["table", "jsonl"], default="table")
    geofences = command("geofences", "manage geofences (GeoJSON)")
    fence_actions = geofences.add_subparsers(dest="action", required=True, metavar="ACTION")
    fence_import = fence_actions.add_parser("import", help="add or replace fences from a file")
    fence_import.add_argument("file", help="a GeoJSON FeatureCollection ('-' reads stdin)")
    fence_actions.add_parser("export", help="print every fence as a FeatureCollection")
    fence_actions.add_parser("list", help="one line per fence")
    fence_delete = fence_actions.add_parser("delete", help="remove a fence")
    fence_delete.add_argument("id")
    events = command("events", "geofence and device events")
    event_actions = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = event_actions.add_parser("export", help="print stored events in event-time order")
    export.add_argument("--device")
    export.add_argument("--fence")
    export.add_argument("--kind", choices=[k.value for k in EventKind])
    export.add_argument("--from", dest="start", type=parse_time, metavar="T")
    export.add_argument("--to", dest="end", type=parse_time, metavar="T")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    devices = command("devices", "devices: live state (from Redis), groups, broker credentials")
    device_actions = devices.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = device_actions.add_parser("show", help="one device's live state")
    show.add_argument("id")
    near = device_actions.add_parser("near", help="devices within a radius, nearest first")
    near.add_argument("lat", type=float)
    near.add_argument("lon", type=float)
    near.add_argument("radius_m", type=float)
    box = device_actions.add_parser("in-box", help="devices inside a bounding box")
    for name in ("south", "west", "north", "east"):
        box.add_argument(name, type=float)
    groups = device_actions.add_parser(
        "set-groups", help="the groups a device belongs to (fences can be limited to groups)"
    )
    groups.add_argument("id")
    groups.add_argument("groups", nargs="*", metavar="GROUP")
    device_add = device_actions.add_parser(
        "add", help="register a device with broker credentials of its own; password shown once"
    )
    device_add.add_argument("id")
    device_add.add_argument("--kind", choices=[k.value for k in DeviceKind])
    device_add.add_argument("--groups", nargs="+", metavar="GROUP")
    for name, help in (
        ("rotate", "a new broker password (shown once); the old one ends at the broker's reload"),
        ("revoke", "take a device's or service's broker access away at the broker's reload"),
    ):
        device_actions.add_parser(name, help=help).add_argument(
            "id", help="a device id or a service account's name"
        )
    service = device_actions.add_parser(
        "service-account", help="broker credentials of a FleetPulse process; password shown once"
    )
    service.add_argument("name", help="one per ingester: ingest-1, ingest-2, ...")
    service.add_argument("--role", choices=[r.value for r in ServiceRole], default="ingest")
    device_actions.add_parser("list-credentials", help="broker accounts, revoked ones included")
    device_actions.add_parser(
        "sync-broker",
        help="write the broker's password and ACL files again and reload it (dynsec: bring"
        " the plugin up to date)",
    )
    dynsec_init = device_actions.add_parser(
        "dynsec-init",
        help="dynsec: write the plugin's file (its administrator and every account) from the"
        " database, for a broker that is not running",
    )
    dynsec_init.add_argument("file", type=Path, help="the broker's plugin_opt_config_file")
    dynsec_init.add_argument(
        "--replace", action="store_true", help="overwrite it (stop the broker first)"
    )
    profiles = command("profiles", "speed profiles learned from the fleet's telemetry")
    profile_actions = profiles.add_subparsers(dest="action", required=True, metavar="ACTION")
    profile_actions.add_parser(
        "rebuild", help="recompute from the last FLEETPULSE_PROFILE_WINDOW of telemetry"
    )
    profile_actions.add_parser(
        "refresh", help="add the telemetry that arrived since the last rebuild or refresh"
    )
    profile_actions.add_parser("status", help="when they were built, and their size")
    eta = command("eta", "ETA accuracy")
    eta_actions = eta.add_subparsers(dest="action", required=True, metavar="ACTION")
    eta_report = eta_actions.add_parser(
        "report", help="MAE, bias and P90 coverage of the ETAs given, by hour and area"
    )
    eta_report.add_argument("--since", type=parse_time, metavar="T")
    eta_report.add_argument("--json", action="store_true")
    deliveries = command("deliveries", "create, change and follow deliveries")
    delivery_actions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = delivery_actions.add_parser("create", help="a new delivery; prints its tracking token")
    create.add_argument("id")
    update = delivery_actions.add_parser("update", help="a last-minute change")
    update.add_argument("id")
    for sub, required in ((create, True), (update, False)):
        sub.add_argument("--vehicle", required=required, help="the vehicle or drone serving it")
        sub.add_argument("--dest", type=lat_lon, required=required, metavar="LAT,LON")
        sub.add_argument("--radius-m", type=float, help="drop-zone radius (default 50)")
        sub.add_argument("--window-start", type=parse_time, required=required, metavar="T")
        sub.add_argument("--window-end", type=parse_time, required=required, metavar="T")
        sub.add_argument("--sequence", type=int, help="order among the vehicle's stops")
        sub.add_argument("--service-s", type=float, help="planned time at the stop")
    create.add_argument("--zone", metavar="FILE", help="GeoJSON Polygon drop zone instead")
    create.add_argument("--service-type", choices=[t.value for t in ServiceType])
    create.add_argument("--token-expires", type=parse_time, metavar="T")
    listing = delivery_actions.add_parser("list", help="one JSON line per delivery")
    listing.add_argument("--vehicle")
    listing.add_argument("--active", action="store_true", help="only those not finished")
    delivery_actions.add_parser("show", help="one delivery").add_argument("id")
    outcome = delivery_actions.add_parser("report", help="delivered or failed, as reported")
    outcome.add_argument("id")
    outcome.add_argument("outcome", choices=["delivered", "failed"])
    outcome.add_argument("--detail", default="")
    cancel = delivery_actions.add_parser("cancel", help="cancel a delivery")
    cancel.add_argument("id")
    cancel.add_argument("--detail", default="")
    tokens = command("tokens", "bearer tokens of dispatch users and integrations")
    token_actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    token_create = token_actions.add_parser("create", help="a new token; printed once")
    token_create.add_argument("--name", required=True, help="whose token it is")
    token_create.add_argument(
        "--role", required=True, choices=[r.label for r in Role], help="what it may do"
    )
    token_actions.add_parser("list", help="one line per token, revoked ones included")
    token_actions.add_parser("revoke", help="revoke a token at once").add_argument("id")
    webhooks = command("webhooks", "HTTP endpoints that receive events, and their deliveries")
    webhook_actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")
    webhook_add = webhook_actions.add_parser("add", help="subscribe a URL; prints its secret once")
    webhook_add.add_argument("url")
    webhook_add.add_argument(
        "--kinds",
        nargs="+",
        default=[],
        choices=[k.value for k in EventKind],
        metavar="KIND",
        help="event kinds to receive (default: every kind)",
    )
    webhook_add.add_argument("--description", default="")
    webhook_actions.add_parser("list", help="one JSON line per subscription")
    webhook_deliveries = webhook_actions.add_parser("deliveries", help="newest first, JSON lines")
    webhook_deliveries.add_argument("--webhook", metavar="ID")
    webhook_deliveries.add_argument("--status", choices=webhook_store.STATUSES)
    webhook_deliveries.add_argument("--limit", type=int, default=webhook_store.LISTING_LIMIT)
    webhook_replay = webhook_actions.add_parser("replay", help="send a dead or delivered one again")
    webhook_replay.add_argument("id", type=int)
    webhook_actions.add_parser("remove", help="delete a subscription").add_argument("id")
    watcher = command("watch", "follow the dispatch stream in the terminal: events, fleet summary")
    watcher.add_argument(
        "--url", help="the web app's address (default: FLEETPULSE_PUBLIC_URL, else WEB_HOST:PORT)"
    )
    watcher.add_argument("--token", help=f"a viewer token (default: ${dispatch_watch.TOKEN_ENV})")
    watcher.add_argument("--devices", metavar="ID,...", help="only these devices")
    watcher.add_argument("--kinds", metavar="KIND,...", help="only events of these kinds")
    watcher.add_argument("--bbox", metavar="S,W,N,E", help="only positions inside this box")
    watcher.add_argument("--json", action="store_true", help="every message as a JSON line")
    watcher.add_argument(
        "--every", type=float, default=2.0, metavar="S", help="seconds between summaries"
    )
    stats = command("stats", "devices, fixes and rejects in the database")
    stats.add_argument("--json", action="store_true")
    simulation_commands.add_commands(command)
    mavlink_bridge.add_command(command)
    demo.add_command(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            os.environ, {o.field: getattr(args, o.field, None) for o in OPTIONS}
        )
    except ConfigError as exc:
        print(f"fleetpulse: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    handler = _COMMANDS[args.command]
    try:
        asyncio.run(handler(settings, args))
    except FleetPulseError as exc:
        print(f"fleetpulse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
    return 0


async def _config(settings: Settings, args: argparse.Namespace) -> None:
    if args.env_template:
        print(env_template.render(), end="")
        return
    for name, value in settings.masked().items():
        print(f"{name}={value}")


async def _db(settings: Settings, args: argparse.Namespace) -> None:
    if args.action == "migrate":
        await app.prepare_database(settings)
    conn = await connect(settings.database_url)
    try:
        current = await status(conn)
    finally:
        await conn.close()
    print(f"schema version: {current.version} (latest {current.latest})")
    print(f"storage mode: {current.mode or 'none (run fleetpulse db migrate)'}")
    print(f"timescaledb extension available: {'yes' if current.timescaledb_available else 'no'}")


async def _run_stages(
    settings: Settings,
    args: argparse.Namespace,
    *,
    ingest: bool = False,
    tracker: bool = False,
    web: bool = False,
) -> None:
    await app.run_stages(
        settings,
        ingest=ingest,
        tracker=tracker,
        web=web,
        stats_every_s=args.stats_every,
        stats_json=args.stats_json,
    )


async def _ingest(settings: Settings, args: argparse.Namespace) -> None:
    await _run_stages(settings, args, ingest=True)


async def _tracker(settings: Settings, args: argparse.Namespace) -> None:
    await _run_stages(settings, args, tracker=True)


async def _web(settings: Settings, args: argparse.Namespace) -> None:
    await _run_stages(settings, args, web=True)


async def _run(settings: Settings, args: argparse.Namespace) -> None:
    workers = supervisor.workers_from(args)
    if workers is not None:
        await supervisor.command(settings, args, workers)
        return
    await app.prepare_database(settings)
    await _run_stages(settings, args, ingest=True, tracker=True, web=True)


async def _history(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url, autocommit=False)
    writer = csv.writer(sys.stdout) if args.format == "csv" else None
    if writer is not None:
        writer.writerow(TELEMETRY_COLUMNS)
    try:
        async for fix in store.history(conn, args.device, args.start, args.end):
            if writer is None:
                sys.stdout.write(msgspec.json.encode(fix).decode() + "\n")
            else:
                writer.writerow(history_formats.csv_row(fix))
    finally:
        await conn.close()


async def _quarantine(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    try:
        rows = await store.quarantined(conn, args.reason, args.since, args.limit)
    finally:
        await conn.close()
    for row in rows:
        if args.format == "jsonl":
            print(json.dumps(_quarantine_record(row)))
        else:
            preview = row.payload[:60].decode("utf-8", "replace").replace("\n", " ")
            print(
                f"{row.received_at:%Y-%m-%dT%H:%M:%SZ}  {row.reason:<18}  {row.topic}  "
                f"{row.detail}  [{row.payload_size} B] {preview}"
            )


def _quarantine_record(row: store.QuarantinedMessage) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": row.id,
        "received_at": row.received_at.isoformat(),
        "topic": row.topic,
        "device_id": row.device_id,
        "reason": row.reason,
        "detail": row.detail,
        "payload_size": row.payload_size,
        "payload_truncated": len(row.payload) < row.payload_size,
    }
    try:
        record["payload"] = row.payload.decode("utf-8")
    except UnicodeDecodeError:
        record["payload_base64"] = base64.b64encode(row.payload).decode()
    return record


async def _stats(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    try:
        totals = await store.totals(conn)
    finally:
        await conn.close()
    if args.json:
        print(json.dumps(totals))
        return
    print(f"devices: {totals['devices']}")
    print(f"fixes: {totals['fixes']}")
    for reason, n in totals["quarantined"].items():
        print(f"quarantined {reason}: {n}")
    for name, n in totals["counters"].items():
        print(f"{name}: {n}")


def _delivery_record(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "vehicle_id": delivery.vehicle_id,
        "dest": [delivery.dest_lat, delivery.dest_lon],
        "drop_radius_m": None if delivery.zone else delivery.drop_radius_m,
        "drop_zone": delivery.zone is not None,
        "window": [delivery.window_start.isoformat(), delivery.window_end.isoformat()],
        "service_type": delivery.service_type.value,
        "sequence": delivery.sequence,
        "service_s": delivery.service_s,
        "state": delivery.state.value,
        "late_risk": delivery.late_risk,
    }


async def _deliveries(settings: Settings, args: argparse.Namespace) -> None:
    zone = None
    if getattr(args, "zone", None):
        try:
            zone = json.loads(await asyncio.to_thread(_read_input, args.zone))
        except ValueError as exc:
            raise FleetPulseError(f"{args.zone}: not JSON: {exc}") from None
        zone = zone.get("geometry", zone) if isinstance(zone, dict) else zone
    conn = await connect(settings.database_url)
    try:
        events: list[Event] = []
        if args.action == "create":
            token = await delivery_store.create(
                conn,
                delivery_store.NewDelivery(
                    id=args.id,
                    vehicle_id=args.vehicle,
                    dest_lat=args.dest[0],
                    dest_lon=args.dest[1],
                    window_start=args.window_start,
                    window_end=args.window_end,
                    drop_radius_m=args.radius_m or 50.0,
                    drop_zone=zone,
                    service_type=ServiceType(args.service_type or "standard"),
                    sequence=args.sequence or 0,
                    service_s=args.service_s if args.service_s is not None else 120.0,
                    token_expires_at=args.token_expires,
                ),
            )
            print(json.dumps({"id": args.id, "tracking_token": token}))
        elif args.action == "update":
            window = None
            if args.window_start or args.window_end:
                current = await delivery_store.get(conn, args.id)
                window = (
                    args.window_start or current.window_start,
                    args.window_end or current.window_end,
                )
            change = delivery_store.Change(
                vehicle_id=args.vehicle,
                dest=args.dest,
                drop_radius_m=args.radius_m,
                window=window,
                sequence=args.sequence,
                service_s=args.service_s,
            )
            print(json.dumps(_delivery_record(await delivery_store.change(conn, args.id, change))))
        elif args.action in ("report", "cancel"):
            outcome = DeliveryState(args.outcome if args.action == "report" else "cancelled")
            async with conn.transaction():  # the outcome and its event, or neither
                events = await delivery_store.report(
                    conn, args.id, outcome, datetime.now(UTC), args.detail
                )
                await tracker_store.save_events(conn, events)
            print(json.dumps(_delivery_record(await delivery_store.get(conn, args.id))))
        else:
            found = (
                [await delivery_store.get(conn, args.id)]
                if args.action == "show"
                else await delivery_store.listing(
                    conn, vehicle_id=args.vehicle, active_only=args.active
                )
            )
            for delivery in found:
                print(json.dumps(_delivery_record(delivery)))
    except geojson.FenceFormatError as exc:
        raise FleetPulseError(f"drop zone: {exc}") from None
    finally:
        await conn.close()
    if events:
        await _publish(settings, events)


async def _profiles(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    try:
        since = datetime.now(UTC) - settings.profile_window
        if args.action in ("rebuild", "refresh"):
            update = profile_store.rebuild if args.action == "rebuild" else profile_store.refresh
            done = await update(conn, since)
            if done is None:
                raise FleetPulseError(
                    "another process is rebuilding or refreshing the profiles right now"
                )
            print(json.dumps(dataclasses.asdict(done), default=str))
            return
        built = await profile_store.built_at(conn)
        counted_to = await profile_store.watermark(conn)
        _, source = await profile_store.source(conn)
        profile, _ = await profile_store.load(conn, ZoneInfo(settings.timezone), since)
    finally:
        await conn.close()
    print(f"built at: {built.isoformat() if built else 'never (run fleetpulse profiles rebuild)'}")
    print(f"telemetry counted up to arrival time: {counted_to.isoformat() if counted_to else '-'}")
    print(f"loaded from: {source}")
    print(f"segment speeds: {profile.samples}, mean {profile.mean_speed_mps:.1f} m/s")


async def _eta(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    try:
        settled = await delivery_store.settled_etas(conn, args.since)
    finally:
        await conn.close()
    rows = eta_accuracy.report(settled, ZoneInfo(settings.timezone))
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    if not rows:
        print("no ETA has been settled by an arrival yet")
        return
    print(f"{'group':<24} {'ETAs':>6} {'MAE s':>8} {'bias s':>8} {'P90 cover':>9}")
    for r in rows:
        print(
            f"{r.group:<24} {r.predictions:>6} {r.mae_s:>8.0f} {r.bias_s:>+8.0f}"
            f" {r.p90_coverage:>9.0%}"
        )


async def _publish(settings: Settings, events: list[Event]) -> None:
    """Stored already; a Redis outage only delays what live clients see."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        await RedisLive(client).write([], events)
    except redis.RedisError as exc:
        print(f"fleetpulse: stored, but not published to Redis: {exc}", file=sys.stderr)
    finally:
        await client.aclose()


def _read_input(name: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise FleetPulseError(f"cannot read {name}: {exc.strerror}") from None


async def _geofences(settings: Settings, args: argparse.Namespace) -> None:
    if args.action == "import":
        try:
            fences = geojson.loads(await asyncio.to_thread(_read_input, args.file))
        except geojson.FenceFormatError as exc:
            raise FleetPulseError(f"{args.file}: {exc}") from None
    conn = await connect(settings.database_url)
    try:
        if args.action == "import":
            rows = [(f.id, f.name, geojson.to_feature(f)) for f in fences]
            print(f"imported {await tracker_store.save_fences(conn, rows)} fences")
        elif args.action == "delete":
            if not await tracker_store.delete_fence(conn, args.id):
                raise FleetPulseError(f"no fence {args.id!r}")
            print(f"deleted {args.id}")
        else:
            features = await tracker_store.fence_features(conn)
            if args.action == "export":
                print(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
            for feature in features if args.action == "list" else []:
                props = feature["properties"]
                print(f"{props['id']}\t{feature['geometry']['type']}\t{props.get('name', '')}")
    finally:
        await conn.close()


async def _events(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url, autocommit=False)
    try:
        async for event in tracker_store.events(
            conn,
            device_id=args.device,
            fence_id=args.fence,
            kind=EventKind(args.kind) if args.kind else None,
            since=args.start,
            until=args.end,
        ):
            sys.stdout.write(msgspec.json.encode(event_message(event)).decode() + "\n")
    finally:
        await conn.close()


async def _devices(settings: Settings, args: argparse.Namespace) -> None:
    if args.action in _CREDENTIAL_ACTIONS:
        await _device_credentials(settings, args)
        return
    if args.action == "set-groups":
        conn = await connect(settings.database_url)
        try:
            if not await tracker_store.set_device_groups(conn, args.id, args.groups):
                raise FleetPulseError(f"no device {args.id!r} (it must have reported once)")
        finally:
            await conn.close()
        print(f"{args.id}: groups {sorted(set(args.groups))}")
        return
    client = redis.Redis.from_url(settings.redis_url)
    live = RedisLive(client)
    try:
        if args.action == "show":
            device = await live.device(args.id)
            if device is None:
                raise FleetPulseError(f"no live state for device {args.id!r}")
            found = [device]
        elif args.action == "near":
            found = await live.near(args.lat, args.lon, args.radius_m)
        else:
            found = await live.in_box(args.south, args.west, args.north, args.east)
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis at {mask_url(settings.redis_url)}: {exc}") from None
    finally:
        await client.aclose()
    for device in found:
        print(msgspec.json.encode(device).decode())


_CREDENTIAL_ACTIONS = {
    "add",
    "rotate",
    "revoke",
    "service-account",
    "list-credentials",
    "sync-broker",
    "dynsec-init",
}


async def _device_credentials(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    issued: device_credentials.Issued | None = None
    try:
        if args.action == "list-credentials":
            for info in await device_credentials.listing(conn):
                print(json.dumps(dataclasses.asdict(info), default=lambda t: t.isoformat()))
            return
        if args.action == "dynsec-init":
            count = await dynsec.write_initial_config(
                conn, settings, args.file, replace=args.replace
            )
            print(f"{args.file}: the administrator and {count} accounts", file=sys.stderr)
            return
        if args.action == "add":
            kind = DeviceKind(args.kind) if args.kind else None
            issued = await device_credentials.add_device(
                conn, args.id, kind=kind, groups=args.groups
            )
        elif args.action == "service-account":
            issued = await device_credentials.add_service_account(
                conn, args.name, ServiceRole(args.role)
            )
        elif args.action == "rotate":
            issued = await device_credentials.rotate(conn, args.id)
        elif args.action == "revoke":
            username = await device_credentials.revoke(conn, args.id)
            print(f"revoked {args.id} (broker username {username})", file=sys.stderr)
        if (
            args.action == "service-account"
            and settings.share_group == "ingest"
            and settings.mqtt_auth_backend == "files"
        ):
            print(
                "warning: FLEETPULSE_SHARE_GROUP is the default 'ingest': a device could join"
                " that group and take messages from the ingesters (docs/device-security.md)",
                file=sys.stderr,
            )
        if issued is not None:
            # Printed before the broker is touched: a broker problem must not lose it.
            print("the password is shown only now; give it to the device:", file=sys.stderr)
            print(json.dumps(dataclasses.asdict(issued)), flush=True)
        synced = await device_credentials.sync_broker(conn, settings, issued)
    finally:
        await conn.close()
    if synced.accounts is None:
        print(
            "warning: FLEETPULSE_MQTT_PASSWORD_FILE and _ACL_FILE are not set, so the broker"
            " does not know of this yet; `fleetpulse devices sync-broker` writes its files",
            file=sys.stderr,
        )
    else:
        print(f"broker: {synced.accounts} accounts; {synced.reload}", file=sys.stderr)


async def _tokens(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    try:
        if args.action == "create":
            token_id, token = await auth.create_token(conn, args.name, Role.parse(args.role))
            print(f"id: {token_id}", file=sys.stderr)
            print("the token is shown only now; keep it secret:", file=sys.stderr)
            print(token)
        elif args.action == "list":
            for info in await auth.list_tokens(conn):
                revoked = f"revoked {info.revoked_at.isoformat()}" if info.revoked_at else "active"
                print(f"{info.id}\t{info.role.label}\t{revoked}\t{info.name}")
        elif not await auth.revoke_token(conn, args.id):
            raise FleetPulseError(f"no active token {args.id!r}")
    finally:
        await conn.close()


async def _webhooks(settings: Settings, args: argparse.Namespace) -> None:
    conn = await connect(settings.database_url)
    try:
        if args.action == "add":
            try:
                created, secret = await webhook_store.create(
                    conn, args.url, args.kinds, description=args.description
                )
            except webhook_store.InvalidSubscription as exc:
                raise FleetPulseError(str(exc)) from None
            print("the secret is shown only now; give it to the receiver:", file=sys.stderr)
            print(json.dumps({**_webhook_record(created), "secret": secret}))
        elif args.action == "list":
            for subscription in await webhook_store.listing(conn):
                print(json.dumps(_webhook_record(subscription)))
        elif args.action == "deliveries":
            for delivery in await webhook_store.deliveries(
                conn, subscription_id=args.webhook, status=args.status, limit=max(args.limit, 1)
            ):
                record = dataclasses.asdict(delivery)
                print(json.dumps(record, default=lambda t: t.isoformat()))
        elif args.action == "replay":
            try:
                replayed = await webhook_store.replay(conn, args.id)
            except webhook_store.NotReplayable as exc:
                raise FleetPulseError(str(exc)) from None
            if replayed is None:
                raise FleetPulseError(f"no webhook delivery {args.id}")
            print(f"delivery {args.id} is pending again", file=sys.stderr)
        elif not await webhook_store.remove(conn, args.id):
            raise FleetPulseError(f"no webhook {args.id!r}")
    finally:
        await conn.close()


def _webhook_record(subscription: webhook_store.Subscription) -> dict[str, Any]:
    return {**dataclasses.asdict(subscription), "created_at": subscription.created_at.isoformat()}


async def _watch(settings: Settings, args: argparse.Namespace) -> None:
    token = args.token or os.environ.get(dispatch_watch.TOKEN_ENV)
    if not token:
        raise FleetPulseError(
            f"a token is needed: --token or {dispatch_watch.TOKEN_ENV} (fleetpulse tokens create)"
        )
    try:
        dispatch_filter.from_query(args.bbox, args.devices, args.kinds)
    except dispatch_filter.FilterError as exc:
        raise FleetPulseError(f"--{exc}") from None
    if not args.every > 0:
        raise FleetPulseError(f"--every: must be greater than 0, got {args.every}")
    options = dispatch_watch.WatchOptions(
        url=args.url or settings.web_base_url,
        token=token,
        devices=args.devices,
        kinds=args.kinds,
        bbox=args.bbox,
        json=args.json,
        every_s=args.every,
    )
    await dispatch_watch.watch(options)


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "config": _config,
    "db": _db,
    "ingest": _ingest,
    "tracker": _tracker,
    "web": _web,
    "run": _run,
    "history": _history,
    "tokens": _tokens,
    "quarantine": _quarantine,
    "stats": _stats,
    "geofences": _geofences,
    "events": _events,
    "deliveries": _deliveries,
    "eta": _eta,
    "profiles": _profiles,
    "devices": _devices,
    "watch": _watch,
    "webhooks": _webhooks,
    "simulate": simulation_commands.simulate,
    "replay": simulation_commands.replay_files,
    "mavlink-bridge": mavlink_bridge.run_command,
    "demo": demo.command,
}
