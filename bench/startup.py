"""Where does a trial's start-up go? A sweep run in this process, its phases timed from timestamps
the driver and the workers already take.

Driver: importing Ray, Tune, Train and torch; checking the input (``sweep.plan``: the sweep file, the
data); ``ray.init``; Tune's start. Per trial, on one clock (one machine): the gap before its
trainable runs (the previous trial's teardown, Tune scheduling, the trainable's process and imports),
the Train controller and worker group until rank 0's process exists, that process's start-up (Ray's
worker, imports, the process group, all before the train function runs), loading CIFAR-10, the first
collective, the model and DDP until the first step, and the first step's extra time over a steady
one. The worker's timestamps travel with its first report (``driver.backend.STARTUP_KEY``) into Tune's
``result.json``; the first step's start comes from the row (its timestamp less evaluation and
training), the steps from the step trace. Also: the import costs of a fresh interpreter, and the CPU
seconds each kind of Ray process took (what each part of the control plane costs).

    python bench/startup.py [SWEEP] [--data DIR] [sweep options, e.g. --smoke]

With no SWEEP: four one-epoch trials of 2 workers (the algorithms sweep at --smoke sizes, 1 epoch).
Prints a table per trial, the driver's phases and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import CpuSampler

T0 = time.time()
ROOT = Path(__file__).resolve().parent.parent
SMOKE4 = {"name": "startup", "model": {"arch": "resnet", "depth": [20], "version": ["v1"]}, "workers": [2],
          "hardware": ["cpu"], "cpus_per_worker": 1, "network": {"bandwidth_mbps": [100], "latency_ms": [0]},
          "algorithm": ["allreduce", "fp16", "powersgd", "localsgd"],
          "schedule": {"batch_per_worker": 64, "warmup_epochs": 1, "milestones": [], "epochs": 1},
          "data": {"train_images": 512, "test_images": 256}, "seed": 0}
IMPORTS = [("import ray", "import ray"), ("import torch", "import torch"),
           ("import ray.train.torch (torch included)", "import ray.train.torch"),
           ("+ raybench.driver.train after ray.train.torch", "import ray.train.torch; import time; t = time.time(); "
            "import raybench.driver.train; print(time.time() - t)"),
           ("import raybench.driver.tune (the trainable's module)", "import raybench.driver.tune")]


class Clock:
    """Wall-clock timestamps of the driver's phases, by wrapping the functions that do them."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def wrap(self, module, name: str, label: str) -> None:
        inner = getattr(module, name)

        def timed(*a, **kw):
            self.t[f"{label}_start"] = time.time()
            try:
                return inner(*a, **kw)
            finally:
                self.t[f"{label}_end"] = time.time()

        setattr(module, name, timed)


def import_costs() -> list[tuple[str, float]]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = []
    for label, code in IMPORTS:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        took = time.perf_counter() - t
        out.append((label, float(r.stdout.strip()) if r.stdout.strip() else took))
    return out


def trial_phases(sweep_dir: Path) -> list[dict]:
    from raybench import results, traces
    from raybench.driver.backend import STARTUP_KEY
    from raybench.driver.tune import RAY_DIR, TUNE_DIR

    trials = []
    for path in sorted((sweep_dir / RAY_DIR / TUNE_DIR).glob("*/result.json")):
        first = json.loads(path.read_text().splitlines()[0])
        s = json.loads(first[STARTUP_KEY])
        rows = [results.from_metrics(json.loads(line)) for line in path.read_text().splitlines()]
        row = rows[0]
        train_start = row["timestamp"].timestamp() - row["eval_seconds"] - row["epoch_seconds"]
        trace = traces.read(traces.path(sweep_dir, path.parent.name))
        steps = trace.to_pandas() if trace is not None else None
        steps = steps[(steps["rank"] == 0) & (steps.epoch == 1)].sort_values("step") if steps is not None else None
        first_step = steady = None
        if steps is not None and len(steps) > 1:
            first_step, steady = float(steps.end.iloc[0]), float(statistics.median(steps.end.iloc[1:]))
        trials.append({"trial_id": path.parent.name, **s, "train_start": train_start,
                       "last_report": rows[-1]["timestamp"].timestamp(),
                       "in_epochs": sum(r["epoch_seconds"] + r["eval_seconds"] for r in rows),
                       "first_step": first_step, "steady_step": steady})
    return sorted(trials, key=lambda t: t["trainable"])


