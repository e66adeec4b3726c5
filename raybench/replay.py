"""The replay engine: re-time a recorded step trace under another link (pure: numpy, no torch, no ray).

Synchronous SGD computes the same weights whatever the link, only at another pace; so one run's
trace answers for every link. Replay does what the live hook (``worker.comm.hook``) does, step by
step and rank by rank, with the link model's one implementation (``link.link_seconds``):

- each bucket's modelled transfer starts when every rank had handed it over (``ready``, as the
  live link measured it; in a trace without it, the latest rank's hand-over), or when the wire is
  free of the previous bucket; the wire is one per rank, buckets queue;
- the bucket is released to DDP when its transfer is done, never before its real collective ended
  in the trace (``real_done``: the algorithm's own compute, compression included, had run);
- ``backward()`` returns as long after the last release as it did in the trace, then the step's
  own work (optimizer, bookkeeping) takes as long as it did; local SGD's parameter averaging takes
  its real time, then its modelled time (the buckets' rule);
- the step takes as long as its slowest rank; an epoch is the sum of its steps plus what the
  traced epoch spent outside its steps (``residual``: the measured epoch minus the trace replayed
  at its own link, which makes replay at the traced link exact).

A trace recorded at any link replays at any other: the real collective's end does not depend on
the hold the live hook added after it. At another worker count the link model's p changes and the
traced ranks stand for the new ones (their compute is the same per batch); the epoch's step count
scales with 1/p. What that misses is measured by ``python -m raybench.predict --validate``.

Compute is the trace's own. Where a step computes slower after waiting for the link (on a 2-core
VM, a ResNet-20 step's forward and backward took 7 to 16% longer at 100 and 20 Mbit/s than at
unlimited bandwidth, live and really shaped alike), a trace recorded at unlimited bandwidth
replays slow links short by that much (``bench/replay_fidelity.py``, ``bench/compute_inflation.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raybench.worker.comm.link import Link, link_seconds


@dataclass(frozen=True)
class Steps:
    """A trace as arrays: S steps (all epochs, in order) x R ranks x B buckets (padded: NaN times,
    zero collectives)."""

    epoch: np.ndarray  # (S,) the epoch of each step
    handover: np.ndarray  # (S, R, B)
    ready: np.ndarray  # NaN where not measured
    real_done: np.ndarray
    release: np.ndarray
    collectives: np.ndarray
    nbytes: np.ndarray
    backward: np.ndarray  # (S, R)
    end: np.ndarray
    avg_collectives: np.ndarray
    avg_nbytes: np.ndarray
    avg_real: np.ndarray
    micro: np.ndarray  # (S, R, M) [virtual] micro-batches' backward ends but the last; NaN: not measured

    @property
    def ranks(self) -> int:
        return self.backward.shape[1]


def _padded(lists: list, shape: tuple[int, int, int], fill: float, dtype) -> np.ndarray:
    out = np.full(shape, fill, dtype=dtype)
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter((v for x in lists for v in x), dtype=dtype, count=int(counts.sum()))
    rows = np.repeat(np.arange(len(lists)), counts)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    out.reshape(-1, shape[2])[rows, cols] = flat
    return out


def steps(table: pa.Table) -> Steps:
    """The arrays of a trace table (``raybench.traces.SCHEMA``); every rank must have every step."""
    t = table.sort_by([("epoch", "ascending"), ("step", "ascending"), ("rank", "ascending")])
    epoch, step, rank = (t[c].to_numpy() for c in ("epoch", "step", "rank"))
    ranks = int(rank.max()) + 1 if len(rank) else 0
    if len(rank) == 0 or len(rank) % ranks:
        raise ValueError(f"a trace needs every step of every rank; got {len(rank)} records over {ranks} ranks")
    n = len(rank) // ranks
    if not (rank.reshape(n, ranks) == np.arange(ranks)).all():
        raise ValueError("a trace needs every step of every rank; some rank is missing steps")
    counts = np.fromiter((len(x) for x in t["handover"].to_pylist()), dtype=np.int64)
    shape = (n, ranks, max(int(counts.max()), 1))

    def lists(c: str, fill: float, dtype) -> np.ndarray:
        return _padded(t[c].to_pylist(), shape, fill, dtype)

    micro = t["micro"].to_pylist()
    micro_shape = (n, ranks, max((len(x) for x in micro), default=0) or 1)

    def flat(c: str, dtype=np.float64) -> np.ndarray:
        return t[c].to_numpy().astype(dtype).reshape(n, ranks)

    return Steps(epoch=epoch.reshape(n, ranks)[:, 0], handover=lists("handover", np.nan, np.float64),
                 ready=lists("ready", np.nan, np.float64), real_done=lists("real_done", np.nan, np.float64),
                 release=lists("release", np.nan, np.float64),
                 collectives=lists("collectives", 0, np.float64), nbytes=lists("nbytes", 0, np.float64),
                 backward=flat("backward"), end=flat("end"), avg_collectives=flat("avg_collectives"),
                 avg_nbytes=flat("avg_nbytes"), avg_real=flat("avg_real"),
                 micro=_padded(micro, micro_shape, np.nan, np.float64))


@dataclass(frozen=True)
class StepTimes:
    """Per step (slowest rank's): its duration, the time it waited on communication after its last
    bucket was handed over (as ``comm_seconds`` counts it), the modelled link time and the hold (the
    time during which some finished collective was held back: on one wire, the modelled time of the
    gradient collectives, plus parameter averaging's modelled time, which follows its real one)."""

    seconds: np.ndarray
    comm: np.ndarray
    modelled: np.ndarray
    hold: np.ndarray


def _averaging(s: Steps, workers: int, link: Link) -> np.ndarray:
    modelled = link_seconds(s.avg_collectives, s.avg_nbytes, workers, link)
    return s.avg_real + np.where(s.avg_collectives > 0, modelled, 0.0)  # the hook's rule: real, then modelled


def all_ready(s: Steps) -> np.ndarray:
    """When every rank had handed each bucket over (S, R, B): as measured where the live link
    measured it; elsewhere the latest rank's hand-over (steps start together on every rank, as the
    previous step's last collective ends on all of them), never after the real collective's end."""
    latest = np.nanmax(np.where(np.isnan(s.handover), -np.inf, s.handover), axis=1, keepdims=True)
    estimate = np.minimum(np.broadcast_to(latest, s.handover.shape), s.real_done)
    return np.where(np.isnan(s.ready), estimate, np.minimum(s.ready, s.real_done))


def step_times(s: Steps, link: Link, workers: int, traced_link: Link, traced_workers: int) -> StepTimes:
    """Every step of the trace ``s`` (recorded on ``traced_link`` with ``traced_workers``) re-timed
    on ``link`` with ``workers``."""
    modelled = link_seconds(s.collectives, s.nbytes, workers, link)  # (S, R, B)
    present = ~np.isnan(s.handover)
    ready = all_ready(s)
    wire = np.zeros(s.backward.shape)
    last_release = np.zeros(s.backward.shape)
    held = np.zeros(s.backward.shape)  # time during which some finished collective was held back
    for b in range(s.handover.shape[2]):  # buckets queue on each rank's wire, in hand-over order
        here = present[:, :, b]
        wire = np.where(here, np.maximum(wire, ready[:, :, b]) + modelled[:, :, b], wire)
        release = np.maximum(last_release, np.maximum(wire, s.real_done[:, :, b]))
        held += np.where(here, np.maximum(release - np.maximum(s.real_done[:, :, b], last_release), 0.0), 0.0)
        last_release = np.where(here, release, last_release)
    any_bucket = present.any(axis=2)
    traced_last = np.where(any_bucket, np.nanmax(np.where(present, s.release, -np.inf), axis=2), 0.0)
    last_handover = np.where(any_bucket, np.nanmax(np.where(present, s.handover, -np.inf), axis=2), 0.0)
    finish = np.maximum(s.backward - traced_last, 0.0)  # DDP's own work after the last release
    backward = np.where(any_bucket, np.maximum(last_release, last_handover) + finish, s.backward)
    after = s.end - s.backward - _averaging(s, traced_workers, traced_link)  # optimizer and bookkeeping
    averaging = _averaging(s, workers, link)
    seconds = backward + np.maximum(after, 0.0) + averaging
    comm = np.where(any_bucket, np.maximum(last_release - last_handover, 0.0), 0.0) + averaging
    link_time = modelled.sum(axis=2) + link_seconds(s.avg_collectives, s.avg_nbytes, workers, link)
    hold = held + np.maximum(averaging - s.avg_real, 0.0)
    slowest = seconds.argmax(axis=1)
    pick = np.arange(len(seconds))
    return StepTimes(seconds[pick, slowest], comm.max(axis=1), link_time.max(axis=1), hold.max(axis=1))


@dataclass(frozen=True)
class EpochTimes:
    """One epoch re-timed: the row's time columns."""

    epoch: int
    epoch_seconds: float
    comm_seconds: float
    simulated_delay_seconds: float
    simulated_hold_seconds: float
    steps: int


def epoch_times(s: Steps, link: Link, workers: int, traced_link: Link, traced_workers: int,
                measured: dict[int, float], steps_per_epoch: dict[int, float] | None = None,
                traced: Steps | None = None) -> list[EpochTimes]:
    """The traced epochs re-timed on ``link`` with ``workers``. ``measured``: the traced run's
    ``epoch_seconds`` per epoch (for the residual: time outside steps). ``steps_per_epoch``: the
    number of steps an epoch has at ``workers`` when it differs from the trace's (replay scales
    the epoch's step times by it). ``traced``: the steps whose replay at the traced link gave
    ``measured``, where ``s`` differs from them (an emulated trace's compute at another worker
    count); by default ``s``."""
    at = step_times(s, link, workers, traced_link, traced_workers)
    own = step_times(s if traced is None else traced, traced_link, traced_workers, traced_link, traced_workers).seconds
    epochs, index = np.unique(s.epoch, return_inverse=True)

    def per_epoch(x: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=x, minlength=len(epochs))

    total, comm, delay, hold, own_total = (per_epoch(x) for x in (at.seconds, at.comm, at.modelled, at.hold, own))
    n = np.bincount(index, minlength=len(epochs))
    out = []
    for i, e in enumerate(epochs.tolist()):
        scale = 1.0 if not steps_per_epoch or e not in steps_per_epoch else steps_per_epoch[e] / n[i]
        residual = measured.get(e, own_total[i]) - own_total[i]
        out.append(EpochTimes(int(e), float((total[i] + residual) * scale), float(comm[i] * scale),
                              float(delay[i] * scale), float(hold[i] * scale), int(round(n[i] * scale))))
    return out
