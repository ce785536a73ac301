"""`python -m bench.geofence [--quick]`: the geofence engine on the Porto trips.

(a) scaling: the Porto fences plus 0, 1k, 10k, 100k fences elsewhere in Portugal and
Europe; the figure is the rate with the most over the rate with none (target >= 0.8).
(b) density: 10, 100, 1,000 fences of block to district size over Porto: rate and the
mean number of fences containing a fix. Memory is the resident set grown by the index.
"""

from __future__ import annotations

import argparse
import sys

from bench.geofence import porto
from bench.geofence.results import as_json, header, row_line, table
from bench.geofence.run import Row, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.geofence", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="up to 10k extra fences, one pass each"
    )
    args = parser.parse_args(argv)
    reason = porto.missing()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    print(header(), file=sys.stderr)

    def log(row: Row) -> None:
        print(row_line(row), file=sys.stderr, flush=True)

    result = run(args.quick, log)
    print(table(result))
    print(as_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
