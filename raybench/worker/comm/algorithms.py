"""The builders of ``comm.ALGORITHMS``, each from torch.distributed's own hooks and model averager,
with the bytes each one really puts on the wire (for the simulated link).

- ``allreduce``: fp32 gradients, the reference (torch's ``allreduce_hook``).
- ``fp16``: gradients compressed to fp16 for the all-reduce (``fp16_compress_hook``): half the bytes.
- ``powersgd``: rank-r PowerSGD with error feedback and warm start (``powerSGD_hook``): after
  ``start_iter`` plain steps, each bucket sends its uncompressed tensors, then the P factors, then
  the Q factors (three all-reduces).
- ``localsgd``: post-local SGD (``post_localSGD_hook`` + ``PeriodicModelAverager``): synchronous
  for ``warmup_steps``, then no gradient communication; parameters are averaged every ``period``
  steps instead.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, post_localSGD_hook, powerSGD_hook
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

from raybench.spec.config import TrialSpec
from raybench.worker.comm.hook import CommStats, LinkHook, StepRecord, fp32_allreduce, link_hook
from raybench.worker.comm.link import Link


def fp16_allreduce(bucket: dist.GradBucket) -> list[int]:
    return [bucket.buffer().numel() * 2]


def powersgd_collectives(state: powerSGD_hook.PowerSGDState):
    """The all-reduces powerSGD_hook makes for a bucket, by the same rules it uses to decide."""

    def sizes(bucket: dist.GradBucket) -> list[int]:
        if state.iter < state.start_powerSGD_iter:
            return fp32_allreduce(bucket)
        elem = bucket.buffer().element_size()
        plain = ps = qs = 0
        for tensor in bucket.gradients():
            n, m = tensor.shape[0], tensor.numel() // tensor.shape[0]
            rank = min(n, m, state.matrix_approximation_rank)
            compress, _, _ = powerSGD_hook._should_compress(n, m, rank, state.min_compression_rate)
            if compress:
                ps, qs = ps + n * rank, qs + m * rank
            else:
                plain += tensor.numel()
        return [plain * elem, ps * elem, qs * elem]

    return sizes


class LocalSGDAverager:
    """Post-local SGD's parameter averaging after each optimizer step, charged to the link."""

    def __init__(self, hook: LinkHook, warmup_steps: int, period: int) -> None:
        self.hook = hook
        self.averager = PeriodicModelAverager(period=period, warmup_steps=warmup_steps)

    def after_step(self, module: torch.nn.Module) -> None:
        a = self.averager
        averages = a.step >= a.warmup_steps and (a.step - a.warmup_steps) % a.period == 0
        t0 = time.perf_counter()
        a.average_parameters(module.parameters())
        if averages:
            nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
            self.hook.charge([nbytes], time.perf_counter() - t0)


