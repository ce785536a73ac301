"""`python -m bench.eta [--quick]`: ETA accuracy on the Porto taxi trips (issue 4).

Profiles, detour factors and the fleet's mean speed are learned from the trips of half
the taxis; the other half's trips are the test (then the halves swap; --quick runs one
fold and times fewer trips). The residuals behind P50/P90 are primed with ETAs for the
training taxis' own trips, each predicted by a model that did not see its taxi. At 25,
50 and 75 % of each test trip the predicted remaining time to the trip's last fix is
compared with the real one, for the road-graph ETA, the H3-grid ETA and two naive
baselines. Test trips with a GPS jump (> 50 m/s), shorter than 3 min, or ending < 500 m
(straight line) from their start are excluded and counted.
"""

from __future__ import annotations

import argparse
import sys

from bench.eta.results import as_json, table
from bench.eta.run import run
from bench.eta.trips import missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eta", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one fold, fewer timed trips")
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run(args.quick, log)
    print(table(result))
    print(as_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
