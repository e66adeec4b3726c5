"""``python -m raybench.report RESULTS_DIR``: per-trial summary on stdout, PNG plots and one offline HTML page.

RESULTS_DIR is a sweep folder (``results/<sweep>``), a folder of sweeps, or one trial file, on a
local path or a URI (``file://``, ``s3://``, ``gs://``). Targets and budgets come from each
trial's own config (``goal`` in the file metadata) unless ``--target`` / ``--budget`` override
them. Plots are drawn with matplotlib's Agg backend (no display needed); ``index.html`` embeds
every PNG as a data URI, so it opens offline and can be mailed as one file.
"""
from __future__ import annotations

import argparse
import math
import sys

from raybench import results
from raybench.analysis import page, prediction

EXIT_BAD_INPUT = 2
REPORT_DIR = "_report"  # default --out, inside RESULTS_DIR; "_" keeps it out of the Parquet dataset


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]; e.g. 0.94 for 94%")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"{text} must be a positive, finite number of seconds")
    return v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.report", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder (results/<sweep>) or a folder of sweeps")
    p.add_argument("--out", help=f"folder for the PNGs and index.html (default: RESULTS_DIR/{REPORT_DIR})")
    p.add_argument("--target", type=_fraction, help="test top-1 target as a fraction, for every trial "
                                                    "(default: each trial's goal.target_top1)")
    p.add_argument("--budget", type=_seconds, help="training-time budget in seconds, for every trial "
                                                   "(default: each trial's goal.time_budget_s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        res = results.load(args.results_dir)
    except results.ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # the step traces are read only where the report draws emulated or predicted points
    checks = prediction.checks_of(res.trials) if page.shows_predictions(res.rows) else None
    report = page.build(res, args.target, args.budget, checks)
    out = args.out or results.join(results.folder(args.results_dir), REPORT_DIR)
    paths = page.write(report, out, str(args.results_dir))
    print(report.text)
    print(f"\nwrote {len(paths) - 1} plot(s) and {paths[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
