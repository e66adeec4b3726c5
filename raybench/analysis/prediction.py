"""Predicted trials from measured ones: re-time a measured trial's trace under another link (and
worker count) into epoch rows in the result schema, and check predictions against measurements.

A predicted row copies the measured row's accuracy columns (the arithmetic of synchronous SGD does
not depend on the link) and replaces its time columns with the replay's (``raybench.replay``);
``source`` is ``predicted`` and ``predicted_from`` names the measured trial. Its trial id is the
grid point's id with ``PREDICTED_SUFFIX``, so that a predicted and a measured run of the same
grid point are two trials side by side. A predicted trial ends at the last epoch that fits its
time budget (a slower link trains fewer epochs in the same budget).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import pandas as pd

from raybench import emulation, replay, results, traces
from raybench.analysis import metrics
from raybench.spec import config as cfg
from raybench.spec.schedule import peak_lr
from raybench.worker.comm.link import Link

PREDICTED_SUFFIX = "_pred"


@dataclass(frozen=True)
class Measured:
    """A measured trial that can be replayed: its spec, rows (epoch order), step trace as recorded and
    file metadata."""

    spec: cfg.TrialSpec
    rows: list[dict[str, Any]]
    trace: replay.Steps
    meta: dict[str, str]

    def steps_at(self, workers: int) -> replay.Steps:
        """Its trace as single workers' steps at ``workers``: as recorded for real workers; for an
        emulated trial (processes running several virtual workers each), each step's compute is the
        slowest of ``workers`` draws (``emulation.at_scale``)."""
        if self.spec.virtual == 1:
            return self.trace
        return emulation.at_scale(self.trace, self.spec.virtual, workers)

    @cached_property
    def steps(self) -> replay.Steps:
        """Its single workers' steps at its own worker count: what its rows' times replay."""
        return self.steps_at(self.spec.workers)

    @property
    def link(self) -> Link:
        return Link(self.spec.bandwidth_mbps, self.spec.latency_ms, self.spec.link_overhead_ms)


def measured_trials(path) -> tuple[list[Measured], list[str]]:
    """``measured_in`` the trial files under ``path``."""
    return measured_in(results.read_trials(path))


def measured_in(trials: list[results.TrialFile]) -> tuple[list[Measured], list[str]]:
    """The complete measured (or emulated) trials of ``trials`` that have a step trace, and a note for
    each trial left out (and why). An emulated trial's trace replays as its single workers' steps
    (``Measured.steps_at``)."""
    found, skipped = [], []
    for t in trials:
        if not t.rows:
            continue
        trial_id = t.rows[0]["trial_id"]
        if any(r.get("source") not in (None, results.SOURCE_MEASURED, results.SOURCE_EMULATED) for r in t.rows):
            continue
        if t.meta.get(results.META_STATUS.decode()) != results.STATUS_COMPLETE:
            skipped.append(f"{trial_id}: not complete ({t.meta.get(results.META_STATUS.decode(), 'no status')})")
            continue
        table = traces.read(traces.beside(t.path, trial_id))
        if table is None or table.num_rows == 0:
            skipped.append(f"{trial_id}: no step trace (written before traces existed, or its _traces was removed)")
            continue
        spec = cfg.TrialSpec.model_validate_json(t.meta[results.META_CONFIG.decode()])
        rows = sorted(t.rows, key=lambda r: r["epoch"])
        found.append(Measured(spec, rows, replay.steps(table), t.meta))
    return found, skipped


def predicted_spec(spec: cfg.TrialSpec, link: Link, workers: int, point: cfg.TrialSpec | None = None) -> cfg.TrialSpec:
    """The grid point ``spec`` would be at ``link`` and ``workers`` (``point`` when the sweep names
    it), under its predicted trial id."""
    if point is not None:
        return point.model_copy(update={"trial_id": point.trial_id + PREDICTED_SUFFIX})
    grid_id = cfg._trial_id(spec.arch, spec.depth, spec.version, workers, spec.hardware, link.bandwidth_mbps,
                            link.latency_ms, spec.algorithm, spec.seed, spec.precision)
    return spec.model_copy(update={"workers": workers, "processes": None, "bandwidth_mbps": link.bandwidth_mbps,
                                   "latency_ms": link.latency_ms, "link_overhead_ms": link.overhead_ms,
                                   "link_profile": None, "link_handshake_trips": 0.0,
                                   "trial_id": grid_id + PREDICTED_SUFFIX})


def _steps_per_epoch(m: Measured, workers: int) -> dict[int, float] | None:
    """Steps per epoch at ``workers`` when it differs from the trace's worker count."""
    if workers == m.spec.workers:
        return None
    images = m.spec.data.train_images or 50_000
    per = images // workers // m.spec.schedule.batch_per_worker
    if per < 1:
        raise ValueError(f"{workers} workers x batch {m.spec.schedule.batch_per_worker} is more than the "
                         f"{images} training images of {m.spec.trial_id}")
    return {r["epoch"]: float(per) for r in m.rows}