class Comm:
    """A trial's communication, as the training step sees it, and the state a restart needs."""

    def __init__(self, hook: LinkHook, averager: LocalSGDAverager | None = None,
                 powersgd: powerSGD_hook.PowerSGDState | None = None,
                 localsgd: post_localSGD_hook.PostLocalSGDState | None = None) -> None:
        self.hook, self.averager, self.powersgd, self.localsgd = hook, averager, powersgd, localsgd

    def after_step(self, module: torch.nn.Module) -> None:
        """After the optimizer step: close the step's communication timing (backward has reduced
        every bucket by now), then local SGD's periodic parameter averaging."""
        self.hook.end_step()
        if self.averager is not None:
            self.averager.after_step(module)

    def take_stats(self) -> CommStats:
        """The epoch's communication totals so far, and a fresh count."""
        return self.hook.take_stats()

    def begin_step(self) -> None:
        """A step starts: the trace closes the previous one (see ``hook.StepRecord``)."""
        self.hook.begin_step()

    def micro_done(self) -> None:
        """[virtual] A micro-batch other than the step's last has finished its backward (the trace)."""
        self.hook.micro_done()

    def end_backward(self) -> None:
        self.hook.end_backward()

    def take_trace(self, now: float) -> list[StepRecord]:
        """The epoch's step records, the open step closed at ``now``."""
        return self.hook.take_trace(now)

    def state_dict(self) -> dict[str, Any]:
        """This rank's algorithm state (PowerSGD: error feedback, warm-start factors, RNG, step),
        as plain tensors and numbers; step counters of the others come from the scheduler."""
        if self.powersgd is None:
            return {}
        st = self.powersgd
        name, keys, pos, has_gauss, cached = st.rng.get_state()
        return {"error_dict": dict(st.error_dict), "p_memory_dict": dict(st.p_memory_dict),
                "q_memory_dict": dict(st.q_memory_dict), "iter": st.iter,
                "rng": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                        "has_gauss": has_gauss, "cached": cached},
                "total_numel_before_compression": st.total_numel_before_compression,
                "total_numel_after_compression": st.total_numel_after_compression}

    def restart(self, steps_done: int, state: dict[str, Any]) -> None:
        """Continue after ``steps_done`` optimizer steps from ``state_dict()``'s result (tensors
        already on this rank's device; empty for a checkpoint that has none)."""
        if self.powersgd is not None:
            self.powersgd.iter = steps_done
        if self.localsgd is not None:
            self.localsgd.iter = min(steps_done, self.localsgd.start_localSGD_iter)
        if self.averager is not None:
            self.averager.averager.step = steps_done
        if self.powersgd is None or not state:
            return
        st, rng = self.powersgd, state["rng"]
        st.error_dict, st.p_memory_dict, st.q_memory_dict = (
            dict(state["error_dict"]), dict(state["p_memory_dict"]), dict(state["q_memory_dict"]))
        st.iter = state["iter"]
        st.rng.set_state((rng["name"], rng["keys"].cpu().numpy().astype(np.uint32), rng["pos"], rng["has_gauss"],
                          rng["cached"]))
        st.total_numel_before_compression = state["total_numel_before_compression"]
        st.total_numel_after_compression = state["total_numel_after_compression"]


def _link(trial: TrialSpec) -> Link:
    return Link(trial.bandwidth_mbps, trial.latency_ms, trial.link_overhead_ms)


def _register(ddp: torch.nn.parallel.DistributedDataParallel, hook: LinkHook) -> None:
    ddp.register_comm_hook(hook, link_hook)


def allreduce(ddp, trial: TrialSpec, device: torch.device) -> Comm:
    hook = LinkHook(_link(trial), trial.workers, default_hooks.allreduce_hook, None, fp32_allreduce, device)
    _register(ddp, hook)
    return Comm(hook)


def fp16(ddp, trial: TrialSpec, device: torch.device) -> Comm:
    hook = LinkHook(_link(trial), trial.workers, default_hooks.fp16_compress_hook, None, fp16_allreduce, device)
    _register(ddp, hook)
    return Comm(hook)


def powersgd(ddp, trial: TrialSpec, device: torch.device) -> Comm:
    o = trial.powersgd
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=o.rank, start_powerSGD_iter=o.start_iter,
        min_compression_rate=o.min_compression_rate, warm_start=o.warm_start, random_seed=trial.seed)
    hook = LinkHook(_link(trial), trial.workers, powerSGD_hook.powerSGD_hook, state, powersgd_collectives(state),
                    device)
    _register(ddp, hook)
    return Comm(hook, powersgd=state)


def localsgd(ddp, trial: TrialSpec, device: torch.device) -> Comm:
    o = trial.localsgd
    state = post_localSGD_hook.PostLocalSGDState(process_group=None, subgroup=None,
                                                 start_localSGD_iter=o.warmup_steps,
                                                 post_local_gradient_allreduce=False)

    def collectives(bucket: dist.GradBucket) -> list[int]:
        return fp32_allreduce(bucket) if state.iter < state.start_localSGD_iter else []

    hook = LinkHook(_link(trial), trial.workers, post_localSGD_hook.post_localSGD_hook, state, collectives, device)
    _register(ddp, hook)
    return Comm(hook, LocalSGDAverager(hook, o.warmup_steps, o.period), localsgd=state)