PHASES = [("gap before the trainable (teardown, Tune, trainable process)", "gap"),
          ("trainable -> rank 0's process (Train controller, worker group)", "controller"),
          ("rank 0's process -> train function (Ray worker, imports, process group)", "worker_start"),
          ("loading CIFAR-10", "data"),
          ("first collective (placement)", "placed"),
          ("model, DDP, optimizer -> first step", "prepare"),
          ("first step's extra over a steady step", "first_step")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", nargs="?", help="a sweep name or file (default: 4 one-epoch 2-worker trials)")
    p.add_argument("--data", default=os.environ.get("RAYBENCH_DATA"))
    p.add_argument("--no-imports", action="store_true", help="skip the fresh-interpreter import costs")
    args, rest = p.parse_known_args()  # the rest (--smoke, ...) goes to the sweep
    imports = [] if args.no_imports else import_costs()

    t_import = time.time()
    import yaml

    from raybench import sweep
    from raybench.driver import session, tune  # Ray, Tune, Train, torch: what sweep.main imports before Ray starts
    t_imported = time.time()
    clock = Clock()
    clock.wrap(sweep, "plan", "plan")
    clock.wrap(session, "init_ray", "ray_init")
    clock.wrap(tune, "run_sweep", "tune")
    with tempfile.TemporaryDirectory() as tmp:
        target = args.sweep
        if target is None:
            target = str(Path(tmp) / "startup.yaml")
            Path(target).write_text(yaml.safe_dump(SMOKE4))
        data = ["--data", args.data] if args.data else []
        cpu = CpuSampler()
        cpu.start()
        t_main = time.time()
        rc = sweep.main([target, *data, "--results", tmp, *rest])
        t_end = time.time()
        cpu.stop.set()
        if rc != 0:
            sys.exit(f"the sweep failed with exit code {rc}")
        name = sweep.cfg.load(target).name
        trials = trial_phases(Path(tmp) / name)
    t = clock.t
    for i, tr in enumerate(trials):
        before = trials[i - 1]["last_report"] if i else t["tune_start"]
        tr["gap"] = tr["trainable"] - before
        tr["controller"] = (tr["process"] or tr["entry"]) - tr["trainable"]
        tr["worker_start"] = tr["entry"] - (tr["process"] or tr["entry"])
        tr["data"] = tr["data"] - tr["entry"]
        tr["placed"] = tr["placed"] - (tr["entry"] + tr["data"])
        tr["prepare"] = tr["train_start"] - (tr["entry"] + tr["data"] + tr["placed"])
        tr["first_step"] = (tr["first_step"] - tr["steady_step"]) if tr["first_step"] is not None else 0.0
        tr["startup"] = tr["train_start"] - before + tr["first_step"]
    tail = t["tune_end"] - trials[-1]["last_report"] if trials else 0.0

    print("\nfresh-interpreter imports (s):")
    for label, s in imports:
        print(f"  {label:<58} {s:6.2f}")
    print("\ndriver (s):")
    driver = {"bench start -> its imports (incl. fresh-interpreter runs)": t_import - T0,
              "import raybench.sweep + driver (ray, Tune, Train, torch)": t_imported - t_import,
              "sweep.plan (sweep file, data check, fit)": t["plan_end"] - t["plan_start"],
              "ray.init": t["ray_init_end"] - t["ray_init_start"],
              "ray.init -> Tune starts": t["tune_start"] - t["ray_init_end"],
              "last trial's last report -> Tune returns": tail,
              "Tune returns -> sweep ends (ray.shutdown)": t_end - t["tune_end"],
              "sweep.main in all": t_end - t_main}
    for label, s in driver.items():
        print(f"  {label:<58} {s:6.2f}")
    ids = [tr["trial_id"][-22:] for tr in trials]
    print("\nper trial (s):" + "".join(f"{i:>24}" for i in ids))
    for label, key in PHASES:
        print(f"  {label:<70}" + "".join(f"{tr[key]:>24.2f}" for tr in trials))
    print(f"  {'= start-up (previous trial ends -> first steady step)':<70}"
          + "".join(f"{tr['startup']:>24.2f}" for tr in trials))
    print(f"  {'training + evaluation':<70}" + "".join(f"{tr['in_epochs']:>24.2f}" for tr in trials))
    print("\nCPU seconds of Ray's processes over the whole sweep (processes, CPU s), by kind:")
    kinds = cpu.by_kind()
    for kind, (n, total) in kinds.items():
        print(f"  {kind:<58} {n:>4} {total:8.1f}")
    mean = statistics.mean(tr["startup"] for tr in trials) if trials else 0.0
    print(json.dumps({"bench": "startup", "trials": len(trials), "sweep_seconds": round(t_end - t_main, 1),
                      "mean_startup_seconds": round(mean, 2),
                      "phases_mean": {k: round(statistics.mean(tr[k] for tr in trials), 2) for _, k in PHASES},
                      "ray_init_seconds": round(t["ray_init_end"] - t["ray_init_start"], 2),
                      "tail_seconds": round(tail, 2),
                      "ray_cpu_seconds": {k: round(v[1], 1) for k, v in kinds.items()}}))


if __name__ == "__main__":
    main()