def predict(m: Measured, link: Link, workers: int, run_id: str,
            point: cfg.TrialSpec | None = None) -> tuple[cfg.TrialSpec, list[dict[str, Any]]]:
    """The rows of ``m`` re-timed on ``link`` with ``workers`` (the grid point ``point``, if named)."""
    spec = predicted_spec(m.spec, link, workers, point)
    measured = {r["epoch"]: r["epoch_seconds"] for r in m.rows}
    times = {e.epoch: e for e in replay.epoch_times(m.steps_at(workers), link, workers, m.link, m.spec.workers,
                                                    measured, _steps_per_epoch(m, workers), traced=m.steps)}
    budget = spec.goal.time_budget_s
    rows, total, now = [], 0.0, datetime.now(UTC)
    for r in m.rows:
        e = times.get(r["epoch"])
        if e is None:  # an epoch without a trace (never, for a trial traced from its start)
            break
        if budget is not None and total >= budget:
            break  # the budget was spent before this epoch
        total += e.epoch_seconds
        images = e.steps * workers * spec.schedule.batch_per_worker
        lr = r["lr"] if workers == m.spec.workers else r["lr"] * peak_lr(spec.schedule, workers) / peak_lr(
            spec.schedule, m.spec.workers)
        rows.append(r | {
            "run_id": run_id, "trial_id": spec.trial_id, "source": results.SOURCE_PREDICTED,
            "predicted_from": m.spec.trial_id, "workers": workers, "global_batch": spec.global_batch, "lr": lr,
            "bandwidth_mbps": link.bandwidth_mbps, "latency_ms": link.latency_ms, "train_seconds": total,
            "epoch_seconds": e.epoch_seconds, "comm_seconds": e.comm_seconds,
            "compute_seconds": max(0.0, e.epoch_seconds - e.comm_seconds),
            "simulated_delay_seconds": e.simulated_delay_seconds, "simulated_hold_seconds": e.simulated_hold_seconds,
            "images_per_second": images / e.epoch_seconds if e.epoch_seconds > 0 else math.nan,
            "timestamp": now})
    return spec, rows


def metadata(m: Measured, spec: cfg.TrialSpec) -> dict[bytes, str]:
    """A predicted trial file's metadata: the measured trial's, with the predicted config."""
    keep = (results.META_DATASET, results.META_VERSIONS, results.META_GIT, results.META_PLACEMENT)
    meta = {k: m.meta[k.decode()] for k in keep if k.decode() in m.meta}
    return meta | {results.META_CONFIG: spec.model_dump_json(), results.META_STATUS: results.STATUS_COMPLETE}


def write(folder, m: Measured, spec: cfg.TrialSpec, rows: list[dict[str, Any]]) -> None:
    results.write_trial(results.trial_path(folder, spec.trial_id), results.to_table(rows, metadata(m, spec)))


# ---------------------------------------------------------------- checking predictions against measurements

