"""The time columns of an emulated trial (issue 13): pure, numpy only, no torch, no ray.

A trial of p workers that runs as virtual workers on k processes (``worker.virtual``) trains
exactly as p real workers would, but each of its steps runs v = p/k micro-batches in turn per
process, so its measured times say nothing about p machines. Its rows' time columns are predicted
instead, with the replay engine (``raybench.replay``) on the trial's own step trace:

1. **One micro-batch per worker.** A traced step of a process is v micro-batches (forward and
   backward each; the buckets are handed over during the last one's backward), the wait for the
   collective, then the optimizer. On a CPU the trace times each micro-batch (``micro``: when each
   but the last finished its backward; the last one's compute is what remains of the step's
   compute, its time until backward returned less its wait): each is one worker's compute ``m``
   on this hardware. Where they were not timed one by one (a GPU, an older trace), the step's
   compute is split evenly over its v micro-batches.
2. **Stragglers.** A synchronous step waits for the slowest of p workers, so each worker's compute
   at p is not the mean of the measured distribution of ``m`` but the expected maximum of p draws
   from it (``expected_max``, over every micro-batch of the epoch): it grows with p as stragglers do.
3. **Replay.** Every traced step is moved so that its compute is that expected maximum: its
   times shift by ``D - v*m`` (the v-1 earlier micro-batches go, the last one takes ``D``), each
   bucket's real collective keeps its duration after the last process handed it over, and the
   replay engine charges the link at p workers (the trace was recorded with the hook at p: same
   link, same p). An epoch is its re-timed steps plus what the measured epoch spent outside its
   steps (replay's residual, computed on the trace as recorded).

What this misses: where micro-batches were not timed one by one, ``m`` is the mean of a
process's v micro-batches, whose spread is narrower than single micro-batches' (stragglers
underestimated); a real p-worker cluster's collective also differs from k processes' real one
(only the link model's share at p is charged). ``python -m raybench.predict --validate`` measures
the error where real runs exist.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from raybench.replay import EpochTimes, Steps, step_times
from raybench.worker.comm.link import Link


def expected_max(samples: np.ndarray | list[float], p: int) -> float:
    """The expected maximum of ``p`` independent draws (with replacement) from ``samples``: with
    the samples sorted, x_(i) is the maximum with probability (i/n)^p - ((i-1)/n)^p."""
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    if len(x) == 0 or p < 1:
        raise ValueError(f"expected_max needs samples and p >= 1, got {len(x)} samples and p = {p}")
    i = np.arange(1, len(x) + 1, dtype=np.float64)
    weights = (i / len(x)) ** p - ((i - 1) / len(x)) ** p
    return float(weights @ x)


def _wait(s: Steps) -> tuple[np.ndarray, np.ndarray]:
    """Per traced step and process: the time it waited on communication after its last hand-over
    (as replay counts it), and whether it had buckets."""
    present = ~np.isnan(s.handover)
    any_bucket = present.any(axis=2)
    last_release = np.where(any_bucket, np.nanmax(np.where(present, s.release, -np.inf), axis=2), 0.0)
    last_handover = np.where(any_bucket, np.nanmax(np.where(present, s.handover, -np.inf), axis=2), 0.0)
    return np.where(any_bucket, np.maximum(last_release - last_handover, 0.0), 0.0), any_bucket


def micro_batch_seconds(s: Steps, virtual: int) -> np.ndarray:
    """(S, R, virtual): the compute of each micro-batch per traced step and process. The step's
    compute is its time until backward returned less its wait on communication; where the trace
    timed the micro-batches (``micro``), each is its own part of it (the last: what remains), else
    each is an even share."""
    wait, _ = _wait(s)
    compute = np.maximum(s.backward - wait, 0.0)
    even = np.repeat((compute / virtual)[:, :, None], virtual, axis=2)
    if virtual == 1 or s.micro.shape[2] < virtual - 1:
        return even
    done = s.micro[:, :, :virtual - 1]
    bounds = np.concatenate([np.zeros(compute.shape + (1,)), done, compute[:, :, None]], axis=2)
    timed = ~np.isnan(done).any(axis=2, keepdims=True)
    return np.where(timed, np.maximum(np.diff(bounds, axis=2), 0.0), even)


def at_scale(s: Steps, virtual: int, workers: int) -> Steps:
    """The trace ``s`` of processes running ``virtual`` micro-batches per step, as steps of single
    workers at ``workers``: each step's micro-batch compute is the expected maximum, over
    ``workers`` draws, of the epoch's measured per-micro-batch compute."""
    m = micro_batch_seconds(s, virtual)  # (S, R, virtual)
    target = np.empty(m.shape[:2])
    for e in np.unique(s.epoch):
        rows = s.epoch == e
        target[rows] = expected_max(m[rows], workers)
    shift = (target - m.sum(axis=2))[:, :, None]  # (S, R, 1): every time of the step moves by this

    present = ~np.isnan(s.handover)
    handover = np.where(present, np.maximum(s.handover + shift, 0.0), np.nan)
    # a bucket's real collective ends as long after the last process handed it over as it did
    last = np.where(present, s.handover, -np.inf).max(axis=1, keepdims=True)
    duration = np.where(present, s.real_done - last, np.inf).min(axis=1, keepdims=True)
    duration = np.where(np.isfinite(duration), np.maximum(duration, 0.0), 0.0)
    return dataclasses.replace(  # ready: a moved step's transfer starts at the latest (moved) hand-over
        s, handover=handover, ready=np.full_like(s.ready, np.nan),
        real_done=np.where(present, handover + duration, np.nan),
        release=s.release + shift, backward=np.maximum(s.backward + shift[:, :, 0], 0.0),
        end=np.maximum(s.end + shift[:, :, 0], 0.0))


def epoch_times(s: Steps, virtual: int, link: Link, workers: int, measured: dict[int, float]) -> list[EpochTimes]:
    """The epochs of an emulated trial's trace ``s`` (``virtual`` virtual workers per process,
    ``workers`` in all, recorded on ``link``) as ``workers`` real workers would take them on
    ``link``. ``measured``: the emulated run's ``epoch_seconds`` per epoch (for the residual)."""
    traced = step_times(s, link, workers, link, workers).seconds
    at = step_times(at_scale(s, virtual, workers) if virtual > 1 else s, link, workers, link, workers)
    epochs, index = np.unique(s.epoch, return_inverse=True)

    def per_epoch(x: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=x, minlength=len(epochs))

    own, total, comm, delay, hold = (per_epoch(x) for x in (traced, at.seconds, at.comm, at.modelled, at.hold))
    n = np.bincount(index, minlength=len(epochs))
    out = []
    for i, e in enumerate(epochs.tolist()):
        residual = measured.get(e, own[i]) - own[i]
        out.append(EpochTimes(int(e), float(total[i] + residual), float(comm[i]), float(delay[i]), float(hold[i]),
                              int(n[i])))
    return out
