"""The per-worker loop: synchronous data-parallel SGD with PyTorch DDP, one row reported per epoch.

Plain PyTorch from top to bottom; Ray appears only in ``train_worker`` (marked ``# [ray]``).
Each epoch: train on this rank's shard, evaluate on this rank's share of the test set, sum the
counts over ranks, report the row with a checkpoint. ``epoch_seconds`` covers the training steps
only (data, forward, backward with communication, optimizer), not evaluation or checkpointing.
Batch-norm statistics stay per worker (``forward_sync_buffers=False``), as in MLBench's reference.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from raybench import data as cifar
from raybench import results
from raybench.config import TrialSpec
from raybench.models import build
from raybench import algorithms
from raybench.network import LinkHook
from raybench.schedule import lr_factor, peak_lr

STATE_FILE = "state.pt"
TRIAL_FILE = "trial.json"


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device


def device_name(device: torch.device) -> str:
    """What a row says it ran on: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wrap_ddp(model: torch.nn.Module, trial: TrialSpec, worker: Worker) -> DDP:
    """DDP with per-worker batch-norm statistics (no buffer broadcast in forward).

    PowerSGD on gloo gets one gradient bucket: with several, its second all-reduce is issued from
    a callback thread while backward issues the next bucket's, and gloo needs every rank to issue
    collectives in the same order.
    """
    model = model.to(worker.device, memory_format=torch.channels_last if worker.device.type == "cuda"
                     else torch.contiguous_format)
    one_bucket = trial.algorithm == "powersgd" and worker.device.type != "cuda"
    return DDP(model, device_ids=[worker.device.index] if worker.device.type == "cuda" else None,
               forward_sync_buffers=False, bucket_cap_mb=1024 if one_bucket else None)


def make_ddp(model: torch.nn.Module, trial: TrialSpec, worker: Worker) -> tuple[DDP, LinkHook]:
    """DDP with the trial's algorithm as its communication hook, behind the simulated link."""
    ddp = wrap_ddp(model, trial, worker)
    hook, _ = algorithms.attach(ddp, trial, worker.world, worker.device)
    return ddp, hook


def make_optimizer(model: torch.nn.Module, trial: TrialSpec, steps_per_epoch: int):
    s = trial.schedule
    opt = torch.optim.SGD(model.parameters(), lr=peak_lr(s, trial.workers), momentum=s.momentum,
                          nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(s, trial.workers, steps_per_epoch))
    return opt, sched


def steps_per_epoch(n_train: int, trial: TrialSpec) -> int:
    per_rank = n_train // trial.workers
    steps = per_rank // trial.schedule.batch_per_worker
    if steps < 1:
        raise ValueError(f"{n_train} training images give worker shards of {per_rank}, less than one batch of "
                         f"{trial.schedule.batch_per_worker}: use more images or a smaller schedule.batch_per_worker")
    return steps


def _budget_spent(t0: float, budget_left: float, worker: Worker) -> bool:
    """Whether rank 0's clock says the time budget is spent; every rank gets rank 0's answer."""
    flag = torch.tensor([float(time.perf_counter() - t0 >= budget_left)], device=worker.device)
    if worker.world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def train_epoch(ddp: DDP, hook: LinkHook, opt, sched, ds: cifar.Cifar10, trial: TrialSpec, worker: Worker,
                epoch: int, budget_left: float | None = None,
                averager: algorithms.LocalSGDAverager | None = None) -> dict[str, float]:
    """One epoch over this rank's shard. Returns this rank's sums and the epoch's wall time.

    With ``budget_left`` (seconds), the epoch stops after the step during which the budget ran
    out (``cut`` in the result); the check costs one tiny broadcast per step, so callers pass it
    only for epochs in which the budget can run out.
    """
    ddp.train()
    bs = trial.schedule.batch_per_worker
    idx = cifar.shard_indices(len(ds.train_y), worker.rank, worker.world, trial.seed, epoch).to(worker.device)
    aug = torch.Generator().manual_seed(trial.seed * 1_000_003 + epoch * 1009 + worker.rank)
    steps = len(idx) // bs
    loss_sum = torch.zeros((), device=worker.device)
    correct = torch.zeros((), device=worker.device, dtype=torch.long)
    hook.take_stats()
    cuda = worker.device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    autocast = torch.autocast(worker.device.type, dtype=torch.bfloat16, enabled=trial.precision == "bf16")
    if worker.world > 1:
        dist.barrier()
    if cuda:  # on the GPU, CUDA events time what the device did
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    done, cut, lr = 0, False, opt.param_groups[0]["lr"]
    for step in range(steps):
        if budget_left is not None and step > 0 and _budget_spent(t0, budget_left, worker):
            cut = True
            break
        batch = idx[step * bs:(step + 1) * bs]
        x = cifar.normalize(cifar.augment(ds.train_x[batch], aug)).contiguous(memory_format=fmt)
        y = ds.train_y[batch]
        with autocast:
            out = ddp(x)
            loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        hook.end_step()
        opt.step()
        if averager is not None:
            averager.after_step(ddp.module)
        lr = opt.param_groups[0]["lr"]  # the lr this step used, before the schedule moves on
        sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        done += 1
    seconds = time.perf_counter() - t0
    if cuda:
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    comm = hook.take_stats()
    return {"seconds": seconds, "images": done * bs, "loss_sum": float(loss_sum), "correct": int(correct),
            "comm_seconds": comm.comm_seconds, "simulated_delay_seconds": comm.simulated_delay_seconds, "cut": cut,
            "lr": lr}


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: cifar.Cifar10, worker: Worker, batch: int = 500) -> tuple[float, int, int]:
    """This rank's share of the test set (every image once over all ranks): loss sum, correct, count."""
    model.eval()
    idx = torch.arange(worker.rank, len(ds.test_y), worker.world, device=worker.device)
    loss_sum, correct = 0.0, 0
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        out = model(cifar.normalize(ds.test_x[b]))
        loss_sum += float(F.cross_entropy(out, ds.test_y[b], reduction="sum"))
        correct += int((out.argmax(1) == ds.test_y[b]).sum())
    return loss_sum, correct, len(idx)


