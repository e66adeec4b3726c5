"""The DDP communication hook that runs the real collective and applies the link model to it.

The hook runs the real collective (a hook from torch.distributed.algorithms.ddp_comm_hooks: its
compression, its all-reduces, its decompression) and models the link's transfer of the bucket from
the moment every rank has handed it over (on gloo, a one-float all-reduce issued with the bucket
tells when) or the wire is free, for the modelled link time; DDP gets the result when both the
transfer and the real collective are done. Buckets queue on the link one after another, as on a
wire; the wire is a separate thread, so DDP keeps overlapping communication with the backward pass.

It also records the step trace that replay re-times (``StepRecord``, per step): when each bucket
was handed over, when its real collective finished, when it was released, and what it sent.
"""
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from raybench.worker.comm.link import Link, link_seconds


@dataclass
class CommStats:
    """Per-epoch communication totals, as the steps saw them."""

    comm_seconds: float = 0.0  # wait after the last bucket was ready until all were done
    simulated_delay_seconds: float = 0.0  # modelled link time of every collective
    simulated_hold_seconds: float = 0.0  # time results were held back after their real collective had finished
    steps: int = 0


@dataclass
class StepRecord:
    """One step on this rank, for replay; times in seconds from the step's start (this rank's clock).

    Per bucket, in hand-over order: ``handover`` (DDP handed it to the hook), ``ready`` (every rank
    had handed it over: a one-float all-reduce issued with it has finished; NaN where the link is not
    modelled), ``real_done`` (its real collective, compression included, had finished), ``release``
    (DDP got the result), ``collectives`` and ``nbytes`` (what it puts on the link). ``backward``: when
    ``backward()`` returned; ``end``: when the next step began. Local SGD's parameter averaging after
    the optimizer: ``avg_collectives``, ``avg_nbytes``, ``avg_real`` (its real duration). ``micro``:
    when each virtual worker's micro-batch but the last had finished its backward (``micro_done``).
    """

    handover: list[float]
    ready: list[float]
    real_done: list[float]
    release: list[float]
    collectives: list[int]
    nbytes: list[int]
    backward: float = 0.0
    end: float = 0.0
    avg_collectives: int = 0
    avg_nbytes: int = 0
    avg_real: float = 0.0
    micro: list[float] = field(default_factory=list)