_LINK_AND_WORKERS = {"trial_id", "bandwidth_mbps", "latency_ms", "link_overhead_ms", "link_profile",
                     "link_handshake_trips", "workers", "processes"}


def _same_config(a: cfg.TrialSpec, b: cfg.TrialSpec) -> bool:
    return a.model_dump(exclude=_LINK_AND_WORKERS) == b.model_dump(exclude=_LINK_AND_WORKERS)


def sources(found: Iterable[Measured]) -> list[Measured]:
    """One measured trial per configuration to predict from: the one on the fastest link (unlimited
    bandwidth first, then the lowest latency), whose trace holds the least waiting."""
    best: dict[str, tuple[tuple, Measured]] = {}
    for m in found:
        key = m.spec.model_dump_json(exclude=_LINK_AND_WORKERS)
        rank = (-(m.spec.bandwidth_mbps or float("inf")), m.spec.latency_ms, m.spec.link_overhead_ms,
                -m.spec.workers, m.spec.trial_id)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, m)
    return [m for _, m in best.values()]


def _timed_here(m: Measured) -> bool:
    """Whether ``m``'s times were measured (an emulated trial's are themselves a prediction)."""
    return all(r.get("source") in (None, results.SOURCE_MEASURED) for r in m.rows)


def validation(found: Iterable[Measured], run_id: str = "validate") -> pd.DataFrame:
    """Every measured trial predicted from every other trial of ``found`` of the same configuration
    (other link or worker count; an emulated trial's trace predicts too, but its own times, being
    predicted, are never the yardstick): per epoch, predicted and measured ``epoch_seconds`` and the
    error, and per pair the time to the measured trial's target, measured and predicted (the predicted
    epochs' times up to the epoch at which the measured trial reached it: the accuracy is measured
    exactly where it is predicted, by emulation or at the same workers, so only the times are checked)."""
    found = list(found)
    out = []
    for src in found:
        for dst in found:
            if src is dst or not _timed_here(dst) or not _same_config(src.spec, dst.spec):
                continue
            _, rows = predict(src, dst.link, dst.spec.workers, run_id)
            target = dst.spec.goal.target_top1
            # the predicted times to the epoch at which the measured trial reached its target: a prediction
            # from another worker count carries that count's accuracy, which is not the one to check
            accuracy = {r["epoch"]: r["test_top1"] for r in dst.rows}
            timed = pd.DataFrame([r | {"test_top1": accuracy.get(r["epoch"], math.nan)} for r in rows])
            ttt_p = metrics.time_to_accuracy(timed, target) if rows and target is not None else None
            ttt_m = metrics.time_to_accuracy(pd.DataFrame(dst.rows), target) if target is not None else None
            by_epoch = {r["epoch"]: r for r in dst.rows}
            for r in rows:
                actual = by_epoch.get(r["epoch"])
                if actual is None:
                    continue
                out.append({"predicted_from": src.spec.trial_id, "trial_id": dst.spec.trial_id,
                            "epoch": r["epoch"], "predicted_s": r["epoch_seconds"],
                            "measured_s": actual["epoch_seconds"],
                            "error": r["epoch_seconds"] / actual["epoch_seconds"] - 1,
                            "tta_predicted_s": ttt_p, "tta_measured_s": ttt_m,
                            "tta_error": (ttt_p / ttt_m - 1) if ttt_p and ttt_m else None})
    return pd.DataFrame(out, columns=["predicted_from", "trial_id", "epoch", "predicted_s", "measured_s", "error",
                                      "tta_predicted_s", "tta_measured_s", "tta_error"])


