"""Everything a worker builds before its first step: device, model, DDP, optimizer, LR schedule,
communication, and the state restored from a checkpoint; ``prepare`` returns it as one ``Setup``."""
from __future__ import annotations

import inspect
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from raybench import models
from raybench.spec.config import TrialSpec
from raybench.spec.schedule import lr_factor, peak_lr
from raybench.worker import checkpoint, comm
from raybench.worker.comm.algorithms import Comm
from raybench.worker.data import Cifar10
from raybench.worker.virtual import VirtualWorkers, check


@dataclass(frozen=True)
class Worker:
    """Where this process sits: its rank, the number of ranks, its device, and how many virtual
    workers it runs in turn (``worker.virtual``; the trial's workers are then ``world * virtual``)."""

    rank: int
    world: int
    device: torch.device
    virtual: int = 1  # [virtual] virtual workers per process


@dataclass
class Setup:
    """One worker's training state: what the loop reads and steps."""

    trial: TrialSpec
    worker: Worker
    ds: Cifar10  # this trial's subset, on the worker's device
    ddp: DDP
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    comm: Comm
    steps_per_epoch: int
    vw: VirtualWorkers  # [virtual] the workers this process runs: its own rank alone unless virtual > 1
    start_epoch: int = 1
    train_seconds: float = 0.0  # training time before start_epoch (from the checkpoint)


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


# DDP's switch for the buffer broadcast in forward: ``forward_sync_buffers`` in the pinned torch,
# ``broadcast_buffers`` in the torch releases before it (GPU images often carry an older one).
_NO_BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                   else "broadcast_buffers")


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
               bucket_cap_mb=1024 if one_bucket else None, **{_NO_BUFFER_SYNC: False})


def make_ddp(model: torch.nn.Module, trial: TrialSpec, worker: Worker) -> tuple[DDP, Comm]:
    """DDP with the trial's algorithm as its communication hook, behind the simulated link."""
    ddp = wrap_ddp(model, trial, worker)
    return ddp, comm.attach(ddp, trial, worker.device)


def make_optimizer(model: torch.nn.Module, trial: TrialSpec, steps_per_epoch: int):
    """SGD with the trial's momentum and weight decay, under the MLBench LR schedule (per step)."""
    s = trial.schedule
    opt = torch.optim.SGD(model.parameters(), lr=peak_lr(s, trial.workers), momentum=s.momentum,
                          nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(s, trial.workers, steps_per_epoch))
    return opt, sched


def steps_per_epoch(n_train: int, trial: TrialSpec) -> int:
    """Full batches per rank per epoch; raises ValueError when a shard holds less than one."""
    per_rank = n_train // trial.workers
    steps = per_rank // trial.schedule.batch_per_worker
    if steps < 1:
        raise ValueError(f"{n_train} training images give worker shards of {per_rank}, less than one batch of "
                         f"{trial.schedule.batch_per_worker}: use more images or a smaller schedule.batch_per_worker")
    return steps


def _settle_buckets(ddp: DDP, communication: Comm, device: torch.device) -> None:
    """One backward on a dummy batch, communicated by a plain all-reduce, before a restored state is
    loaded. DDP lays its gradient buckets out anew after the first backward (in the order the
    gradients became ready), and the algorithms' per-bucket state (PowerSGD's error feedback and
    warm-start factors) is laid out like the buckets: a restored run must continue with the layout
    that state was saved in, not with DDP's initial one."""
    communication.hook.bypass = True
    try:
        ddp(torch.zeros(2, 3, 32, 32, device=device)).sum().backward()
    finally:
        communication.hook.bypass = False
    ddp.zero_grad(set_to_none=True)


def prepare(trial: TrialSpec, worker: Worker, ds: Cifar10, restore: Path | None = None) -> Setup:
    """Build the worker's training state, from ``restore`` (a checkpoint folder) when given."""
    check(trial, worker.world, worker.virtual)  # [virtual] allreduce only, world x virtual = trial.workers
    torch.manual_seed(trial.seed)  # the same initial weights on every rank; DDP also broadcasts rank 0's
    model = models.build(trial.arch, trial.depth, trial.version)
    ds = ds.subset(trial.data.train_images, trial.data.test_images).to(worker.device)
    spe = steps_per_epoch(len(ds.train_y), trial)
    ddp = wrap_ddp(model, trial, worker)
    opt, sched = make_optimizer(ddp, trial, spe)
    communication = comm.attach(ddp, trial, worker.device)
    vw = VirtualWorkers(worker.rank, worker.world, worker.virtual, ddp.module)  # [virtual]
    start_epoch, train_seconds, mine = 1, 0.0, {}
    if restore is not None:
        _settle_buckets(ddp, communication, worker.device)
        state = checkpoint.load_state(restore, worker.device)
        mine = state["ranks"][worker.rank] if "ranks" in state else {}  # this rank's own part
        ddp.module.load_state_dict(mine.get("model", state["model"]))
        with torch.no_grad():
            for name, buf in ddp.module.named_buffers():
                if name in mine.get("buffers", {}):
                    buf.copy_(mine["buffers"][name])
        vw.load_state_dict(mine.get("virtual", []))  # [virtual] each virtual worker's buffers
        opt.load_state_dict(mine.get("optimizer", state["optimizer"]))
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(mine.get("torch_rng", state["torch_rng"]).cpu())
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
    if restore is not None:
        communication.restart(sched.last_epoch, mine.get("comm", {}))
    return Setup(trial, worker, ds, ddp, opt, sched, communication, spe, vw, start_epoch, train_seconds)
