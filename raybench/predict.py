"""``python -m raybench.predict RESULTS_DIR``: measured trials re-timed under other links from their traces.

- ``--bandwidth-mbps LIST --latency-ms LIST [--workers LIST] [--profile FILE] --out DIR``: per
  configuration, its complete measured trial with a trace on the fastest link, under every link of
  the grid (and worker count), written as predicted trial files into DIR (rows in the result
  schema, ``source = predicted``).
- ``--validate``: every measured trial predicted from every other measured trial of the same
  configuration, against what was measured: the error per epoch and of the time to target.

LIST is comma- or space-separated; ``unlimited`` is a bandwidth. A profile (``python -m
raybench.calibrate``) gives the per-collective overhead, and the bandwidth and latency when the
lists are not given. No Ray and no torch: replay is arithmetic over the recorded traces.
"""
from __future__ import annotations

import argparse
import sys
import uuid

from raybench import results
from raybench.analysis import prediction
from raybench.spec import profile
from raybench.worker.comm.link import Link

EXIT_BAD_INPUT = 2


def _items(values: list[str] | None) -> list[str]:
    return [v for text in values or [] for v in text.replace(",", " ").split()]


def _number(field: str, text: str, allow_unlimited: bool = False) -> float | None:
    if allow_unlimited and text.lower() == "unlimited":
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v >= 0 and v < float("inf")) or (allow_unlimited and v == 0):
        allowed = "a positive number of Mbit/s or 'unlimited'" if allow_unlimited else "a number >= 0"
        raise ValueError(f"--{field}: {text!r} is not {allowed}")
    return v


def links(args: argparse.Namespace) -> list[tuple[float | None, float]]:
    """The grid of (bandwidth, latency) the arguments name (a profile's own when they name none)."""
    prof = profile.read_profile(args.profile) if args.profile else None
    bws = [_number("bandwidth-mbps", t, True) for t in _items(args.bandwidth_mbps)]
    lats = [_number("latency-ms", t) for t in _items(args.latency_ms)]
    if prof is not None:
        bws, lats = bws or [prof.bandwidth_mbps], lats or [prof.latency_ms]
    if not bws or not lats:
        raise ValueError("give --bandwidth-mbps and --latency-ms (or --profile), or --validate")
    return [(b, lat) for b in bws for lat in lats]


def link_at(args: argparse.Namespace, bandwidth: float | None, latency: float, workers: int) -> Link:
    """The link at ``workers``: a profile's fixed cost per collective (its overhead and gloo's
    handshake trips, which grow with the workers) on the grid's bandwidth and latency."""
    if not args.profile:
        return Link(bandwidth, latency)
    prof = profile.read_profile(args.profile)
    return Link(bandwidth, latency, profile.overhead_at(prof.overhead_ms, prof.handshake_trips, latency, workers))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.predict", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder (results/<sweep>) or a folder of sweeps")
    p.add_argument("--bandwidth-mbps", nargs="+", metavar="LIST", help="bandwidths in Mbit/s, or unlimited")
    p.add_argument("--latency-ms", nargs="+", metavar="LIST", help="one-way latencies in ms")
    p.add_argument("--workers", nargs="+", metavar="LIST", help="worker counts (default: each trial's own)")
    p.add_argument("--profile", metavar="FILE", help="a link profile written by python -m raybench.calibrate")
    p.add_argument("--out", metavar="DIR", help="folder for the predicted trial files")
    p.add_argument("--validate", action="store_true", help="predict measured trials from each other; print errors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        grid = None if args.validate else links(args)
        workers = [int(_number("workers", t) or 0) for t in _items(args.workers)]
        if any(w < 1 for w in workers):
            raise ValueError(f"--workers: {args.workers} must be whole numbers >= 1")
        if not args.validate and not args.out:
            raise ValueError("give --out DIR for the predicted trial files (or --validate)")
        found, skipped = prediction.measured_trials(args.results_dir)
    except (ValueError, results.ResultsError, profile.ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    if not found:
        print(f"error: RESULTS_DIR {args.results_dir!r}: no complete measured trial with a step trace",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.validate:
        return _validate(found)
    run_id = f"predict-{uuid.uuid4().hex[:8]}"
    written = 0
    for m in prediction.sources(found):  # one per configuration: several would write the same grid points
        for bandwidth, latency in grid:
            for w in workers or [m.spec.workers]:
                spec, rows = prediction.predict(m, link_at(args, bandwidth, latency, w), w, run_id)
                if rows:
                    prediction.write(args.out, m, spec, rows)
                    written += 1
    print(f"wrote {written} predicted trials from {len(prediction.sources(found))} measured into {args.out}")
    return 0


def _validate(found: list[prediction.Measured]) -> int:
    table = prediction.validation(found)
    if table.empty:
        print("no measured trial can be predicted from another (each configuration was measured at one link "
              "and worker count only)")
        return 0
    shown = table.assign(error=table["error"].map("{:+.1%}".format),
                         tta_error=table["tta_error"].map(lambda x: "-" if x is None or x != x else f"{x:+.1%}"))
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(prediction.error_band(table).text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
