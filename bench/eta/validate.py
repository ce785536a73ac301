"""`python -m bench.eta.validate`: the ETA model on a validation split carved out of the
benchmark's training taxis only, where its settings were chosen.

For each of the benchmark's two folds, its training taxis are split in three (seeded);
each third is predicted by a model learned, and its residuals primed, on the other two
thirds, exactly as `python -m bench.eta` does with the test half. The test taxis' fixes
and trips are dropped before anything is learned or predicted. Switches turn the model's
parts off to measure what each is worth (the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter

from bench.eta.results import accuracy_header, accuracy_line
from bench.eta.run import (
    BASELINES,
    FOLDS,
    METHODS,
    Model,
    Prediction,
    accuracy,
    evaluate,
    learn,
    prime,
    valid_trips,
)
from bench.eta.trips import load_trips, missing, roads_path, split_taxis
from bench.geofence import porto
from tracker.roads import load_roads
from tracker.speed_profiles import Level

PARTS = 3  # validation thirds of each fold's training taxis
SEED = 7


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eta.validate", description=__doc__)
    parser.add_argument("--no-heading", action="store_true", help="route from the nearest node")
    parser.add_argument(
        "--hour-factor-samples",
        type=float,
        default=Model.hour_factor_samples,
        help="prior of the hour-of-week factor (a huge value turns it off)",
    )
    parser.add_argument(
        "--limit-prior-samples",
        type=float,
        default=Model.limit_prior_samples,
        help="weight of the limit-based speed in an edge's profile speed (0: none)",
    )
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    model = Model(not args.no_heading, args.hour_factor_samples, args.limit_prior_samples)
    trips = load_trips()
    fixes = porto.load_fixes()
    graph = load_roads(roads_path())
    predictions: dict[str, list[Prediction]] = {m: [] for m in METHODS}
    for k, test_taxis in enumerate(split_taxis(trips, FOLDS)):
        training = sorted({t.taxi for t in trips} - test_taxis)
        random.Random(SEED).shuffle(training)
        for part in range(PARTS):
            held = set(training[part::PARTS])
            known = set(training) - held
            fold = learn([f for f in fixes if f.device_id in known], graph, model)
            primed = prime(fold, trips, fixes, known, graph)
            validation = valid_trips(trips, held)
            evaluate(fold, validation, primed, predictions, Counter[Level](), Counter[str]())
            print(
                f"fold {k + 1}, part {part + 1}: {len(validation)} validation trips",
                file=sys.stderr,
                flush=True,
            )
    rows = [accuracy(m, "all", predictions[m]) for m in METHODS]
    best = min(a.mae_s for a in rows if a.method in BASELINES)
    for a in rows:
        a.vs_best_baseline = 1 - a.mae_s / best
    print(f"validation on the training taxis only; {model}")
    print(accuracy_header())
    print("\n".join(accuracy_line(a) for a in rows))
    road = rows[0]
    print(
        f"{road.method}: MAE {road.mae_s:.1f} s ({road.vs_best_baseline:+.1%}),"
        f" P90 coverage {road.coverage or 0:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
