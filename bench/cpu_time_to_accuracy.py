"""Time to 80% test top-1 for ResNet-20 v1 on this machine's CPUs, through raybench. Run by hand.

Writes a one-trial sweep file to a temporary folder and runs it with ``raybench.sweep.main`` (Ray
Tune -> Ray Train -> DDP, as any sweep), then reads the trial's Parquet rows. Time is
``train_seconds``: the sum of ``epoch_seconds``, evaluation excluded (DAWNBench's and MLBench's
time-to-accuracy). MLBench published 5,895 s for PyTorch on a 4-vCPU node; the goal here is <= 900 s.

Two modes:

* ``--calibrate``: each layout of ``--layouts`` (WORKERSxCPUS/BATCH_PER_WORKER) for ``--cal-epochs``
  epochs on ``--cal-images`` training images; prints seconds per epoch scaled to 50,000 images
  (from the last epoch, which is past one-off start-up costs), to pick the layout of the full run.
* default: the full run (all 50,000 training and 10,000 test images) with the given layout and
  schedule, stopping at the first epoch at or above ``--target``. Prints the curve (epoch,
  epoch_seconds, train_seconds, lr, test_top1) and a final JSON line with ``time_to_80`` (or null
  and the best accuracy), the settings, the machine load and the command.

The machine is shared, so every figure is printed with the load average sampled during the run:
timings on a loaded machine are noisy and slower than on an idle one.

    python bench/cpu_time_to_accuracy.py --data DIR --calibrate [--layouts 1x2/128 2x1/64 ...]
    python bench/cpu_time_to_accuracy.py --data DIR [--workers 1] [--cpus-per-worker 2] [--batch 128]
        [--lr-per-256 0.4] [--warmup-epochs 0] [--milestones 6 9] [--gamma 0.1] [--epochs 16]
        [--weight-decay 5e-4] [--target 0.8] [--results DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

TRAIN_IMAGES = 50_000
GOAL_SECONDS = 900.0
MLBENCH_PYTORCH_4VCPU_SECONDS = 5_895.0
# as raybench.analysis.dawnbench.DATASET_NAMES (raybench.dataset: official only if md5-identical to the release)
DATASET_NAMES = {"cifar10-local": "CIFAR-10 local copy (differs from the official release)",
                 "cifar10-official": "CIFAR-10 (official python archive)"}


class LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds while a run goes on."""

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2),
                "samples": len(s), "cpus": os.cpu_count()}


def uptime() -> str:
    """The load averages as `uptime` prints them (1, 5, 15 minutes)."""
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


def sweep_spec(name: str, workers: int, cpus_per_worker: int, batch: int, lr_per_256: float, warmup_epochs: int,
               milestones: list[int], gamma: float, epochs: int, weight_decay: float, target: float,
               train_images: int | None, test_images: int | None, stop_at_target: bool) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"arch": "resnet", "depth": [20], "version": ["v1"]},
        "workers": [workers],
        "hardware": ["cpu"],
        "cpus_per_worker": cpus_per_worker,
        "algorithm": ["allreduce"],
        "schedule": {"batch_per_worker": batch, "lr_per_256": lr_per_256, "warmup_epochs": warmup_epochs,
                     "milestones": milestones, "gamma": gamma, "epochs": epochs, "momentum": 0.9,
                     "nesterov": True, "weight_decay": weight_decay},
        "goal": {"target_top1": target, "time_budget_s": None, "stop_at_target": stop_at_target},
        "data": {"train_images": train_images, "test_images": test_images},
        "seed": 0,
    }


def run_sweep(spec: dict[str, Any], data: str, results_dir: Path):
    """One sweep through raybench's CLI entry point; returns (rows sorted by epoch, metadata, wall s, load)."""
    from raybench import results, sweep

    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.time()
    with LoadSampler() as load:
        rc = sweep.main([str(path), "--data", data, "--results", str(results_dir)])
    wall = time.time() - t0
    if rc != 0:
        sys.exit(f"raybench sweep {path} failed with exit code {rc}")
    (trial_file,) = sorted((results_dir / spec["name"]).glob("*.parquet"))
    rows, meta = results.read_trial(trial_file)
    import pandas as pd

    return pd.DataFrame(rows).sort_values("epoch", ignore_index=True), meta, wall, load.summary()


def parse_layout(text: str) -> tuple[int, int, int]:
    """'2x1/64' -> (workers 2, cpus_per_worker 1, batch_per_worker 64)."""
    try:
        shape, batch = text.split("/")
        workers, cpus = shape.lower().split("x")
        return int(workers), int(cpus), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"layout {text!r}: expected WORKERSxCPUS/BATCH_PER_WORKER, e.g. 2x1/64") from None


def calibrate(args: argparse.Namespace, out: Path) -> None:
    print(f"calibration: {args.cal_epochs} epoch(s) on {args.cal_images} training images per layout; "
          f"load before {uptime()}", flush=True)
    table = []
    for workers, cpus, batch in args.layouts:
        name = f"cal_w{workers}x{cpus}_b{batch}"
        spec = sweep_spec(name, workers, cpus, batch, args.lr_per_256, 0, [], args.gamma, args.cal_epochs,
                          args.weight_decay, args.target, args.cal_images, 1000, False)
        df, _, wall, load = run_sweep(spec, args.data, out)
        last = df.iloc[-1]
        per_epoch = TRAIN_IMAGES / float(last.images_per_second)
        table.append({"layout": f"{workers}x{cpus}/{batch}", "workers": workers, "cpus_per_worker": cpus,
                      "batch_per_worker": batch, "global_batch": workers * batch,
                      "epoch_seconds": [round(float(s), 2) for s in df.epoch_seconds],
                      "images_per_second": round(float(last.images_per_second), 1),
                      "est_full_epoch_seconds": round(per_epoch, 1), "comm_seconds": round(float(last.comm_seconds), 2),
                      "wall_seconds": round(wall, 1), "load": load})
        print(f"  {table[-1]['layout']:<9} global batch {workers * batch:>4}: {last.images_per_second:7.1f} images/s "
              f"-> {per_epoch:6.1f} s per 50k-image epoch (epochs {table[-1]['epoch_seconds']}; "
              f"load avg {load['min']}-{load['max']}, mean {load['mean']})", flush=True)
    best = min(table, key=lambda r: r["est_full_epoch_seconds"])
    print(json.dumps({"bench": "cpu_time_to_accuracy", "mode": "calibrate", "cal_images": args.cal_images,
                      "cal_epochs": args.cal_epochs, "layouts": table, "fastest": best["layout"],
                      "command": "python " + shlex.join(sys.argv)}))


