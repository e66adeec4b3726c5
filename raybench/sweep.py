"""``python -m raybench.sweep NAME_OR_PATH``: validate a sweep, then run every trial on Ray.

Everything that can be wrong with the input is checked before Ray starts (exit code 2, one
message naming the file or flag, the value and what is allowed); results go to
``<results>/<sweep name>/``, one Parquet file per trial.
"""
from __future__ import annotations

import argparse
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from raybench import config as cfg
from raybench import data as cifar

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.sweep", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="a sweep name (a file in sweeps/) or a path to a sweep YAML file")
    p.add_argument("--smoke", action="store_true",
                   help="shrink every trial: a few hundred images, at most 2 epochs, at most 2 CPU workers")
    p.add_argument("--data", help=f"folder holding {cifar.BATCHES}/ (default: ${cifar.ENV_VAR}, else the official "
                                  "download into ~/.cache/raybench)")
    p.add_argument("--results", default="results", help="results folder (default: results/)")
    p.add_argument("--address", help="join this Ray cluster ('auto' after `ray up`); default: a local Ray")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in the same results folder")
    p.add_argument("--dry-run", action="store_true", help="validate and print the trial table; start nothing")
    p.add_argument("--max-failures", type=int, default=0,
                   help="worker failures a trial survives by restarting from its last checkpoint (default 0)")
    return p.parse_args(argv)


def trial_table(trials: list[cfg.TrialSpec]) -> str:
    head = ("trial_id", "model", "workers", "hw", "bandwidth", "latency", "algorithm", "seed", "epochs", "batch")
    rows = [(t.trial_id, t.model_name, str(t.workers), t.hardware,
             "unlimited" if t.bandwidth_mbps is None else f"{t.bandwidth_mbps:g} Mbit/s", f"{t.latency_ms:g} ms",
             t.algorithm, str(t.seed), str(t.schedule.epochs), str(t.global_batch)) for t in trials]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def check_fits(trials: list[cfg.TrialSpec], capacity: dict[str, float], where: str) -> None:
    """Reject trials that could never be scheduled (Tune would wait for them forever)."""
    for t in trials:
        cpus = t.workers * t.cpus_per_worker
        gpus = t.workers if t.hardware == "gpu" else 0
        if gpus > capacity["GPU"]:
            raise cfg.ConfigError(
                f"trial {t.trial_id}: hardware 'gpu' with {t.workers} workers needs {gpus} GPU(s); {where} has "
                f"{capacity['GPU']:g}. Use hardware: [cpu], or run on a cluster with GPUs (--address)")
        if cpus > capacity["CPU"]:
            raise cfg.ConfigError(
                f"trial {t.trial_id}: workers {t.workers} x cpus_per_worker {t.cpus_per_worker} needs {cpus} CPUs; "
                f"{where} has {capacity['CPU']:g}. Use fewer workers, --smoke, or a bigger cluster (--address)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = cfg.load(args.sweep)
        trials = cfg.expand(spec)
        if args.smoke:
            trials = cfg.smoke(trials)
            if not trials:
                raise cfg.ConfigError(f"{args.sweep}: --smoke keeps trials with at most {cfg.SMOKE_MAX_WORKERS} "
                                      f"workers, and this sweep has none (workers: {spec.workers})")
        if args.max_failures < 0:
            raise cfg.ConfigError(f"--max-failures {args.max_failures}: must be 0 or more")
        root, local = cifar.data_root(args.data)
        if local:
            cifar.check_local(root)
    except (cfg.ConfigError, cifar.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    print(f"sweep {spec.name}: {len(trials)} trial(s)")
    print(trial_table(trials))
    if args.dry_run:
        return 0

    from raybench import launch  # imports Ray: only once the input is known to be good

    try:
        if not args.address:
            check_fits(trials, launch.local_capacity(), "this machine")
        if not local:
            cifar.download_official(root)
    except (cfg.ConfigError, cifar.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    sweep_dir = Path(args.results) / spec.name
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    started = launch.init_ray(args.address)
    try:
        if args.address:
            check_fits(trials, launch.cluster_capacity(), f"the cluster at {args.address}")
        grid = launch.run_sweep(trials, sweep_dir, str(root) if local else None,
                                cifar.DATASET_LOCAL if local else cifar.DATASET_OFFICIAL, run_id, args.max_failures)
    except cfg.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if started:
            import ray

            ray.shutdown()
    failed = [r for r in grid if r.error]
    print(f"results: {sweep_dir}/ ({len(trials) - len(failed)} of {len(trials)} trial(s) finished)")
    for r in failed:
        print(f"trial {r.config['trial']['trial_id']} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
