"""The sweep's console: one line per epoch per trial, printed on the driver by a Tune callback.

Tune's own status table is off (``tune.RunConfig(verbose=0)``): it shows the trials' config
columns and a "Logical resource usage" line that counts only the trainables' reservations (no
CPU), not the workers' placement groups, so it says 0 CPUs while every CPU trains. These lines say
what a user reads instead: which trial, how far, how accurate, how fast, how long to go.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray import tune

from raybench import results


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def eta_seconds(row: dict[str, Any], epochs: int, budget_s: float | None, wall_per_epoch: float) -> float:
    """Time left in a trial after ``row``: the epochs still to run (fewer when the training-time
    budget runs out first) times the wall time an epoch takes on the driver's clock, evaluation and
    reporting included. A trial that stops at its target accuracy ends sooner."""
    left = max(0, epochs - int(row["epoch"]))
    if budget_s is not None and row["epoch_seconds"] > 0:
        budget_left = max(0.0, budget_s - row["train_seconds"])
        left = min(left, math.ceil(budget_left / row["epoch_seconds"] - 1e-9))
    return left * wall_per_epoch


def wall_per_epoch(row: dict[str, Any], walls: list[float], since_start: float | None) -> float:
    """The driver's wall time per epoch of a trial: the mean between its reports; before its second,
    the row's own epoch and evaluation seconds, except for an emulated trial, whose epoch seconds are
    predicted at its worker count: then the wall time since the trial started (start-up included)."""
    if walls:
        return sum(walls) / len(walls)
    if row.get("source") == results.SOURCE_EMULATED and since_start is not None:  # [virtual]
        return since_start
    return row["epoch_seconds"] + row["eval_seconds"]


def progress_line(tag: str, trial_id: str, row: dict[str, Any], epochs: int, eta_s: float) -> str:
    """One epoch of one trial: trial id, epoch/epochs, test top-1, images/s, training seconds, ETA."""
    return (f"{tag} {trial_id}  epoch {row['epoch']}/{epochs}  test top-1 {row['test_top1']:.3f}  "
            f"{row['images_per_second']:.0f} img/s  train {row['train_seconds']:.1f} s  ETA {clock(eta_s)}"
            + ("  (time budget reached)" if row.get("budget_cut") else ""))


class Progress(tune.Callback):
    """Prints, on the driver, a line when a trial starts, one per reported epoch, and one when it
    ends. A row sent again unchanged (after a restart, the row of the checkpoint it continues from)
    is not printed twice."""

    def __init__(self, trial_ids: list[str], out: TextIO | None = None) -> None:
        self._index = {t: i for i, t in enumerate(trial_ids, 1)}
        self._total = len(trial_ids)
        self._out = out
        self._seen: dict[str, dict[int, Any]] = {}  # trial -> epoch -> timestamp of the row printed
        self._last: dict[str, float] = {}  # trial -> driver time of its latest new row
        self._walls: dict[str, list[float]] = {}  # trial -> driver seconds between consecutive epochs
        self._started: dict[str, float] = {}  # trial -> driver time of its start line

    def _print(self, text: str) -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def _tag(self, trial_id: str) -> str:
        return f"[{self._index.get(trial_id, '?')}/{self._total}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        spec = trial.config["trial"]
        per = f"{spec['cpus_per_worker']} CPU" + (f" + {spec['gpus_per_worker']:g} GPU"
                                                   if spec["hardware"] == "gpu" else "")
        procs = spec.get("processes") or spec["workers"]
        runs = f"{procs} worker(s)" if procs == spec["workers"] else \
            f"{spec['workers']} virtual workers on {procs} process(es)"  # [virtual]
        self._started[spec["trial_id"]] = time.monotonic()
        self._print(f"{self._tag(spec['trial_id'])} {spec['trial_id']}  started: {runs} x "
                    f"({per}), {spec['schedule']['epochs']} epoch(s)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = results.from_metrics(result)
        if row is None:
            return
        spec = trial.config["trial"]
        tid, epoch = spec["trial_id"], int(row["epoch"])
        seen = self._seen.setdefault(tid, {})
        if seen.get(epoch) == row["timestamp"]:
            return
        seen[epoch] = row["timestamp"]
        now = time.monotonic()
        walls = self._walls.setdefault(tid, [])
        if tid in self._last:
            walls.append(now - self._last[tid])
        self._last[tid] = now
        started = self._started.get(tid)
        wall = wall_per_epoch(row, walls, None if started is None else now - started)
        epochs = spec["schedule"]["epochs"]
        eta = eta_seconds(row, epochs, spec["goal"].get("time_budget_s"), wall)
        self._print(progress_line(self._tag(tid), tid, row, epochs, eta))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.config["trial"]["trial_id"]
        done = max(self._seen.get(tid, {}), default=0)
        self._print(f"{self._tag(tid)} {tid}  complete after {done} epoch(s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = trial.config["trial"]["trial_id"]
        done = max(self._seen.get(tid, {}), default=0)
        self._print(f"{self._tag(tid)} {tid}  failed after {done} epoch(s); the error is printed at the end")