class _Wire(threading.Thread):
    """One wire per rank, off the backward thread: takes finished collectives in the order they
    finished; each one's transfer starts when every rank had handed it over (its real end where that
    is not measured) or the wire is free, and DDP gets the result when the transfer is done (never
    before the real collective).

    On a GPU the real end is when the device has finished the collective (the wire's stream waits
    for the collective's streams, then the host waits for the wire's stream): a future can complete
    on the host before the device has produced and reduced the bucket (NCCL's does at enqueue).
    """

    def __init__(self, device: torch.device | None, lock: threading.Lock) -> None:
        super().__init__(name="raybench-wire", daemon=True)
        self.device, self.lock = device, lock  # lock: the hook's, over the records and free_at
        self.free_at = 0.0  # when the wire finishes what it has taken so far (perf_counter)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def send(self, real: torch.futures.Future, out: torch.futures.Future, modelled: float, record: list) -> None:
        self._queue.put((real, out, modelled, record))

    def run(self) -> None:
        while True:
            self._deliver(*self._queue.get())

    def _deliver(self, real: torch.futures.Future, out: torch.futures.Future, modelled: float, record: list) -> None:
        """Complete ``out`` with the real collective's result after the hold. Whatever fails on the way
        goes to ``out`` as its exception, so DDP, which waits on ``out``, gets the error instead of
        waiting forever, and the wire goes on with the other futures."""
        try:
            value = real.wait()  # on a GPU: this thread's current stream now waits for the collective's
            if self.device is not None:
                torch.cuda.current_stream(self.device).synchronize()  # the device has finished the bucket
            with self.lock:
                if self.device is not None:
                    record[1] = time.perf_counter()
                start = record[1] if record[5] != record[5] else min(record[5], record[1])  # NaN: not measured
                deadline = self.free_at = max(self.free_at, start) + modelled
            wait = deadline - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            with self.lock:
                record[2] = time.perf_counter()
            out.set_result(value)  # on a GPU: DDP's stream waits for this thread's, which the host drained
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
        self.recording = True  # False: no step trace (bench/replay_speed.py measures what recording costs)
        self.device = device if device is not None and device.type == "cuda" else None
        self._lock = threading.Lock()
        self._wire: _Wire | None = None
        # When every rank has handed a bucket over: a one-float all-reduce on gloo (whose futures
        # complete when the data has moved; NCCL's complete at enqueue, so there the real end stands in).
        self._ready_op = workers > 1 and dist.is_initialized() and dist.get_backend() == "gloo"
        self._stats = CommStats()
        self._step_start: float | None = None  # begin_step's time; None: no step open (set-up, evaluation)
        self._buckets: list[list] = []  # this step's [handover, real_done, release, collectives, nbytes, ready]
        self._counted = 0  # buckets of this step that end_step has counted
        self._avg = (0, 0, 0.0)  # this step's parameter averaging: collectives, bytes, real seconds
        self._backward = 0.0
        self._micro: list[float] = []  # [virtual] this step's micro_done times, from its start
        self._trace: list[StepRecord] = []

    def modelled_seconds(self, sizes: list[int]) -> float:
        """Link time of a sequence of all-reduces (each pays the latency term)."""
        return float(link_seconds(len(sizes), sum(sizes), self.workers, self.link))

    def __call__(self, bucket: dist.GradBucket) -> torch.futures.Future:
        if self.bypass:
            return default_hooks.allreduce_hook(None, bucket)
        ready = time.perf_counter()
        sizes = self.collectives(bucket)  # before the inner hook, which may advance its own state
        modelled = self.modelled_seconds(sizes)
        with self._lock:
            self._stats.simulated_delay_seconds += modelled
            record = [ready, ready, ready, len(sizes) if self.workers > 1 else 0, sum(sizes), float("nan")]
            self._buckets.append(record)
        if modelled and self._ready_op:  # issued just before the bucket's own, in the same order on every rank
            def all_ready(_fut: torch.futures.Future) -> None:
                t = time.perf_counter()
                with self._lock:
                    record[5] = t
            dist.all_reduce(torch.zeros(1), async_op=True).get_future().add_done_callback(all_ready)
        real = self.inner(self.inner_state, bucket)
        if modelled == 0.0:
            def finished(fut: torch.futures.Future):
                t = time.perf_counter()
                with self._lock:
                    record[1] = record[2] = t
                return fut.value()
            return real.then(finished)

        out = torch.futures.Future(devices=[self.device] if self.device is not None else None)
        wire = self._ensure_wire()

        def real_finished(_fut: torch.futures.Future) -> None:
            # Every rank has handed the bucket over and the real collective (with the algorithm's own
            # compute) is done on the host: the wire takes it (on a GPU, once the device is done too).
            with self._lock:
                record[1] = time.perf_counter()
            wire.send(real, out, modelled, record)

        real.add_done_callback(real_finished)
        return out

    def _ensure_wire(self) -> _Wire:
        with self._lock:
            if self._wire is None:
                self._wire = _Wire(self.device, self._lock)
                self._wire.start()
            return self._wire

    def charge(self, sizes: list[int], real_seconds: float) -> None:
        """Communication outside DDP's backward (model averaging), by the buckets' rule: the modelled
        transfer starts when the real one has finished (the step waits for it, so a plain sleep)."""
        modelled = self.modelled_seconds(sizes)
        if modelled:
            time.sleep(modelled)
        with self._lock:
            if self._wire is not None:  # the wire was busy until now
                self._wire.free_at = max(self._wire.free_at, time.perf_counter())
            self._stats.comm_seconds += real_seconds + modelled
            self._stats.simulated_delay_seconds += modelled
            self._stats.simulated_hold_seconds += modelled
            self._avg = (len(sizes) if self.workers > 1 else 0, sum(sizes), real_seconds)

    def begin_step(self) -> None:
        """A training step starts (before its data and forward): closes the previous step's record."""
        now = time.perf_counter()
        with self._lock:
            self._close_record(now)
            self._buckets, self._counted = [], 0
            self._step_start = now if self.recording else None

    def micro_done(self) -> None:
        """[virtual] A micro-batch other than the step's last has finished its backward."""
        if self.recording and self._step_start is not None:
            t = time.perf_counter()
            with self._lock:
                self._micro.append(t - self._step_start)

    def end_backward(self) -> None:
        """``backward()`` has returned: every bucket of the step is released."""
        if not self.recording:
            return
        t = time.perf_counter()
        with self._lock:
            self._backward = t

    def _close_record(self, now: float) -> None:
        if self._step_start is None:
            return
        t0 = self._step_start
        b = self._buckets
        self._trace.append(StepRecord(
            handover=[r[0] - t0 for r in b], ready=[r[5] - t0 for r in b], real_done=[r[1] - t0 for r in b],
            release=[r[2] - t0 for r in b],
            collectives=[r[3] for r in b], nbytes=[r[4] for r in b], backward=max(self._backward - t0, 0.0),
            end=now - t0, avg_collectives=self._avg[0], avg_nbytes=self._avg[1], avg_real=self._avg[2],
            micro=self._micro))
        self._step_start, self._buckets, self._avg, self._backward = None, [], (0, 0, 0.0), 0.0
        self._micro = []

    def end_step(self) -> None:
        """Close one step's timing; call after backward() returned (all buckets are done then)."""
        with self._lock:
            step, self._counted = self._buckets[self._counted:], len(self._buckets)
            if step:
                last_ready = max(r[0] for r in step)
                self._stats.comm_seconds += max(0.0, max(r[2] for r in step) - last_ready)
                self._stats.steps += 1
            released = float("-inf")  # the hold: time during which some finished collective was held back
            for _, done, release, *_ in sorted(step, key=lambda r: r[2]):
                self._stats.simulated_hold_seconds += max(0.0, release - max(done, released))
                released = release

    def take_stats(self) -> CommStats:
        with self._lock:
            stats, self._stats = self._stats, CommStats()
        return stats

    def take_trace(self, now: float | None = None) -> list[StepRecord]:
        """The steps recorded since the last call (an open step is closed at ``now``)."""
        with self._lock:
            if now is not None:
                self._close_record(now)
            self._step_start, self._buckets, self._counted, self._micro = None, [], 0, []
            trace, self._trace = self._trace, []
        return trace


def link_hook(state: LinkHook, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The function DDP calls for each bucket (a module-level function, as register_comm_hook wants)."""
    return state(bucket)
