"""Gradient communication: the algorithm registry, the link model and the hook that applies it.

``ALGORITHMS`` is the one owner of the algorithm names: the sweep file is validated against it
and ``attach`` builds from it. This ``__init__`` imports no torch (the spec layer reads the
names); ``link`` is pure maths, ``hook`` the DDP communication hook behind the simulated link,
``algorithms`` the builders from torch.distributed's own hooks.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from raybench.spec.config import TrialSpec
    from raybench.worker.comm.algorithms import Comm


@dataclass(frozen=True)
class Algorithm:
    """One communication algorithm: what it does, in a line, and its builder (``module:function``
    taking ``(ddp, trial, device)`` and returning a ``Comm``)."""

    summary: str
    builder: str


_BUILDERS = "raybench.worker.comm.algorithms"
ALGORITHMS: dict[str, Algorithm] = {
    "allreduce": Algorithm("fp32 gradients all-reduced every step (the reference)", f"{_BUILDERS}:allreduce"),
    "fp16": Algorithm("gradients compressed to fp16 for the all-reduce: half the bytes", f"{_BUILDERS}:fp16"),
    "powersgd": Algorithm("rank-r PowerSGD with error feedback and warm start", f"{_BUILDERS}:powersgd"),
    "localsgd": Algorithm("post-local SGD: synchronous warm-up, then parameters averaged every period steps",
                          f"{_BUILDERS}:localsgd"),
}


def attach(ddp: torch.nn.parallel.DistributedDataParallel, trial: TrialSpec, device: torch.device) -> Comm:
    """Register the trial's algorithm as DDP's communication hook, behind the simulated link
    (after a checkpoint, ``Comm.restart`` sets its step counters and state)."""
    if trial.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {trial.algorithm!r} is not known; allowed: {', '.join(ALGORITHMS)}")
    module, function = ALGORITHMS[trial.algorithm].builder.split(":")
    return getattr(importlib.import_module(module), function)(ddp, trial, device)
