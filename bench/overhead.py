"""What does raybench cost over plain DDP? The same ResNet-20 epochs, side by side in one run.

(a) raybench: a one-trial sweep through the CLI (Ray Tune -> Ray Train TorchTrainer -> DDP with
    raybench's communication hook), steady-state images/s from its Parquet rows;
(b) plain: torch.multiprocessing.spawn + DDP (gloo), the same model, data shards, augmentation,
    batch, threads and images, timed the same way (training steps only).
Steady state = epochs after the first. Start-up (process launch to first step) is reported apart.
Over raybench's steady epochs it also samples every process's CPU: the cores the training workers
got and the cores Ray's own processes took (raylet, GCS, dashboard, Tune, Train's actors), per kind.
With every core given to workers, Ray's share is taken from them: a ratio above 1 - share/cores
is then out of reach (a synchronous step also waits for whichever rank was kept waiting).
Prints a table and a final JSON line.

    python bench/overhead.py --data DIR [--workers 2] [--images 10000] [--epochs 4] [--repeats 2]
        [--reserve-cpus N]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from procs import WORKER_KIND, CpuSampler
from torch.nn.parallel import DistributedDataParallel as DDP

from raybench.models import build
from raybench.worker import data as cifar


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_worker(rank: int, world: int, port: int, args, out: str, t_launch: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ds = cifar.load(args.data).subset(args.images, 0)
    torch.manual_seed(0)
    model = DDP(build("resnet", 20, "v1"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    times, startup = [], None
    for epoch in range(1, args.epochs + 1):
        idx = cifar.shard_indices(len(ds.train_y), rank, world, 0, epoch)
        gen = torch.Generator().manual_seed(epoch * 1009 + rank)
        steps = len(idx) // args.batch
        dist.barrier()
        if startup is None:
            startup = time.time() - t_launch
        t0 = time.perf_counter()
        for s in range(steps):
            b = idx[s * args.batch:(s + 1) * args.batch]
            x, y = cifar.normalize(cifar.augment(ds.train_x[b], gen)), ds.train_y[b]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        images = steps * args.batch * world
        Path(out).write_text(json.dumps({"epoch_seconds": times, "images": images, "startup": startup}))
    dist.destroy_process_group()


def run_plain(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "plain.json")
        t_launch = time.time()
        mp.spawn(_plain_worker, args=(args.workers, _free_port(), args, out, t_launch), nprocs=args.workers)
        res = json.loads(Path(out).read_text())
    steady = res["epoch_seconds"][1:] or res["epoch_seconds"]
    return {"images_per_second": res["images"] / statistics.mean(steady), "startup_seconds": res["startup"],
            "epoch_seconds": res["epoch_seconds"]}


def run_raybench(args) -> dict:
    from raybench import results, sweep

    with tempfile.TemporaryDirectory() as tmp:
        spec = {"name": "overhead", "workers": [args.workers], "cpus_per_worker": args.threads,
                "schedule": {"batch_per_worker": args.batch, "warmup_epochs": 0, "milestones": [],
                             "epochs": args.epochs},
                "data": {"train_images": args.images, "test_images": 500}}
        path = Path(tmp) / "overhead.yaml"
        path.write_text(yaml.safe_dump(spec))
        t0 = time.time()
        reserve = ["--reserve-cpus", str(args.reserve_cpus)] if args.reserve_cpus else []
        cpu = CpuSampler()
        cpu.start()
        rc = sweep.main([str(path), "--data", args.data, "--results", tmp, *reserve])
        cpu.stop.set()
        wall = time.time() - t0
        if rc != 0:
            sys.exit(f"raybench sweep failed with exit code {rc}")
        df = results.read_results(Path(tmp) / "overhead").sort_values("epoch")
    steady = df.iloc[1:] if len(df) > 1 else df
    images = float((steady.images_per_second * steady.epoch_seconds).mean())
    in_epochs = float(df.epoch_seconds.sum() + df.eval_seconds.sum())
    stamps = [t.timestamp() for t in df.timestamp]  # each epoch's row, reported after its evaluation
    cores = cpu.cores_between(stamps[0], stamps[-1]) if len(stamps) > 1 else {}
    return {"images_per_second": images / float(steady.epoch_seconds.mean()),
            "startup_seconds": wall - in_epochs, "epoch_seconds": df.epoch_seconds.tolist(),
            "worker_cores": cores.get(WORKER_KIND, float("nan")),
            "ray_cores": {k: v for k, v in cores.items() if k != WORKER_KIND}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get(cifar.ENV_VAR))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPUs) per worker")
    p.add_argument("--batch", type=int, default=128, help="images per worker per step")
    p.add_argument("--images", type=int, default=10_000, help="training images per epoch, all workers")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="alternate plain and raybench this many times")
    p.add_argument("--reserve-cpus", type=int, default=0, help="the sweep's --reserve-cpus (default 0)")
    args = p.parse_args()
    if not args.data:
        sys.exit("--data DIR (a folder holding cifar-10-batches-py/) or RAYBENCH_DATA is required")
    runs: dict[str, list[dict]] = {"plain": [], "raybench": []}
    for _ in range(args.repeats):
        runs["plain"].append(run_plain(args))
        runs["raybench"].append(run_raybench(args))
    summary = {}
    print(f"{'run':<10} {'images/s (steady)':>18} {'start-up s':>11}  epoch seconds")
    for name, rs in runs.items():
        for r in rs:
            print(f"{name:<10} {r['images_per_second']:>18.1f} {r['startup_seconds']:>11.1f}  "
                  + " ".join(f"{t:.2f}" for t in r["epoch_seconds"]))
        summary[name] = {"images_per_second": statistics.mean(r["images_per_second"] for r in rs),
                         "startup_seconds": statistics.mean(r["startup_seconds"] for r in rs)}
    ratio = summary["raybench"]["images_per_second"] / summary["plain"]["images_per_second"]
    ray_cores = [sum(r["ray_cores"].values()) for r in runs["raybench"] if r["ray_cores"]]
    if ray_cores:
        kinds = sorted({k for r in runs["raybench"] for k in r["ray_cores"]},
                       key=lambda k: -sum(r["ray_cores"].get(k, 0.0) for r in runs["raybench"]))
        print(f"\ncores used over raybench's steady epochs (after epoch 1, evaluation included), per run: "
              f"{WORKER_KIND} " + " ".join(f"{r['worker_cores']:.3f}" for r in runs["raybench"]))
        for k in kinds:
            print(f"  {k:<40} " + " ".join(f"{r['ray_cores'].get(k, 0.0):.3f}" for r in runs["raybench"]))
        print(f"  {'= Ray processes (all but the workers)':<40} " + " ".join(f"{c:.3f}" for c in ray_cores))
    print(json.dumps({"bench": "overhead", "workers": args.workers, "threads_per_worker": args.threads,
                      "batch_per_worker": args.batch, "images_per_epoch": args.images, "epochs": args.epochs,
                      "repeats": args.repeats,
                      "plain_images_per_second": round(summary["plain"]["images_per_second"], 1),
                      "raybench_images_per_second": round(summary["raybench"]["images_per_second"], 1),
                      "ratio": round(ratio, 4), "plain_startup_seconds": round(summary["plain"]["startup_seconds"], 1),
                      "raybench_startup_seconds": round(summary["raybench"]["startup_seconds"], 1),
                      "ray_processes_cores": round(statistics.mean(ray_cores), 3) if ray_cores else None,
                      "worker_cores": round(statistics.mean(r["worker_cores"] for r in runs["raybench"]), 3)}))


if __name__ == "__main__":
    main()
