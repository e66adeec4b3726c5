"""The per-worker loop: synchronous data-parallel SGD with PyTorch DDP, one row reported per epoch.

Plain PyTorch, no Ray: ``driver.train.train_worker`` hands this module a trial, a data set and a
``report`` callable. Each epoch: train on this rank's shard, evaluate on this rank's share of the
test set, sum the counts over ranks, report the row with a checkpoint. ``epoch_seconds`` covers
the training steps only (data, forward, backward with communication, optimizer), not evaluation
or checkpointing. Batch-norm statistics stay per worker (``forward_sync_buffers=False``), as in
MLBench's reference.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from raybench.results import EpochRow
from raybench.spec.config import TrialSpec
from raybench.worker import checkpoint
from raybench.worker import data as cifar
from raybench.worker.setup import Setup, Worker, device_name, prepare

Report = Callable[[EpochRow, Path | None], None]


def _budget_spent(t0: float, budget_left: float, worker: Worker) -> bool:
    """Whether rank 0's clock says the time budget is spent; every rank gets rank 0's answer."""
    flag = torch.tensor([float(time.perf_counter() - t0 >= budget_left)], device=worker.device)
    if worker.world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def train_epoch(s: Setup, epoch: int, budget_left: float | None = None) -> dict[str, float]:
    """One epoch over this rank's shard. Returns this rank's sums and the epoch's wall time.

    With ``budget_left`` (seconds), the epoch stops after the step during which the budget ran
    out (``cut`` in the result); the check costs one tiny broadcast per step, so callers pass it
    only for epochs in which the budget can run out.
    """
    # ---------------------------------------------------------------- this epoch's shard and streams
    trial, worker, ds, ddp, opt, sched = s.trial, s.worker, s.ds, s.ddp, s.opt, s.sched
    ddp.train()
    bs = trial.schedule.batch_per_worker
    idx = cifar.shard_indices(len(ds.train_y), worker.rank, worker.world, trial.seed, epoch).to(worker.device)
    aug = torch.Generator().manual_seed(trial.seed * 1_000_003 + epoch * 1009 + worker.rank)
    loss_sum = torch.zeros((), device=worker.device)
    correct = torch.zeros((), device=worker.device, dtype=torch.long)
    s.comm.take_stats()
    cuda = worker.device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    autocast = torch.autocast(worker.device.type, dtype=torch.bfloat16, enabled=trial.precision == "bf16")

    # ---------------------------------------------------------------- timed: the training steps only
    if worker.world > 1:
        dist.barrier()
    if cuda:  # on the GPU, CUDA events time what the device did
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    done, cut, lr = 0, False, opt.param_groups[0]["lr"]
    for step in range(len(idx) // bs):
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
        opt.step()
        s.comm.after_step(ddp.module)  # [comm] close the step's timing; local SGD averages here
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

    comm = s.comm.take_stats()
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


def run(trial: TrialSpec, worker: Worker, ds: cifar.Cifar10, run_id: str, report: Report,
        restore: Path | None = None) -> None:
    """Train the trial on this worker, calling ``report(row, checkpoint_dir)`` after every epoch
    (the checkpoint folder on rank 0, None elsewhere)."""
    s = prepare(trial, worker, ds, restore)
    name = device_name(worker.device)
    budget, last_epoch_seconds, train_seconds = trial.goal.time_budget_s, None, s.train_seconds

    for epoch in range(s.start_epoch, trial.schedule.epochs + 1):
        # ---------------------------------------------------------------- train, evaluate, sum over ranks
        budget_left = None
        if budget is not None and (last_epoch_seconds is None or train_seconds + 1.5 * last_epoch_seconds >= budget):
            budget_left = budget - train_seconds
        tr = train_epoch(s, epoch, budget_left)
        last_epoch_seconds = tr["seconds"]
        t_eval = time.perf_counter()
        test_loss, test_correct, test_n = evaluate(s.ddp.module, s.ds, worker)
        loss_sum, correct, images, te_loss, te_correct, te_n = _sum_over_ranks(
            [tr["loss_sum"], tr["correct"], tr["images"], test_loss, test_correct, test_n], worker)
        eval_seconds = time.perf_counter() - t_eval
        train_seconds += tr["seconds"]

        # ---------------------------------------------------------------- the row and the checkpoint
        row = EpochRow(
            sweep=trial.sweep, run_id=run_id, trial_id=trial.trial_id, model=trial.model_name,
            depth=trial.depth, version=trial.version, algorithm=trial.algorithm,
            hardware=trial.hardware, device_name=name, workers=trial.workers,
            cpus_per_worker=trial.cpus_per_worker, precision=trial.precision,
            bandwidth_mbps=trial.bandwidth_mbps, latency_ms=trial.latency_ms,
            batch_per_worker=trial.schedule.batch_per_worker, global_batch=trial.global_batch, lr=tr["lr"],
            seed=trial.seed, epoch=epoch, train_seconds=train_seconds, epoch_seconds=tr["seconds"],
            eval_seconds=eval_seconds, compute_seconds=max(0.0, tr["seconds"] - tr["comm_seconds"]),
            comm_seconds=tr["comm_seconds"], simulated_delay_seconds=tr["simulated_delay_seconds"],
            images_per_second=images / tr["seconds"], train_loss=loss_sum / images,
            train_top1=correct / images, test_loss=te_loss / te_n, test_top1=te_correct / te_n,
            budget_cut=tr["cut"], timestamp=datetime.now(UTC),
        )
        if worker.rank == 0:
            with checkpoint.scratch() as tmp:
                checkpoint.save(Path(tmp), s.ddp.module, s.opt, s.sched, trial, epoch, train_seconds)
                report(row, Path(tmp))
        else:
            report(row, None)
        if tr["cut"] or (budget is not None and train_seconds >= budget):
            break  # the time budget is spent
        if trial.goal.stop_at_target and row.test_top1 >= trial.goal.target_top1:
            break
