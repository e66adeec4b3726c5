"""The GPU path's checks, run by hand on a machine with a CUDA GPU (never in CI).

``shared``: two ranks share one GPU over gloo (as ``gpus_per_worker: 0.5`` runs them), without Ray,
through the loop every trial runs (``worker.loop.run``). The same trial runs at an unlimited link
and at ``--bandwidth-mbps``; after every optimizer step both ranks' parameters are gathered and
compared bit for bit. The link's cost per step (the slower link's second epoch minus the unlimited
one's, per step) is compared with the model's (``simulated_delay_seconds`` per step): goal, within 10%.
Times are ``epoch_seconds`` (host clock, the device drained at both ends of the epoch).

    python bench/gpu_checks.py shared --data DIR [--bandwidth-mbps 100] [--images 5120] [--out FILE]

``tta``: ResNet-20 v1 time to 80% test top-1 on one GPU, through ``python -m raybench.sweep`` (Ray
Tune -> Ray Train -> DDP), the MLBench schedule of ``sweeps/scalability.yaml`` at one worker,
stopping at the target. Time is ``train_seconds`` (evaluation excluded).

    python bench/gpu_checks.py tta --data DIR --results DIR [--budget-s 400]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # multirank: ranks without Ray


# ---------------------------------------------------------------- shared: two ranks on one GPU

def _shared_rank(rank: int, world: int, trial_json: str, data: str, device_type: str) -> dict[str, Any]:
    """One rank of the shared-GPU run: the trial's rows, and after every step whether every rank
    holds the same parameters (bit for bit)."""
    import torch
    import torch.distributed as dist

    from raybench.spec.config import TrialSpec
    from raybench.worker import data as cifar
    from raybench.worker import loop
    from raybench.worker.setup import Worker, device_name

    trial = TrialSpec.model_validate_json(trial_json)
    same: list[bool] = []
    prepare = loop.prepare

    def checked_prepare(*args, **kwargs):
        s = prepare(*args, **kwargs)
        after_step = s.comm.after_step

        def after(module: torch.nn.Module) -> None:
            after_step(module)
            flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
            every = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(every, flat)
            same.append(all(torch.equal(every[0], e) for e in every[1:]))

        s.comm.after_step = after
        return s

    loop.prepare = checked_prepare
    rows: list[dict[str, Any]] = []
    device = torch.device(device_type, 0 if device_type == "cuda" else None)
    loop.run(trial, Worker(rank, world, device), cifar.load(data), "gpu", lambda row, *_: rows.append(row.to_dict()))
    return {"rows": [{k: v for k, v in r.items() if k != "timestamp"} for r in rows], "steps": len(same),
            "identical": all(same) and bool(same), "device": device_name(device)}


def shared(args: argparse.Namespace) -> dict[str, Any]:
    from raybench.spec import config as cfg

    from multirank import run_ranks

    hardware = "cpu" if args.cpu else "gpu"  # --cpu: the script's own check on a machine without a GPU
    gpu = {} if args.cpu else {"gpus_per_worker": 0.5}

    def trial(bw: Any) -> cfg.TrialSpec:
        return cfg.expand(cfg.parse({
            "name": "gpu-shared", "workers": [2], "hardware": [hardware]} | gpu | {
            "network": {"bandwidth_mbps": [bw], "latency_ms": [0]},
            "schedule": {"epochs": 2, "warmup_epochs": 0, "milestones": [], "batch_per_worker": 128},
            "data": {"train_images": args.images, "test_images": 1000}}))[0]

    out: dict[str, Any] = {"bandwidth_mbps": args.bandwidth_mbps, "images": args.images}
    for name, bw in (("unlimited", "unlimited"), ("link", args.bandwidth_mbps)):
        with tempfile.TemporaryDirectory() as d:
            ranks = run_ranks(_shared_rank, 2, trial(bw).model_dump_json(), args.data, "cpu" if args.cpu else "cuda",
                              out=Path(d), timeout=600)
        out[name] = {"steps": [r["steps"] for r in ranks], "identical": [r["identical"] for r in ranks],
                     "rows": ranks[0]["rows"], "device": ranks[0]["device"]}
    last_u, last_l = out["unlimited"]["rows"][-1], out["link"]["rows"][-1]
    steps = args.images // 2 // 128  # per rank and epoch
    measured = (last_l["epoch_seconds"] - last_u["epoch_seconds"]) / steps
    model = last_l["simulated_delay_seconds"] / steps
    out["per_step"] = {"measured_link_s": measured, "model_s": model, "ratio": measured / model,
                       "hold_s": last_l["simulated_hold_seconds"] / steps,
                       "unlimited_step_s": last_u["epoch_seconds"] / steps}
    out["ok"] = {"identical_every_step": all(out[n]["identical"][r] for n in ("unlimited", "link") for r in (0, 1)),
                 "delay_within_10_percent": abs(measured / model - 1) <= 0.10}
    return out


# ---------------------------------------------------------------- tta: time to 80% on one GPU

def tta(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd
    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "sweeps" / "scalability.yaml").read_text())
    spec |= {"name": "gpu-tta", "workers": [1], "hardware": ["gpu"],
             "goal": {"target_top1": 0.80, "time_budget_s": args.budget_s, "stop_at_target": True}}
    with tempfile.TemporaryDirectory() as d:
        sweep = Path(d) / "gpu-tta.yaml"
        sweep.write_text(yaml.safe_dump(spec))
        cmd = [sys.executable, "-m", "raybench.sweep", str(sweep), "--data", args.data, "--results", args.results]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - t0
    rows = pd.read_parquet(Path(args.results) / "gpu-tta").sort_values("epoch")
    hit = rows[rows.test_top1 >= 0.80]
    return {"device": rows.device_name.iloc[0], "epochs": len(rows), "best_top1": float(rows.test_top1.max()),
            "time_to_80_s": float(hit.train_seconds.iloc[0]) if len(hit) else None,
            "epochs_to_80": int(hit.epoch.iloc[0]) if len(hit) else None,
            "mean_epoch_s": float(rows.epoch_seconds.iloc[1:].mean()) if len(rows) > 1 else None,
            "sweep_wall_s": wall,
            "curve": rows[["epoch", "epoch_seconds", "train_seconds", "lr", "test_top1"]].round(4).to_dict("records")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="check", required=True)
    s = sub.add_parser("shared")
    s.add_argument("--data", required=True)
    s.add_argument("--bandwidth-mbps", type=float, default=100.0)
    s.add_argument("--cpu", action="store_true", help="run on the CPU (checks this script, not the GPU path)")
    s.add_argument("--images", type=int, default=5120, help="training images (2 ranks x batch 128 each step)")
    t = sub.add_parser("tta")
    t.add_argument("--data", required=True)
    t.add_argument("--results", required=True)
    t.add_argument("--budget-s", type=float, default=400.0)
    for q in (s, t):
        q.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    result = shared(args) if args.check == "shared" else tta(args)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
