"""CPU seconds of the processes under this one: the local Ray that a sweep run in this process starts
(raylet, GCS, dashboard, each actor), sampled every half second and grouped by kind (``ray::Name``
or the program). Shared by ``startup.py`` (the whole sweep) and ``overhead.py`` (steady state)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

WORKER_KIND = "ray::RayTrainWorker"  # the training processes; every other kind is Ray's own
DRIVER_KIND = "driver (this process, less the sampler)"  # the sweep's driver: Tune's loop, the writer


def kind(proc) -> str:
    """A process's kind: ``ray::Name`` for a Ray worker or actor, else its program or script."""
    cmd = proc.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(".")[0]
    for part in cmd[:3]:
        if part.endswith(".py") or "/" in part and Path(part).name in ("raylet", "gcs_server"):
            return Path(part).name
    return Path(cmd[0]).name if cmd else proc.name()


class CpuSampler(threading.Thread):
    """Every half second, each child process's CPU seconds (user + system) so far, with the time;
    and this process's own (the sweep's driver when the sweep runs here), less this thread's."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.last: dict[int, tuple[str, float]] = {}
        self.history: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        mine = threading.get_native_id()
        while not self.stop.is_set():
            own = sum(t.user_time + t.system_time for t in me.threads() if t.id != mine)
            self.last[me.pid] = (DRIVER_KIND, own)
            for proc in me.children(recursive=True):
                try:
                    t = proc.cpu_times()
                    self.last[proc.pid] = (kind(proc), t.user + t.system)
                except (psutil.Error, IndexError):
                    pass
            self.history.append((time.time(), dict(self.last)))
            self.stop.wait(0.5)

    def by_kind(self) -> dict[str, tuple[int, float]]:
        """Per kind over the whole run: (processes, CPU seconds), most CPU first."""
        out: dict[str, tuple[int, float]] = {}
        for k, cpu in self.last.values():
            n, total = out.get(k, (0, 0.0))
            out[k] = (n + 1, total + cpu)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))

    def cores_between(self, t0: float, t1: float) -> dict[str, float]:
        """Per kind, the cores it used on average from ``t0`` to ``t1`` (CPU seconds over wall
        seconds, between the samples nearest inside the window), most first. A process that started
        inside the window counts from zero; one that ended counts to its last sample."""
        inside = [(t, s) for t, s in self.history if t0 <= t <= t1]
        if len(inside) < 2:
            raise ValueError(f"fewer than 2 CPU samples between {t0:.1f} and {t1:.1f}")
        (ta, a), (tb, b) = inside[0], inside[-1]
        out: dict[str, float] = {}
        for pid, (k, cpu) in b.items():
            out[k] = out.get(k, 0.0) + (cpu - a.get(pid, (k, 0.0))[1]) / (tb - ta)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