def full_run(args: argparse.Namespace, out: Path) -> None:
    import pandas as pd

    from raybench.analysis.metrics import time_to_accuracy

    spec = sweep_spec("cpu_tta", args.workers, args.cpus_per_worker, args.batch, args.lr_per_256,
                      args.warmup_epochs, args.milestones, args.gamma, args.epochs, args.weight_decay, args.target,
                      None, None, not args.no_stop)
    print(f"full run: ResNet-20 v1, {args.workers} worker(s) x {args.cpus_per_worker} CPU(s), batch "
          f"{args.batch}/worker; schedule {spec['schedule']}; load before {uptime()}", flush=True)
    df, meta, wall, load = run_sweep(spec, args.data, out)
    tta = time_to_accuracy(df, args.target)
    dataset = DATASET_NAMES.get(meta.get("raybench.dataset", ""), "CIFAR-10")
    print(f"\n{dataset}, ResNet-20 v1; training time excludes evaluation")
    print(f"{'epoch':>5} {'epoch_s':>8} {'train_seconds':>13} {'lr':>8} {'train_top1':>10} {'test_top1':>9}")
    for r in df.itertuples():
        print(f"{r.epoch:>5} {r.epoch_seconds:>8.1f} {r.train_seconds:>13.1f} {r.lr:>8.4f} {r.train_top1:>10.4f} "
              f"{r.test_top1:>9.4f}")
    best = df.loc[df.test_top1.idxmax()]
    invocations = int(df.run_id.nunique())
    started = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=wall)
    here = df.epoch[pd.to_datetime(df.timestamp, utc=True) >= started]
    this_run = ("the run" if invocations == 1 and len(here) == len(df) else
                f"this invocation only (epochs {here.min()}-{here.max()})" if len(here) else
                "this invocation only (it trained no epoch: the trial was already complete)")
    print(f"load average during {this_run} (1-min, {load['cpus']} CPUs, sampled every 15 s): min {load['min']}, "
          f"mean {load['mean']}, max {load['max']}; after: {uptime()}")
    if invocations > 1:
        print(f"note: the trial ran in {invocations} invocations (resumed from its checkpoints); train_seconds "
              f"counts only the epochs recorded, not work lost to an interruption")
    print(json.dumps({
        "bench": "cpu_time_to_accuracy", "mode": "full", "dataset": dataset, "model": "resnet20_v1",
        "target_top1": args.target, "time_to_80": None if tta is None else round(tta, 1),
        "within_goal_900s": None if tta is None else tta <= GOAL_SECONDS,
        "mlbench_pytorch_4vcpu_s": MLBENCH_PYTORCH_4VCPU_SECONDS,
        "best_top1": round(float(best.test_top1), 4), "best_epoch": int(best.epoch),
        "epochs_run": int(df.epoch.max()), "train_seconds_total": round(float(df.train_seconds.iloc[-1]), 1),
        "eval_seconds_total": round(float(df.eval_seconds.sum()), 1),
        "mean_images_per_second": round(float(df.images_per_second.mean()), 1), "invocations": invocations,
        "wall_seconds_this_invocation": round(wall, 1), "device_name": str(df.device_name.iloc[0]),
        "load_this_invocation": load,
        "settings": {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                     "global_batch": args.workers * args.batch, **spec["schedule"]},
        "results": str(out / spec["name"]), "command": "python " + shlex.join(sys.argv),
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("RAYBENCH_DATA"), help="folder holding cifar-10-batches-py/")
    p.add_argument("--results", help="results folder (default: a new temporary folder, kept)")
    p.add_argument("--calibrate", action="store_true", help="time short runs of each --layouts entry instead")
    p.add_argument("--layouts", nargs="+", type=parse_layout, default=[parse_layout(x) for x in
                   ("1x2/128", "2x1/64", "1x2/256", "2x1/128")], help="WORKERSxCPUS/BATCH_PER_WORKER entries")
    p.add_argument("--cal-images", type=int, default=10_000)
    p.add_argument("--cal-epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--batch", type=int, default=128, help="images per worker per step")
    p.add_argument("--lr-per-256", type=float, default=0.4, help="global lr = this x global batch / 256")
    p.add_argument("--warmup-epochs", type=int, default=0,
                   help="warm-up from the one-worker lr to the global lr (nothing to warm up with 1 worker)")
    p.add_argument("--milestones", type=int, nargs="*", default=[6, 9])
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--target", type=float, default=0.80)
    p.add_argument("--no-stop", action="store_true", help="run every epoch instead of stopping at the target")
    args = p.parse_args()
    if not args.data:
        sys.exit("--data DIR (a folder holding cifar-10-batches-py/) or RAYBENCH_DATA is required")
    out = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix="raybench-cpu-tta-"))
    print(f"results and sweep files in {out}", flush=True)
    (calibrate if args.calibrate else full_run)(args, out)


if __name__ == "__main__":
    main()
