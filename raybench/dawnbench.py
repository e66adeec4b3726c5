"""``python -m raybench.dawnbench export|infer``: DAWNBench CIFAR-10 submission files.

export: per trial, a training JSON and a TSV (``epoch hours top1Accuracy``) in ``OUT/CIFAR10/train/``;
hours are cumulative training time, evaluation excluded (the DAWNBench FAQ allows it). RESULTS_DIR
may be a local path or a URI (``file://``, ``s3://``, ``gs://``).
infer: classify the test images one at a time (batch 1) with a checkpoint and write the inference
JSON (mean latency, cost, top-1) in ``OUT/CIFAR10/inference/``. Formats: the DAWNBench entries page.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from raybench.analysis.dawnbench import TASK_DIR, InputError, export
from raybench.analysis.inference import infer
from raybench.results import ResultsError

EXIT_BAD_INPUT = 2


def _non_negative(text: str) -> float:
    """argparse type: a finite number >= 0 (argparse names the flag in its message)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return v


def _count(minimum: int):
    """argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be {minimum} or more")
        return v
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.dawnbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--author", default="raybench", help="author name (default: raybench)")
        sp.add_argument("--email", default="", help="author email (DAWNBench's authorEmail)")
        sp.add_argument("--hardware", help="machine description, e.g. 'GCP n2-standard-8' (default: the CPU "
                                           "or GPU model)")
        sp.add_argument("--code-url", help="URL of the code (DAWNBench's optional codeURL)")
        sp.add_argument("--cost-per-hour", type=_non_negative,
                        help="on-demand price of the machine in USD per hour")

    ex = sub.add_parser("export", help="training JSON + TSV per trial of a results folder")
    ex.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder (results/<sweep>) or a folder of sweeps")
    ex.add_argument("--out", required=True, help="folder to write CIFAR10/train/ into")
    common(ex)

    inf = sub.add_parser("infer", help="latency and top-1 of a checkpoint, one image at a time")
    inf.add_argument("--checkpoint", required=True, help="checkpoint folder (state.pt + trial.json) or its state.pt")
    inf.add_argument("--data", help="folder holding cifar-10-batches-py/ (default: $RAYBENCH_DATA, else the "
                                    "official download)")
    inf.add_argument("--limit", type=_count(1), help="classify only the first N test images (default: all)")
    inf.add_argument("--warmup", type=_count(0), default=20,
                     help="untimed warm-up classifications before timing (default 20)")
    inf.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to run (default: cuda when available, else cpu)")
    inf.add_argument("--out", default="dawnbench", help="folder to write CIFAR10/inference/ into (default: dawnbench)")
    common(inf)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "export":
            paths = export(args.results_dir, Path(args.out), args)
            for path in paths:
                print(path)
            print(f"{len(paths) // 2} trial(s) exported to {Path(args.out) / TASK_DIR / 'train'}")
        else:
            path, r = infer(args)
            cost = f", cost ${r['cost']:.3g}/image" if "cost" in r else ""
            print(f"{r['model']} ({r['misc']['trial_id']}, epoch {r['misc']['checkpointEpoch']}): top-1 "
                  f"{r['top1Accuracy']:.2f}% on {r['misc']['images']} test image(s), latency {r['latency']:.3f} "
                  f"ms/image (batch 1, {r['misc']['device']}, {args.warmup} warm-up){cost} -> {path}")
    except (InputError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.email:
        print("note: authorEmail is empty; pass --email before submitting to DAWNBench", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
