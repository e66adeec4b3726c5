"""Virtual workers: p-worker synchronous SGD on k processes (k divides p), each process running
p/k virtual workers in turn (issue 13, "Past the machine room").

Virtual worker v (its global rank, 0 <= v < p) takes exactly what rank v of a real p-worker run
would: the epoch's shard (``data.shard_indices(n, v, p, seed, epoch)``), the augmentation stream
(``augmentation(seed, epoch, v)``) and its own batch-norm running statistics. Process r runs the
virtual workers r*p/k ... (r+1)*p/k - 1. One optimizer step per step of the real run: each
virtual worker's micro-batch goes forward and backward in turn, its batch-norm buffers swapped
into the module before its forward and saved back after; the gradients accumulate locally (DDP's
``no_sync`` for all but the last micro-batch) and the last backward all-reduces them over the k
processes. DDP averages over its process group's size k, so each local loss is scaled by k/p: the
gradient is then the mean over all p micro-batches, as in the real run, and the weights after
every step equal the real run's up to the order of float summation.

Evaluation averages batch-norm statistics over all p virtual workers
(``evaluation.consensus_model(..., local=...)``). The LR schedule is the trial's (``trial.workers``
= p) and needs nothing here.

A process that runs one worker (p = k, the real run) is the case ``virtual = 1``: one stream, its
own rank's, no buffer swapping, no scaling, no ``no_sync``: exactly the plain loop, which is why
``loop.train_epoch`` goes through this module on both paths.

Only ``allreduce`` is emulated: ``check`` rejects the other algorithms (fp16 would compress the
locally accumulated sum rather than each worker's gradient, PowerSGD's error feedback and local
SGD's drifting weights are per worker), with a ValueError that says so.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from raybench.spec.virtual import EMULATED_ALGORITHMS
from raybench.worker import data as cifar

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from raybench.spec.config import TrialSpec

__all__ = ["EMULATED_ALGORITHMS", "VirtualWorkers", "augmentation", "check"]

Stream = tuple[torch.Tensor, torch.Generator]  # one worker's epoch: its shard's indices, its augmentation RNG


def augmentation(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The augmentation stream of global rank ``rank`` in ``epoch`` (the same for real and virtual)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


def check(trial: TrialSpec, world: int, virtual: int) -> None:
    """Raise ValueError unless ``world`` processes x ``virtual`` virtual workers can emulate the trial."""
    if virtual < 1:
        raise ValueError(f"virtual workers per process must be at least 1, got {virtual}")
    if virtual == 1:
        return
    if trial.algorithm not in EMULATED_ALGORITHMS:
        raise ValueError(f"algorithm {trial.algorithm!r} cannot run as virtual workers: emulation supports "
                         f"{', '.join(EMULATED_ALGORITHMS)} only (run it with as many processes as workers)")
    if world * virtual != trial.workers:
        raise ValueError(f"{world} processes x {virtual} virtual workers = {world * virtual}, "
                         f"but the trial has workers = {trial.workers}")


class VirtualWorkers:
    """The workers one process runs in turn: their global ranks, their batch-norm buffers (only
    when there are several), and the scale of each local loss (k/p)."""

    def __init__(self, rank: int, world: int, virtual: int, module: torch.nn.Module) -> None:
        self.ranks = list(range(rank * virtual, (rank + 1) * virtual))
        self.world = world * virtual  # p, the trial's workers
        self.scale = world / self.world  # k/p: DDP divides the summed gradient by k, the run needs p
        self._module = module
        self.buffers: list[dict[str, torch.Tensor]] | None = None
        if virtual > 1:  # each starts from the module's initial buffers, as every real rank does
            self.buffers = [{n: b.detach().clone() for n, b in module.named_buffers()} for _ in self.ranks]

    def streams(self, n: int, seed: int, epoch: int, device: torch.device) -> list[Stream]:
        """Each worker's shard of ``n`` training images and augmentation stream for ``epoch``."""
        return [(cifar.shard_indices(n, r, self.world, seed, epoch).to(device), augmentation(seed, epoch, r))
                for r in self.ranks]

    @contextmanager
    def own_buffers(self, i: int) -> Iterator[None]:
        """The module runs with worker ``i``'s batch-norm buffers; what it leaves in them is saved."""
        if self.buffers is None:
            yield
            return
        mine = self.buffers[i]
        with torch.no_grad():
            for name, b in self._module.named_buffers():
                b.copy_(mine[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in self._module.named_buffers():
                    mine[name].copy_(b)

    def forward_backward(self, ddp: DDP, ds: cifar.Cifar10, streams: list[Stream], step: int, bs: int,
                         autocast, fmt: torch.memory_format,
                         mark: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s micro-batch of every worker, forward and backward in turn; the last
        backward all-reduces the accumulated gradients. Returns the summed loss (unscaled: each
        worker's mean loss times its batch) and the count of correct predictions. ``mark`` is
        called after each micro-batch but the last (the trace times them one by one)."""
        loss_sum = correct = None
        last = len(streams) - 1
        for i, (idx, aug) in enumerate(streams):
            batch = idx[step * bs:(step + 1) * bs]
            x = cifar.normalize(cifar.augment(ds.train_x[batch], aug)).contiguous(memory_format=fmt)
            y = ds.train_y[batch]
            with self.own_buffers(i), (ddp.no_sync() if i < last else nullcontext()):
                with autocast:
                    out = ddp(x)
                    loss = F.cross_entropy(out, y)
                (loss * self.scale if self.scale != 1.0 else loss).backward()
            if mark is not None and i < last:
                mark()
            lsum, c = loss.detach() * len(y), (out.argmax(1) == y).sum()
            loss_sum, correct = (lsum, c) if loss_sum is None else (loss_sum + lsum, correct + c)
        return loss_sum, correct

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        """Each virtual worker's batch-norm buffers (empty for one worker: the module holds them)."""
        return [dict(b) for b in self.buffers] if self.buffers is not None else []

    def load_state_dict(self, state: list[dict[str, torch.Tensor]]) -> None:
        if self.buffers is None:
            return
        if len(state) != len(self.buffers):
            raise ValueError(f"the checkpoint holds {len(state)} virtual workers' buffers for this process, "
                             f"this run has {len(self.buffers)}")
        with torch.no_grad():
            for mine, saved in zip(self.buffers, state, strict=True):
                for name, b in mine.items():
                    b.copy_(saved[name])
