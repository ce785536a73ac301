"""`python -m bench.e2e [--quick] [--rates 2000,5000,...] [--duration 40] ...`"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from bench.e2e.results import table
from bench.e2e.run import Config, run
from bench.ingest.children import REPO_ROOT

DEFAULT_RATES = "2000,3500,5000,7500,10000,15000,20000"
DEFAULT_STEP_S = 40.0
DEFAULT_WARMUP_S = 5.0  # left out at each step's start: the pipeline filling up
DEFAULT_CEILING_S = 10.0
DEFAULT_PROFILE_S = 20.0
QUICK_STEP_S = 10.0
QUICK_WARMUP_S = 3.0
QUICK_CEILING_S = 5.0
# One second of warm-up, then samples each second: fewer would give no rate.
MIN_CEILING_S = 3.0
QUICK_PROFILE_S = 6.0
DEFAULT_DEVICES = 100_000
DEFAULT_FENCES = 10_000
DEFAULT_DELIVERIES = 1000
DEFAULT_STOPS_PER_VAN = 2
# One ingester carries 20,000 fixes/s (bench.ingest). Two, as deployed, commit in smaller
# batches side by side (one 5,000/s step: positions p99 292 ms against 336-645 ms with
# one) but cost more of these 2 cores: over a whole ramp one did better.
DEFAULT_INGESTERS = 1
DEFAULT_DISPATCH = 3  # each receives the whole stream
DEFAULT_CUSTOMERS = 200
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "fleetpulse_bench_e2e"
DEFAULT_PLOT = REPO_ROOT / "docs" / "e2e-throughput.png"


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected rates such as 2000,5000, got {text!r}"
        ) from None
    if not rates or any(r <= 0 for r in rates) or list(rates) != sorted(rates):
        raise argparse.ArgumentTypeError("rates must be positive fixes/s, rising")
    return rates


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description="FleetPulse end to end on this machine: devices over MQTT to websocket"
        " clients, the offered rate rising until it does not keep up. Prints tables, then"
        " one JSON line; plots throughput and latency against offered load.",
    )
    parser.add_argument("--quick", action="store_true", help="short steps, for a smoke run")
    parser.add_argument(
        "--rates", type=_rates, default=_rates(DEFAULT_RATES), help=f"fixes/s ({DEFAULT_RATES})"
    )
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds per step ({DEFAULT_STEP_S:g}; --quick {QUICK_STEP_S:g})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds left out at a step's start"
        f" ({DEFAULT_WARMUP_S:g}; --quick {QUICK_WARMUP_S:g})",
    )
    parser.add_argument(
        "--ceiling-duration",
        type=float,
        help=f"seconds of each bare ceiling ({DEFAULT_CEILING_S:g}; --quick {QUICK_CEILING_S:g})",
    )
    parser.add_argument(
        "--profile-duration",
        type=float,
        help="seconds of the profiling step after the ramp, 0 for none"
        f" ({DEFAULT_PROFILE_S:g}; --quick {QUICK_PROFILE_S:g})",
    )
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    parser.add_argument("--fences", type=int, default=DEFAULT_FENCES)
    parser.add_argument("--deliveries", type=int, default=DEFAULT_DELIVERIES)
    parser.add_argument("--stops-per-van", type=int, default=DEFAULT_STOPS_PER_VAN)
    parser.add_argument("--dispatch", type=int, default=DEFAULT_DISPATCH, help="dispatch clients")
    parser.add_argument(
        "--customers", type=int, default=DEFAULT_CUSTOMERS, help="customers, a delivery each"
    )
    parser.add_argument(
        "--ingesters",
        type=int,
        default=DEFAULT_INGESTERS,
        help=f"ingest processes in the shared subscription ({DEFAULT_INGESTERS})",
    )
    parser.add_argument("--trackers", type=int, default=1, help="tracker processes (1)")
    parser.add_argument("--web-workers", type=int, default=1, help="web processes (1)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (2)")
    parser.add_argument(
        "--plot",
        type=Path,
        help=f"PNG to write ({DEFAULT_PLOT.relative_to(REPO_ROOT)}; --quick: none)",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--server-url", default=DEFAULT_SERVER_URL, help="PostgreSQL server")
    parser.add_argument(
        "--database", default=DEFAULT_DATABASE, help="created for the run, dropped after"
    )
    return parser


def _config(args: argparse.Namespace) -> Config:
    quick = args.quick

    def pick(given: float | None, full: float, short: float) -> float:
        return given if given is not None else (short if quick else full)

    if min(args.ingesters, args.trackers, args.web_workers, args.publishers) < 1:
        raise SystemExit("bench.e2e: every stage and the publishers need at least one process")
    if args.deliveries and args.stops_per_van < 1:
        raise SystemExit("bench.e2e: --stops-per-van must be at least 1")
    if args.ceiling_duration is not None and args.ceiling_duration < MIN_CEILING_S:
        raise SystemExit(f"bench.e2e: a ceiling needs at least {MIN_CEILING_S:g} s")
    if args.customers > args.deliveries or args.devices < args.publishers:
        raise SystemExit("bench.e2e: a customer per delivery, a device per publisher at least")
    return Config(
        rates=args.rates,
        step_s=pick(args.duration, DEFAULT_STEP_S, QUICK_STEP_S),
        warmup_s=pick(args.warmup, DEFAULT_WARMUP_S, QUICK_WARMUP_S),
        ceiling_s=pick(args.ceiling_duration, DEFAULT_CEILING_S, QUICK_CEILING_S),
        profile_s=pick(args.profile_duration, DEFAULT_PROFILE_S, QUICK_PROFILE_S),
        devices=args.devices,
        fences=args.fences,
        deliveries=args.deliveries,
        stops_per_van=args.stops_per_van,
        dispatch=args.dispatch,
        customers=args.customers,
        ingesters=args.ingesters,
        trackers=args.trackers,
        web_workers=args.web_workers,
        publishers=args.publishers,
        server_url=args.server_url,
        database=args.database,
        keep_logs=args.keep_logs,
    )


async def _main(config: Config, plot: Path | None) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so that every child is stopped.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    result = await run(config)
    print(table(result), flush=True)
    print(result.as_json(), flush=True)
    if plot is not None and result.steps:
        from bench.e2e.plot import plot_run  # matplotlib: the bench extra

        plot_run(result, plot)
        print(f"[e2e] plot written to {plot}", file=sys.stderr, flush=True)
    return 0


def main() -> int:
    args = _parser().parse_args()
    config = _config(args)
    plot = None if args.no_plot else args.plot or (None if args.quick else DEFAULT_PLOT)
    try:
        return asyncio.run(_main(config, plot))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"bench.e2e: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
