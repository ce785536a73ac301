"""`python -m bench.fuzz [--cases 100000] [--seed N] [--family F]`

The decoder's fuzz run: the properties of tests/unit/mqtt/test_fuzz_decoders.py over many
more cases, drawn anew each run (the seed is printed, to repeat a run). Prints a table,
then one JSON line; exits 1 when a case crashed the decoder or broke its contract, with
one sample of each kind of failure on stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bench.fuzz import cases
from bench.fuzz.cases import Case, Tally
from mqtt.rejects import Reason

DEFAULT_CASES = 100_000
SAMPLE_BYTES = 300


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz",
        description="Fuzz the MQTT payload decoder with hostile input on every topic kind."
        " Prints a table, then one JSON line.",
    )
    parser.add_argument(
        "--cases", type=int, default=DEFAULT_CASES, help=f"cases (default {DEFAULT_CASES})"
    )
    parser.add_argument("--seed", type=int, help="repeat a run (default: a new seed)")
    parser.add_argument(
        "--family",
        choices=sorted(cases.FAMILIES),
        action="append",
        help="only these generators (repeatable; default all)",
    )
    return parser


def run(count: int, run_seed: int, families: list[str]) -> tuple[Tally, float]:
    decoder = cases.codec()
    tally = Tally()
    strategy = st.one_of(*(cases.FAMILIES[f] for f in families))

    @seed(run_seed)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(case: Case) -> None:
        tally.run(decoder, case)

    started = time.perf_counter()
    fuzz()
    return tally, time.perf_counter() - started


def table(tally: Tally, elapsed: float) -> str:
    rejects = {k: v for k, v in tally.labels.items() if k in _REASONS}
    stored = {k: v for k, v in tally.labels.items() if k not in _REASONS}
    lines = [
        f"{'cases':<28}{tally.cases:>12,}",
        f"{'crashes':<28}{tally.crashes:>12,}",
        f"{'cases/s':<28}{tally.cases / max(elapsed, 1e-9):>12,.0f}",
        f"{'seconds':<28}{elapsed:>12,.1f}",
        "",
        f"{'cases by generator':<28}",
        *(f"  {k:<26}{v:>12,}" for k, v in sorted(tally.families.items())),
        f"{'items accepted':<28}",
        *(f"  {k:<26}{v:>12,}" for k, v in sorted(stored.items())),
        f"{'items rejected, by reason':<28}",
        *(f"  {k:<26}{v:>12,}" for k, v in sorted(rejects.items(), key=lambda kv: -kv[1])),
    ]
    return "\n".join(lines)


_REASONS = {r.value for r in Reason}


def summary(tally: Tally, elapsed: float, run_seed: int) -> dict[str, Any]:
    return {
        "bench": "fuzz",
        "seed": run_seed,
        "cases": tally.cases,
        "crashes": tally.crashes,
        "cases_per_s": round(tally.cases / max(elapsed, 1e-9), 1),
        "seconds": round(elapsed, 2),
        "rejects_by_reason": {k: v for k, v in sorted(tally.labels.items()) if k in _REASONS},
        "accepted": {k: v for k, v in sorted(tally.labels.items()) if k not in _REASONS},
        "cases_by_generator": dict(sorted(tally.families.items())),
        "crash_kinds": sorted(tally.crash_samples),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cases < 1:
        raise SystemExit("bench.fuzz: --cases must be at least 1")
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    families = args.family or sorted(cases.FAMILIES)
    tally, elapsed = run(args.cases, run_seed, families)
    print(table(tally, elapsed))
    print(json.dumps(summary(tally, elapsed, run_seed)))
    for kind, case in tally.crash_samples.items():
        print(
            f"CRASH {kind}\n  family {case.family}, topic {case.topic[:200]!r},"
            f" payload {case.payload[:SAMPLE_BYTES]!r}"
            f"{' ...' if len(case.payload) > SAMPLE_BYTES else ''} ({len(case.payload)} bytes)",
            file=sys.stderr,
        )
    return 1 if tally.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