@dataclass(frozen=True)
class ErrorBand:
    """The prediction error measured in a results folder (``validation``'s table): the worst
    |error| of a predicted epoch time and, where the prediction and the measurement both reached
    the target, of the time to target; None where nothing could be checked. The report draws
    emulated and predicted points with a band of this relative width."""

    epoch: float | None
    tta: float | None
    epochs: int  # checked epochs
    pairs: int  # (predicted from, measured trial) pairs
    trials: int  # measured trials checked
    tta_pairs: int  # pairs where both reached the target

    @property
    def time_to_target(self) -> float | None:
        """The band on time to target: a time to target is a sum of epoch times whose accuracy is
        exact, so the worst epoch-time error bounds its error; the larger of the two is used."""
        known = [e for e in (self.epoch, self.tta) if e is not None]
        return max(known) if known else None

    def text(self) -> str:
        if self.epoch is None:
            return ("unmeasured: no measured trial could be predicted from another trial of its configuration "
                    "(other link or worker count, with a step trace), so emulated and predicted times carry "
                    "no error band; measure a configuration at two worker counts or links to check them")
        tta = (f"; worst time-to-target error {self.tta:.1%} over {_n(self.tta_pairs, 'prediction')} where both "
               f"reached the target" if self.tta is not None else "; no time to target on both sides")
        return (f"worst epoch-time error {self.epoch:.1%} over {_n(self.epochs, 'epoch')} of "
                f"{_n(self.pairs, 'prediction')} of {_n(self.trials, 'measured trial')}{tta}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def error_band(checks: pd.DataFrame) -> ErrorBand:
    """The worst measured errors of ``validation``'s table (pure)."""
    if checks.empty:
        return ErrorBand(None, None, 0, 0, 0, 0)
    pairs = checks.drop_duplicates(["predicted_from", "trial_id"])
    tta = pairs["tta_error"].dropna().astype(float).abs()
    return ErrorBand(epoch=float(checks["error"].abs().max()), tta=float(tta.max()) if len(tta) else None,
                     epochs=len(checks), pairs=len(pairs), trials=int(checks["trial_id"].nunique()),
                     tta_pairs=len(tta))


def checks_of(trials: list[results.TrialFile]) -> pd.DataFrame:
    """``validation`` over a results folder's trial files (``results.load(...).trials``): the report's
    error band, ``predict --validate``."""
    return validation(measured_in(trials)[0])


# ---------------------------------------------------------------- sweep --replay: train once per configuration

def replay_plan(trials: list[cfg.TrialSpec]) -> tuple[list[cfg.TrialSpec], dict[str, list[cfg.TrialSpec]]]:
    """``--replay``: the trials to train (per configuration, its first link in grid order) and, per
    trained trial id, the grid points to fill by replaying its trace."""
    network = {"trial_id", "bandwidth_mbps", "latency_ms", "link_overhead_ms", "link_profile", "link_handshake_trips"}
    first: dict[str, cfg.TrialSpec] = {}
    fill: dict[str, list[cfg.TrialSpec]] = {}
    for t in trials:
        key = t.model_dump_json(exclude=network)
        if key not in first:
            first[key] = t
            fill[t.trial_id] = []
        else:
            fill[first[key].trial_id].append(t)
    return list(first.values()), fill


def fill_grid(sweep_dir, fill: dict[str, list[cfg.TrialSpec]], run_id: str) -> tuple[int, list[str]]:
    """Write the predicted trials of ``fill`` (see ``replay_plan``) into ``sweep_dir`` from the trained
    trials' traces; returns how many were written and a note per trained trial that could not be
    replayed (failed, or without a trace)."""
    if not any(fill.values()):
        return 0, []
    found, skipped = measured_trials(sweep_dir)
    by_id = {m.spec.trial_id: m for m in found}
    written, notes = 0, [n for n in skipped if n.split(":", 1)[0] in fill and fill[n.split(":", 1)[0]]]
    for trained, points in fill.items():
        m = by_id.get(trained)
        if m is None:
            continue
        for p in points:
            link = Link(p.bandwidth_mbps, p.latency_ms, p.link_overhead_ms)
            spec, rows = predict(m, link, p.workers, run_id, p)
            if rows:
                write(sweep_dir, m, spec, rows)
                written += 1
    return written, notes
