"""`python -m bench.ingest [--quick] [--rates 5000,10000] [--duration 20] ...`"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bench.ingest.results import table
from bench.ingest.run import Config, run

DEFAULT_RATES = "5000,10000,15000,20000"
DEFAULT_STEP_S = 20.0
DEFAULT_BARE_S = 10.0
# Seconds at the start of each step left out of the rates: connection set-up and the first
# batches are not the steady state.
DEFAULT_WARMUP_S = 2.0
QUICK_STEP_S = 5.0
QUICK_BARE_S = 5.0
QUICK_WARMUP_S = 1.0
DEFAULT_PUBLISHERS = 2
DEFAULT_DEVICES = 100_000
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "fleetpulse_bench"


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected rates such as 5000,10000, got {text!r}"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive fixes/s")
    return rates


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Offer fixes over MQTT at rising rates to one `fleetpulse ingest` and"
        " compare what it commits with a bare aiomqtt subscriber's receive rate.",
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default=_rates(DEFAULT_RATES),
        help=f"fixes/s per step (default {DEFAULT_RATES})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds per step (default {DEFAULT_STEP_S:g}; --quick {QUICK_STEP_S:g})",
    )
    parser.add_argument(
        "--bare-duration",
        type=float,
        help=f"seconds of the baseline (default {DEFAULT_BARE_S:g}; --quick {QUICK_BARE_S:g})",
    )
    parser.add_argument(
        "--bare-rate",
        type=float,
        help="fixes/s offered during the baseline (default: the highest step rate; 0:"
        " publishers unpaced, which takes CPU from the subscriber on a small machine)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds left out at each step's start"
        f" (default {DEFAULT_WARMUP_S:g}; --quick {QUICK_WARMUP_S:g})",
    )
    parser.add_argument("--quick", action="store_true", help="short steps, for a smoke run")
    parser.add_argument(
        "--publishers",
        type=int,
        default=DEFAULT_PUBLISHERS,
        help=f"publisher processes (default {DEFAULT_PUBLISHERS})",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=DEFAULT_DEVICES,
        help=f"distinct device ids (default {DEFAULT_DEVICES:,})",
    )
    parser.add_argument(
        "--server-url",
        default=DEFAULT_SERVER_URL,
        help=f"PostgreSQL server (default {DEFAULT_SERVER_URL})",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"database to drop and re-create (default {DEFAULT_DATABASE})",
    )
    return parser


def _config(args: argparse.Namespace) -> Config:
    quick = args.quick
    return Config(
        rates=args.rates,
        step_s=args.duration or (QUICK_STEP_S if quick else DEFAULT_STEP_S),
        bare_s=args.bare_duration or (QUICK_BARE_S if quick else DEFAULT_BARE_S),
        bare_rate=max(args.rates) if args.bare_rate is None else args.bare_rate,
        warmup_s=args.warmup
        if args.warmup is not None
        else (QUICK_WARMUP_S if quick else DEFAULT_WARMUP_S),
        publishers=args.publishers,
        devices=args.devices,
        server_url=args.server_url,
        database=args.database,
    )


async def _main(config: Config) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so that every child is stopped.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    result = await run(config)
    print(table(result), flush=True)
    print(result.as_json(), flush=True)
    exact = result.verification is not None and result.verification.exact
    return 0 if exact else 1


def main() -> int:
    args = _parser().parse_args()
    if args.publishers < 1 or args.devices < args.publishers:
        print("bench.ingest: need at least one publisher and a device each", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(_config(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"bench.ingest: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