def _sum_over_ranks(values: list[float], worker: Worker) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=worker.device)  # NCCL reduces device tensors only
    if worker.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def save_state(path: Path, ddp: DDP, opt, sched, trial: TrialSpec, epoch: int, train_seconds: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ddp.module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "train_seconds": train_seconds, "torch_rng": torch.get_rng_state()},
               path / STATE_FILE)
    (path / TRIAL_FILE).write_text(trial.model_dump_json())


def load_state(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location=device, weights_only=True)


Report = Callable[[dict[str, Any], Path | None], None]


def run(trial: TrialSpec, worker: Worker, ds: cifar.Cifar10, run_id: str, report: Report,
        restore: Path | None = None) -> None:
    """Train the trial on this worker, calling ``report(row, checkpoint_dir)`` after every epoch
    (the checkpoint folder on rank 0, None elsewhere)."""
    torch.manual_seed(trial.seed)  # the same initial weights on every rank; DDP also broadcasts rank 0's
    model = build(trial.arch, trial.depth, trial.version)
    ds = ds.subset(trial.data.train_images, trial.data.test_images).to(worker.device)
    spe = steps_per_epoch(len(ds.train_y), trial)
    ddp = wrap_ddp(model, trial, worker)
    opt, sched = make_optimizer(ddp, trial, spe)
    start_epoch, train_seconds = 1, 0.0
    if restore is not None:
        state = load_state(restore, worker.device)
        ddp.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
    hook, averager = algorithms.attach(ddp, trial, worker.world, worker.device, steps_done=sched.last_epoch)
    name = device_name(worker.device)
    budget, last_epoch_seconds = trial.goal.time_budget_s, None

    for epoch in range(start_epoch, trial.schedule.epochs + 1):
        budget_left = None
        if budget is not None and (last_epoch_seconds is None or train_seconds + 1.5 * last_epoch_seconds >= budget):
            budget_left = budget - train_seconds
        tr = train_epoch(ddp, hook, opt, sched, ds, trial, worker, epoch, budget_left, averager)
        last_epoch_seconds = tr["seconds"]
        t_eval = time.perf_counter()
        test_loss, test_correct, test_n = evaluate(ddp.module, ds, worker)
        loss_sum, correct, images, te_loss, te_correct, te_n = _sum_over_ranks(
            [tr["loss_sum"], tr["correct"], tr["images"], test_loss, test_correct, test_n], worker)
        eval_seconds = time.perf_counter() - t_eval
        train_seconds += tr["seconds"]
        row = {
            "sweep": trial.sweep, "run_id": run_id, "trial_id": trial.trial_id, "model": trial.model_name,
            "depth": trial.depth, "version": trial.version, "algorithm": trial.algorithm,
            "hardware": trial.hardware, "device_name": name, "workers": trial.workers,
            "cpus_per_worker": trial.cpus_per_worker, "precision": trial.precision,
            "bandwidth_mbps": trial.bandwidth_mbps,
            "latency_ms": trial.latency_ms, "batch_per_worker": trial.schedule.batch_per_worker,
            "global_batch": trial.global_batch, "lr": tr["lr"], "seed": trial.seed,
            "epoch": epoch, "train_seconds": train_seconds, "epoch_seconds": tr["seconds"],
            "eval_seconds": eval_seconds, "compute_seconds": max(0.0, tr["seconds"] - tr["comm_seconds"]),
            "comm_seconds": tr["comm_seconds"], "simulated_delay_seconds": tr["simulated_delay_seconds"],
            "images_per_second": images / tr["seconds"], "train_loss": loss_sum / images,
            "train_top1": correct / images, "test_loss": te_loss / te_n, "test_top1": te_correct / te_n,
            "budget_cut": tr["cut"], "timestamp": datetime.now(timezone.utc).isoformat(),
        }
        if worker.rank == 0:
            with tempfile.TemporaryDirectory(prefix="raybench-ckpt-") as tmp:
                save_state(Path(tmp), ddp, opt, sched, trial, epoch, train_seconds)
                report(row, Path(tmp))
        else:
            report(row, None)
        if tr["cut"] or (budget is not None and train_seconds >= budget):
            break  # the time budget is spent
        if trial.goal.stop_at_target and row["test_top1"] >= trial.goal.target_top1:
            break

def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point: the trial, the data, and the few Ray calls."""
    import ray.train  # [ray]
    import ray.train.torch  # [ray]

    trial = TrialSpec.model_validate(config["trial"])
    ctx = ray.train.get_context()  # [ray]
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())  # [ray]
    torch.set_num_threads(trial.cpus_per_worker)
    ds = cifar.load(config["data"])

    def report(row: dict[str, Any], ckpt_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None  # [ray]
        ray.train.report(results.to_metrics(row), checkpoint=ckpt,  # [ray]
                         checkpoint_dir_name=f"epoch_{row['epoch']:04d}")

    restore = None
    checkpoint = ray.train.get_checkpoint()  # [ray]
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            local = Path(tempfile.mkdtemp(prefix="raybench-restore-"))
            for f in (STATE_FILE, TRIAL_FILE):
                (local / f).write_bytes((Path(d) / f).read_bytes())
        restore = local
    run(trial, worker, ds, config["run_id"], report, restore)
