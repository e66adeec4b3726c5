"""Evaluation of one model per epoch: every rank evaluates the same model, the one the checkpoint saves.

The rule (README, "What a trial does"): the evaluation model is the rank average. Batch-norm
running statistics are averaged over ranks (each rank saw 1/p of the epoch's images, so each
holds a 1/p sample of them); under local SGD the weights, which drift apart between averaging
events, are averaged too. Broadcasting rank 0's model instead would throw away p-1 ranks'
statistics. Training itself goes on with each rank's own state. A process that runs several
virtual workers (``worker.virtual``) passes their buffers as ``local``: the average is then over
all of them, every process's, as over the ranks of the real run.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F

from raybench.worker import data as cifar


def consensus_model(module: torch.nn.Module, world: int, average_weights: bool,
                    local: list[dict[str, torch.Tensor]] | None = None) -> torch.nn.Module:
    """A copy of ``module`` with floating-point buffers (batch-norm running statistics) and, when
    ``average_weights``, parameters replaced by their mean over ``world`` ranks (a collective:
    every rank calls it). ``local``: the buffers of the virtual workers this process runs (the
    same number on every rank), which then stand for the module's own in the mean."""
    model = copy.deepcopy(module)
    if world == 1 and not local:
        return model
    named = [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    parts = [sum(v[n].reshape(-1).to(torch.float64) for v in local) if local else b.reshape(-1).to(torch.float64)
             for n, b in named]  # [virtual] a sum over this process's virtual workers
    tensors = [b for _, b in named]
    if average_weights:
        tensors += [p.data for p in model.parameters()]
        parts += [p.data.reshape(-1).to(torch.float64) * (len(local) if local else 1)  # shared by its virtual workers
                  for p in model.parameters()]
    flat = torch.cat(parts)
    if world > 1:
        dist.all_reduce(flat)
    flat /= world * (len(local) if local else 1)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return model


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: cifar.Cifar10, rank: int, world: int, device: torch.device,
             batch: int = 500) -> tuple[float, int, int]:
    """This rank's share of the test set (every image once over all ranks): loss sum, correct, count."""
    model.eval()
    idx = torch.arange(rank, len(ds.test_y), world, device=device)
    loss_sum, correct = 0.0, 0
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        out = model(cifar.normalize(ds.test_x[b]))
        loss_sum += float(F.cross_entropy(out, ds.test_y[b], reduction="sum"))
        correct += int((out.argmax(1) == ds.test_y[b]).sum())
    return loss_sum, correct, len(idx)
