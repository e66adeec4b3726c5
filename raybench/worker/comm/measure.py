"""Timing the real all-reduce on an initialised process group: what ``python -m raybench.calibrate`` fits.

Plain torch.distributed (no Ray): every rank calls the same function with the same arguments.

* ``allreduce_times``: first one untimed all-reduce of the largest size (TCP's windows open as in a
  training run's steady state, not size by size); then per message size one untimed all-reduce
  and ``repeats`` all-reduces back to back, each timed on its own. Ranks run a synchronous ring in
  lockstep, so after the untimed one the duration of each timed op on a rank is the period of the
  ring (no start skew between ranks is in it, unlike a barrier before each op, which releases the
  ranks one latency apart).
* ``bucket_times``: ``count`` all-reduces of ``nbytes`` each issued back to back with
  ``async_op=True``, as DDP issues its gradient buckets, then all waited for: the time of the
  whole batch. Against ``count`` single all-reduces it shows whether concurrent buckets cost
  extra (or overlap their latencies).

Both return every rank's own samples; the caller takes the minimum or median and fits (``worker.comm.fit``).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.distributed as dist


def _buffer(nbytes: int) -> torch.Tensor:
    return torch.ones(max(1, nbytes // 4), dtype=torch.float32)  # float32: 4 bytes per element


def allreduce_times(sizes: Sequence[int], repeats: int) -> dict[int, list[float]]:
    """Seconds of each of ``repeats`` back-to-back all-reduces per size in bytes (this rank's clock)."""
    out: dict[int, list[float]] = {}
    if sizes:  # the largest first, untimed: TCP's windows grow to what a training run's steady state has
        dist.all_reduce(_buffer(max(sizes)))
    for nbytes in sizes:
        t = _buffer(nbytes)
        dist.all_reduce(t)  # untimed: buffers allocated, ranks in lockstep
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        out[int(nbytes)] = times
    return out


def bucket_times(nbytes: int, count: int, repeats: int) -> list[float]:
    """Seconds for ``count`` async all-reduces of ``nbytes`` each, issued back to back and all waited for."""
    buckets = [_buffer(nbytes) for _ in range(count)]
    for b in buckets:  # untimed round, as above
        dist.all_reduce(b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        works = [dist.all_reduce(b, async_op=True) for b in buckets]
        for w in works:
            w.wait()
        times.append(time.perf_counter() - t0)
    return times
