"""The DDP communication hook that runs the real collective and applies the link model to it.

The hook runs the real
collective (a hook from torch.distributed.algorithms.ddp_comm_hooks), then holds its result until
the modelled time has passed. Buckets queue on the link one after another, as on a wire; the hold
happens on a separate "wire" thread, so DDP keeps overlapping communication with the backward pass.
"""
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from raybench.worker.comm.link import Link, allreduce_seconds


@dataclass
class CommStats:
    """Per-epoch communication totals, as the steps saw them."""

    comm_seconds: float = 0.0  # wait after the last bucket was ready until all were done
    simulated_delay_seconds: float = 0.0  # modelled link time of every all-reduce (the real transfers run inside it)
    steps: int = 0


class _Wire(threading.Thread):
    """Completes held futures at their modelled times, in deadline order, off the backward thread."""

    def __init__(self) -> None:
        super().__init__(name="raybench-wire", daemon=True)
        self._cv = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()

    def hold(self, deadline: float, real: torch.futures.Future, out: torch.futures.Future,
             on_release: Callable[[float], None]) -> None:
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), real, out, on_release))
            self._cv.notify()

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                deadline, _, real, out, on_release = self._heap[0]
                wait = deadline - time.perf_counter()
                if wait > 0:
                    self._cv.wait(wait)  # a new, earlier deadline may arrive meanwhile
                    continue
                heapq.heappop(self._heap)
            _release(real, out, on_release)


def _release(real: torch.futures.Future, out: torch.futures.Future,
             on_release: Callable[[float], None]) -> None:
    """Complete ``out`` with the real collective's result. Whatever fails on the way (the collective,
    ``on_release``, ``set_result``) goes to ``out`` as its exception, so DDP, which waits on ``out``,
    gets the error instead of waiting forever, and the wire goes on with the other futures."""
    try:
        value = real.wait()  # on a GPU: this thread's stream waits for the collective's before set_result
        on_release(time.perf_counter())
        out.set_result(value)
    except Exception as e:
        if not out.done():
            out.set_exception(e)


InnerHook = Callable[[object, dist.GradBucket], torch.futures.Future]
Collectives = Callable[[dist.GradBucket], list[int]]  # bytes of each all-reduce a bucket needs


def fp32_allreduce(bucket: dist.GradBucket) -> list[int]:
    """The bucket as it is: one all-reduce of its buffer."""
    buf = bucket.buffer()
    return [buf.numel() * buf.element_size()]


class LinkHook:
    """State of the communication hook: the inner hook (the real collective), the link, the timers.

    Register with ``ddp.register_comm_hook(state, link_hook)``. ``end_step()`` after each
    backward closes the step's timing; ``take_stats()`` returns and resets the epoch's totals.
    """

    def __init__(self, link: Link, workers: int, inner: InnerHook = default_hooks.allreduce_hook,
                 inner_state: object = None, collectives: Collectives = fp32_allreduce,
                 device: torch.device | None = None) -> None:
        self.link, self.workers = link, workers
        self.inner, self.inner_state = inner, inner_state
        self.collectives = collectives
        self.bypass = False  # True: a plain all-reduce that touches no state and no clock (set-up only)
        self.devices = [device] if device is not None and device.type == "cuda" else None
        self._lock = threading.Lock()
        self._wire_free_at = 0.0
        self._wire: _Wire | None = None
        self._ready: list[float] = []  # per bucket of this step: when DDP handed it over
        self._done: list[float] = []  # when its result was released to DDP
        self._stats = CommStats()

    def modelled_seconds(self, sizes: list[int]) -> float:
        """Link time of a sequence of all-reduces (each pays the latency term)."""
        return sum(allreduce_seconds(n, self.workers, self.link) for n in sizes)

    def __call__(self, bucket: dist.GradBucket) -> torch.futures.Future:
        if self.bypass:
            return default_hooks.allreduce_hook(None, bucket)
        ready = time.perf_counter()
        sizes = self.collectives(bucket)  # before the inner hook, which may advance its own state
        modelled = self.modelled_seconds(sizes)
        with self._lock:
            self._ready.append(ready)
            self._stats.simulated_delay_seconds += modelled
            deadline = max(self._wire_free_at, ready) + modelled
            self._wire_free_at = deadline
        real = self.inner(self.inner_state, bucket)
        if modelled == 0.0:
            def record(fut: torch.futures.Future):
                t = time.perf_counter()
                with self._lock:
                    self._done.append(t)
                return fut.value()
            return real.then(record)

        out = torch.futures.Future(devices=self.devices)

        def real_finished(_fut: torch.futures.Future) -> None:
            try:
                self._ensure_wire().hold(deadline, real, out, self._released)
            except Exception as e:  # no wire to hold it on: DDP gets the error rather than no answer
                out.set_exception(e)

        real.add_done_callback(real_finished)
        return out

    def _released(self, t: float) -> None:
        with self._lock:
            self._done.append(t)

    def _ensure_wire(self) -> _Wire:
        with self._lock:
            if self._wire is None:
                self._wire = _Wire()
                self._wire.start()
            return self._wire

    def charge(self, sizes: list[int], real_seconds: float) -> None:
        """Communication outside DDP's backward (model averaging): the step waits for it anyway, so
        a plain sleep for the modelled time not covered by the real transfer is what a wire does."""
        modelled = self.modelled_seconds(sizes)
        delay = max(0.0, modelled - real_seconds)
        if delay:
            time.sleep(delay)
        with self._lock:
            self._wire_free_at = max(self._wire_free_at, time.perf_counter())
            self._stats.comm_seconds += real_seconds + delay
            self._stats.simulated_delay_seconds += modelled

    def end_step(self) -> None:
        """Close one step's timing; call after backward() returned (all buckets are done then)."""
        with self._lock:
            if self._ready:
                last_ready = max(self._ready)
                self._stats.comm_seconds += max(0.0, max(self._done) - last_ready)
                self._stats.steps += 1
            self._ready.clear()
            self._done.clear()

    def take_stats(self) -> CommStats:
        with self._lock:
            stats, self._stats = self._stats, CommStats()
        return stats


def link_hook(state: LinkHook, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The function DDP calls for each bucket (a module-level function, as register_comm_hook wants)."""
    return state(bucket)
