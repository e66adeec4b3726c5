"""What an emulated epoch costs (issue 13, must-show 3): one process training the same images as 1
worker and as p virtual workers (batch 32 per worker), epoch by epoch, alternating, on one gloo rank
without Ray. Prints the measured wall time of each training epoch (``loop.train_epoch``'s own
clock: the steps only) and the ratio of the medians; the goal is at most 1.2x.

    python bench/emulation_cost.py --workers 64 --images 4096 --epochs 3
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics

import torch
import torch.distributed as dist

from raybench.spec import config as cfg
from raybench.worker import data as cifar
from raybench.worker import loop
from raybench.worker.setup import Worker, prepare


def trial(workers: int, images: int, batch: int) -> cfg.TrialSpec:
    return cfg.expand(cfg.parse({
        "name": "cost", "workers": [workers], "max_processes": 1, "goal": {"time_budget_s": None},
        "schedule": {"epochs": 100, "batch_per_worker": batch, "warmup_epochs": 0, "milestones": []},
        "data": {"train_images": images, "test_images": 100}}))[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    dist.init_process_group("gloo", rank=0, world_size=1)
    ds = cifar.load(os.environ.get(cifar.ENV_VAR))
    runs = {w: prepare(trial(w, args.images, args.batch), Worker(0, 1, torch.device("cpu"), w), ds)
            for w in (1, args.workers)}
    times: dict[int, list[float]] = {w: [] for w in runs}
    for epoch in range(1, args.epochs + 2):  # the first epoch of each warms up and is not counted
        for w, s in runs.items():
            seconds = loop.train_epoch(s, epoch)["seconds"]
            if epoch > 1:
                times[w].append(seconds)
            print(f"epoch {epoch}  {w:4d} worker(s) on 1 process: {seconds:.2f} s"
                  + ("  (warm-up, not counted)" if epoch == 1 else ""), flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[args.workers])
    print(f"median epoch over {args.images} images: 1 worker {one:.2f} s, {args.workers} virtual workers "
          f"{many:.2f} s, ratio {many / one:.3f} (goal <= 1.2)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
