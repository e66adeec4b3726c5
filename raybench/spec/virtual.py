"""Which trials run as virtual workers, on how many processes, and what emulation refuses
(issue 13): pure, no torch, no ray. A sweep with ``max_processes: N`` runs a trial of p workers on
k processes, k the largest divisor of p that is at most N and fits the machine (when its size is
known at plan time), each process running p/k virtual workers (``worker.virtual``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raybench.spec.config import TrialSpec

EMULATED_ALGORITHMS = ("allreduce",)  # what virtual workers emulate exactly (see worker.virtual)
CIFAR10_TRAIN_IMAGES = 50_000  # the training set's size when data.train_images is null


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


def with_processes(t: TrialSpec, limit: int) -> TrialSpec:
    """``t`` on at most ``limit`` processes (the largest divisor of its workers that fits), when its
    sweep allows virtual workers (``processes`` set); unchanged otherwise."""
    if t.processes is None:
        return t
    k = largest_divisor(t.workers, min(t.processes, limit))
    return t if k == t.processes else t.model_copy(update={"processes": k})


def check_trials(trials: list[TrialSpec], source: str) -> None:
    """What no worker should find out: a step needs more images than the training set holds, or a
    trial to be emulated uses an algorithm virtual workers do not emulate. Raises ConfigError."""
    from raybench.spec.config import ConfigError

    for t in trials:
        b = t.schedule.batch_per_worker
        if t.workers * b > t.train_images:
            where = f"data.train_images {t.data.train_images}" if t.data.train_images else \
                f"CIFAR-10's {CIFAR10_TRAIN_IMAGES:,} training images"
            raise ConfigError(
                f"{source}: trial {t.trial_id}: workers {t.workers} x schedule.batch_per_worker {b} = "
                f"{t.workers * b:,} images per step, more than {where}; allowed: workers x batch_per_worker "
                f"<= {t.train_images:,} (use fewer workers, a smaller batch or more images)")
        if t.virtual > 1 and t.algorithm not in EMULATED_ALGORITHMS:
            raise ConfigError(
                f"{source}: trial {t.trial_id}: algorithm {t.algorithm!r} with workers {t.workers} on "
                f"{t.procs} process(es) (max_processes, or what the machine holds) would run as virtual "
                f"workers, which emulate {', '.join(EMULATED_ALGORITHMS)} only; allowed: algorithm allreduce, or "
                f"max_processes null or at least {t.workers} with hardware for {t.workers} workers")
