"""The `fleetpulse` command line."""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from fleetpulse import app
from fleetpulse.errors import ConfigError, FleetPulseError
from fleetpulse.settings import OPTIONS, Settings, load_settings
from ingest import store
from ingest.database import connect
from ingest.schema import TELEMETRY_COLUMNS, status
from mqtt.rejects import Reason


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

    command("config", "print the effective settings, secrets masked")
    db = command("db", "database schema")
    db.add_argument("action", choices=["migrate", "status"])
    for name, help in (
        ("ingest", "run the ingest stage: MQTT in, every fix stored once"),
        ("run", "migrate the schema, then run every stage in one process"),
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
    stats = command("stats", "devices, fixes and rejects in the database")
    stats.add_argument("--json", action="store_true")
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
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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


async def _ingest(settings: Settings, args: argparse.Namespace) -> None:
    await app.run_ingest(settings, stats_every_s=args.stats_every, stats_json=args.stats_json)


async def _run(settings: Settings, args: argparse.Namespace) -> None:
    await app.prepare_database(settings)
    await _ingest(settings, args)


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
                writer.writerow(_csv_value(getattr(fix, c)) for c in TELEMETRY_COLUMNS)
    finally:
        await conn.close()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


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


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "config": _config,
    "db": _db,
    "ingest": _ingest,
    "run": _run,
    "history": _history,
    "quarantine": _quarantine,
    "stats": _stats,
}
