"""The driver-side Tune callback that turns reported epoch rows into one Parquet file per trial."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ray import tune

from raybench import results, traces
from raybench.spec.config import TrialSpec


def error_text(text: str, limit: int = results.ERROR_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters: its head and its tail (where the cause is), with
    a note of how much was left out; terminal colour codes go."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    if len(text) <= limit:
        return text
    note = "\n[... {} characters left out ...]\n"
    head = limit // 4
    tail = limit - head - len(note.format(len(text)))
    return text[:head] + note.format(len(text) - head - tail) + text[-tail:]


class ParquetWriter(tune.Callback):
    """Driver side: keeps every epoch row of every trial and rewrites the trial's file atomically
    after each one.

    A reported epoch replaces the trial's rows of that epoch and after: after a restart from the
    epoch-k checkpoint the continuing attempt reports k+1, k+2, ... again, and its rows, not those
    of the attempt that died, are the ones kept (rows up to k, which it continued from, stay).
    The file's metadata holds the status (``running``, ``complete`` or ``failed`` with the error),
    the concurrency in force and the placement of the ranks (sent with an attempt's first row).
    """

    def __init__(self, sweep_dir: str | Path, dataset: str, concurrency: int = 1) -> None:
        self.sweep_dir = sweep_dir
        self.dataset = dataset
        self.concurrency = concurrency
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        self._traces: dict[str, Any] = {}  # per trial: its step trace so far (a pyarrow Table)
        self._meta: dict[str, dict[bytes, str]] = {}  # per trial: concurrency, placement
        self._meta_base = {
            results.META_DATASET: dataset,
            results.META_VERSIONS: json.dumps(results.versions()),
            results.META_GIT: results.git_commit() or "",
        }

    def _trial(self, trial) -> TrialSpec:
        return TrialSpec.model_validate(trial.config["trial"])

    def _load(self, spec: TrialSpec) -> dict[int, dict[str, Any]]:
        """The trial's rows, read from its file the first time (a resumed sweep continues it)."""
        if spec.trial_id not in self._rows:
            path = results.trial_path(self.sweep_dir, spec.trial_id)
            rows, meta = results.read_trial(path) if results.exists(path) else ([], {})
            self._rows[spec.trial_id] = {r["epoch"]: r for r in rows}
            # the highest concurrency any of its rows was measured under; the placement so far
            before = int(meta.get(results.META_CONCURRENCY.decode(), 0) or 0) if rows else 0
            kept = {results.META_CONCURRENCY: str(max(before, self.concurrency))}
            if rows and results.META_PLACEMENT.decode() in meta:
                kept[results.META_PLACEMENT] = meta[results.META_PLACEMENT.decode()]
            self._meta[spec.trial_id] = kept
        return self._rows[spec.trial_id]

    def _write(self, spec: TrialSpec, status: str, error: str | None = None) -> None:
        rows = self._load(spec)
        meta = self._meta_base | self._meta[spec.trial_id] | {
            results.META_CONFIG: spec.model_dump_json(), results.META_STATUS: status}
        if error is not None:
            meta[results.META_ERROR] = error_text(error)
        table = results.to_table([rows[e] for e in sorted(rows)], meta)
        results.write_trial(results.trial_path(self.sweep_dir, spec.trial_id), table)

    def _place(self, spec: TrialSpec, epoch: int, placement: list[dict[str, Any]]) -> None:
        """Record where an attempt's ranks run from ``epoch`` on; entries of attempts whose rows it
        replaces go."""
        meta = self._meta[spec.trial_id]
        earlier = json.loads(meta.get(results.META_PLACEMENT, "[]"))
        kept = [p for p in earlier if p.get("from_epoch", 1) < epoch]
        meta[results.META_PLACEMENT] = json.dumps(kept + [p | {"from_epoch": epoch} for p in placement])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        spec = self._trial(trial)
        rows = self._load(spec)
        row = results.from_metrics(result)
        if row is None:
            return
        for later in [e for e in rows if e >= row["epoch"]]:  # an earlier attempt's: replaced
            del rows[later]
        rows[row["epoch"]] = row
        placement = results.placement_from_metrics(result)
        if placement is not None:
            self._place(spec, row["epoch"], placement)
        if result.get(traces.TRACE_KEY):
            self._trace(spec, traces.decode(result[traces.TRACE_KEY]))
        self._write(spec, results.STATUS_RUNNING)

    def _trace(self, spec: TrialSpec, epoch_table) -> None:
        """Add an epoch's step trace to the trial's trace file (replacing that epoch and later ones)."""
        where = traces.path(self.sweep_dir, spec.trial_id)
        if spec.trial_id not in self._traces:
            self._traces[spec.trial_id] = traces.read(where)
        self._traces[spec.trial_id] = traces.merged(self._traces[spec.trial_id], epoch_table)
        traces.write(where, self._traces[spec.trial_id])

    def on_trial_complete(self, iteration, trials, trial, **info):
        spec = self._trial(trial)
        if self._load(spec):
            self._write(spec, results.STATUS_COMPLETE)

    def on_trial_error(self, iteration, trials, trial, **info):
        """A failed trial's file says so, with the error; the sweep runs it again next time."""
        spec = self._trial(trial)
        if self._load(spec):
            self._write(spec, results.STATUS_FAILED, _error_of(trial))


def _error_of(trial) -> str:
    """The error Tune recorded for a failed trial (its error file), or a note that there is none."""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            return Path(trial.error_file).read_text(errors="replace")
        return str(trial.get_error() or "") or "the trial failed; Tune recorded no error text"
    except Exception as e:  # noqa: BLE001 - the status must be written even if the text cannot be read
        return f"the trial failed; its error text could not be read ({type(e).__name__}: {e})"
