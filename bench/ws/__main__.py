"""`python -m bench.ws [--quick] [--dispatch N] [--customers M] [--rate R] ...`"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys

from bench.ws.results import table
from bench.ws.run import Config, run

# The target: 1,000 dispatch clients on the whole stream at 1k fixes/s, and
# 10,000 customers each following one delivery.
DEFAULT_DISPATCH = 1000
DEFAULT_CUSTOMERS = 10_000
DEFAULT_RATE = 1000.0
DEFAULT_VANS = 1000
DEFAULT_DURATION_S = 30.0
DEFAULT_WARMUP_S = 10.0
QUICK = {"dispatch": 20, "customers": 200, "rate": 200.0, "vans": 100, "duration": 10.0}
QUICK_WARMUP_S = 5.0
# Clients per process: more would make the clients, not the server, the bottleneck.
DISPATCH_PER_PROCESS = 250
CUSTOMERS_PER_PROCESS = 2500
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "fleetpulse_bench_ws"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws",
        description="Dispatch and customer websocket clients against FleetPulse fed over MQTT:"
        " deliveries/s and publish-to-receipt latency. Prints a table, then one JSON line.",
    )
    parser.add_argument(
        "--dispatch", type=int, help=f"dispatch clients (default {DEFAULT_DISPATCH})"
    )
    parser.add_argument(
        "--customers",
        type=int,
        help=f"customer clients, one delivery each (default {DEFAULT_CUSTOMERS})",
    )
    parser.add_argument("--rate", type=float, help=f"fixes/s published (default {DEFAULT_RATE:g})")
    parser.add_argument("--vans", type=int, help=f"vans publishing (default {DEFAULT_VANS})")
    parser.add_argument(
        "--duration", type=float, help=f"measured seconds (default {DEFAULT_DURATION_S:g})"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help=f"seconds published before measuring (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--dispatch-procs",
        type=int,
        help=f"client processes for dispatch (default one per {DISPATCH_PER_PROCESS})",
    )
    parser.add_argument(
        "--customer-procs",
        type=int,
        help=f"client processes for customers (default one per {CUSTOMERS_PER_PROCESS})",
    )
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes (default 1)")
    parser.add_argument(
        "--web-workers",
        type=int,
        default=1,
        help="web processes, clients spread over them (default 1)",
    )
    parser.add_argument(
        "--deflate", action="store_true", help="clients offer permessage-deflate, as browsers do"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs (printed path)"
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (~1 min)")
    parser.add_argument("--server-url", default=DEFAULT_SERVER_URL, help="PostgreSQL server")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="recreated for the run")
    return parser


def _config(args: argparse.Namespace) -> Config:
    def pick(name: str, default: float) -> float:
        given = getattr(args, name)
        if given is not None:
            return float(given)
        return float(QUICK[name]) if args.quick and name in QUICK else default

    dispatch = int(pick("dispatch", DEFAULT_DISPATCH))
    customers = int(pick("customers", DEFAULT_CUSTOMERS))
    vans = int(pick("vans", DEFAULT_VANS))
    if min(dispatch, customers) < 0 or vans < 1 or dispatch + customers == 0:
        raise SystemExit("bench.ws: need at least one van and one client")
    return Config(
        dispatch=dispatch,
        customers=customers,
        rate=pick("rate", DEFAULT_RATE),
        vans=vans,
        duration_s=pick("duration", DEFAULT_DURATION_S),
        warmup_s=args.warmup
        if args.warmup is not None
        else (QUICK_WARMUP_S if args.quick else DEFAULT_WARMUP_S),
        dispatch_procs=args.dispatch_procs or max(1, math.ceil(dispatch / DISPATCH_PER_PROCESS)),
        customer_procs=args.customer_procs or max(1, math.ceil(customers / CUSTOMERS_PER_PROCESS)),
        publishers=args.publishers,
        web_workers=args.web_workers,
        deflate=args.deflate,
        server_url=args.server_url,
        database=args.database,
        keep_logs=args.keep_logs,
    )


async def _main(config: Config) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    measured = await run(config)
    print(table(measured), flush=True)
    print(measured.as_json(), flush=True)
    return 0


def main() -> int:
    config = _config(_parser().parse_args())
    try:
        return asyncio.run(_main(config))
    except asyncio.CancelledError:
        print("bench.ws: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
