"""The MLBench closed-division learning-rate schedule, as pure functions of the step.

Global lr = lr_per_256 x global_batch / 256 (Goyal et al.'s linear scaling rule). Training starts
at the one-worker lr (lr_per_256 x batch_per_worker / 256) and warms up linearly, step by step,
to the global lr over ``warmup_epochs``; then the lr is multiplied by ``gamma`` at each milestone
epoch. With one worker there is nothing to warm up: the two lrs are equal.
"""
from __future__ import annotations

from raybench.spec.config import Schedule


def peak_lr(schedule: Schedule, workers: int) -> float:
    """The scaled lr that warm-up reaches: lr_per_256 x global batch / 256."""
    return schedule.lr_per_256 * schedule.batch_per_worker * workers / 256


def base_lr(schedule: Schedule) -> float:
    """The one-worker lr that warm-up starts from."""
    return schedule.lr_per_256 * schedule.batch_per_worker / 256


def lr_at(step: int, steps_per_epoch: int, schedule: Schedule, workers: int) -> float:
    """The lr used for optimizer step ``step`` (0-based), with ``steps_per_epoch`` steps an epoch."""
    if steps_per_epoch < 1 or step < 0:
        raise ValueError(f"need steps_per_epoch >= 1 and step >= 0, got {steps_per_epoch}, {step}")
    epoch = step / steps_per_epoch  # fractional epoch at the start of this step
    peak, start = peak_lr(schedule, workers), base_lr(schedule)
    if epoch < schedule.warmup_epochs:
        return start + (peak - start) * epoch / schedule.warmup_epochs
    decays = sum(1 for m in schedule.milestones if epoch >= m)
    return peak * schedule.gamma**decays


def lr_factor(schedule: Schedule, workers: int, steps_per_epoch: int):
    """``lr_at`` as a multiplier of the peak lr, for torch.optim.lr_scheduler.LambdaLR."""
    peak = peak_lr(schedule, workers)
    return lambda step: lr_at(step, steps_per_epoch, schedule, workers) / peak
