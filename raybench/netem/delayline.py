"""The delay line: netem in user space, for kernels without it.

Where the kernel has no netem (``CONFIG_NET_SCH_NETEM`` unset, as on some VM kernels), the pair puts a
TUN device in each namespace and a small forwarding process in between (``python -m raybench.netem
delayline``) that applies exactly netem's rule, per direction, in user space. TCP and gloo see a real
link: real round trips, real serialisation, real queueing. The TUN devices carry 64 KB packets
(``DELAYLINE_MTU``), the forwarder runs SCHED_FIFO (like the kernel's softirq, it is not queued behind
the trainers) and costs some CPU on the machine's own cores (about 5-10 ms per ResNet-20 step): on a
small machine that is part of the "real" side.
"""
from __future__ import annotations

import contextlib
import heapq
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .namespaces import NetnsError, in_netns, libc, open_tun

DELAYLINE_MTU = 65000  # the delay line forwards whole 64 KB segments (what TSO/GRO hand a real NIC): 7x fewer
# packets than 9000-byte jumbo frames, so the forwarder takes ~3x less CPU from the trainers it shares cores with

_PR_SET_PDEATHSIG, _PR_SET_TIMERSLACK = 1, 29


def delayline(fds: tuple[int, int], rate_bps: float, delay_s: float, limit: int, control: int | None = None) -> None:
    """Forward IP packets between two TUN fds, per direction: serialise at ``rate_bps`` (0: no
    limit) behind the earlier packets, then deliver ``delay_s`` later (netem's ``delay D rate R``).
    ``control`` (a pipe) takes lines ``RATE_BPS DELAY_S``, answered ``ok`` on stdout; EOF ends it."""
    a, b = fds
    peer = {a: b, b: a}
    free_at = {a: 0.0, b: 0.0}  # when each direction's serialiser is free again
    queued = {a: 0, b: 0}  # packets per direction not yet delivered (the limit's count)
    dropped = {a: 0, b: 0}
    heap: list = []
    seq = 0
    clock = time.monotonic
    watch = [a, b] + ([control] if control is not None else [])
    pending = b""
    while True:
        timeout = max(0.0, heap[0][0] - clock()) if heap else None
        readable, _, _ = select.select(watch, [], [], timeout)
        for fd in readable:
            if fd == control:
                chunk = os.read(control, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    try:
                        rate_bps, delay_s = (float(x) for x in line.split())
                        reply = "ok"
                    except ValueError:
                        reply = f"error: expected 'RATE_BPS DELAY_S', got {line!r}"
                    if reply == "ok":
                        now = clock()
                        free_at = {k: min(v, now) for k, v in free_at.items()}
                    sys.stdout.write(reply + "\n")
                    sys.stdout.flush()
                continue
            for _ in range(256):  # drain what is there, a bounded batch at a time
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                now = clock()
                if queued[fd] >= limit:
                    dropped[fd] += 1
                    continue
                depart = now
                if rate_bps > 0:
                    depart = max(now, free_at[fd]) + len(pkt) * 8 / rate_bps
                    free_at[fd] = depart
                heapq.heappush(heap, (depart + delay_s, seq, fd, pkt))
                seq += 1
                queued[fd] += 1
        now = clock()
        while heap and heap[0][0] <= now:
            _, _, fd, pkt = heapq.heappop(heap)
            queued[fd] -= 1
            with contextlib.suppress(OSError):
                os.write(peer[fd], pkt)


def run_delayline(namespaces: Sequence[str], ifname: str, rate_bps: float, delay_s: float, limit: int) -> int:
    """The forwarding process: a TUN device ``ifname`` in each of the two namespace files, ``ready`` on
    stdout, then the delay line, controlled from stdin, until stdin closes or SIGINT."""
    libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the links go with the process that built them
    libc().prctl(_PR_SET_TIMERSLACK, 1000)  # wake within ~1 us of a packet's due time, not 50 us
    with contextlib.suppress(OSError, AttributeError):  # like the kernel's softirq: ahead of the trainers
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    fds = []
    for ns in namespaces:
        with in_netns(ns):
            fds.append(open_tun(ifname))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        delayline((fds[0], fds[1]), rate_bps, delay_s, limit, control=sys.stdin.fileno())
    except KeyboardInterrupt:
        pass
    return 0


class DelayLine:
    """The delay line process, as its owner (``ShapedPair``) sees it: started with
    ``python -m raybench.netem delayline``, it says ``ready`` once its TUN devices exist, then takes
    ``RATE_BPS DELAY_S`` lines on stdin, each answered ``ok``; it ends when stdin closes."""

    def __init__(self, python: str, namespaces: Sequence[Path], ifname: str, rate_bps: float, delay_s: float,
                 limit: int, log: Path) -> None:
        cmd = [python, "-m", "raybench.netem", "delayline", *(a for ns in namespaces for a in ("--ns", str(ns))),
               "--ifname", ifname, "--rate-bps", str(rate_bps), "--delay-s", str(delay_s), "--limit", str(limit)]
        self.log = log
        self._log_file = open(log, "w")  # the child writes it until stop()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file,
                                     text=True, cwd=Path(__file__).resolve().parents[2])  # this checkout's raybench
        self.pid = self.proc.pid

    def wait_ready(self) -> None:
        """Block until the process has built its TUN devices; a NetnsError (with its log) if it failed."""
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.wait(5)
            raise NetnsError(f"the delay line did not start: {line!r} {self.log.read_text()[-2000:]}")

    def reshape(self, rate_bps: float, delay_s: float) -> None:
        """Apply a new rate (0: no limit) and one-way delay to both directions, from now on."""
        if self.proc.poll() is not None:
            raise NetnsError("the delay line is not running")
        line = f"{rate_bps} {delay_s}"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if reply != "ok":
            raise NetnsError(f"the delay line refused {line!r}: {reply!r}")

    def stop(self) -> None:
        """Close its stdin (which ends it), SIGTERM, and SIGKILL if it is still there after 5 s."""
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        self._log_file.close()
