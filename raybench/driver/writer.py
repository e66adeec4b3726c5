"""The driver-side Tune callback that turns reported epoch rows into one Parquet file per trial."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune

from raybench import results
from raybench.spec.config import TrialSpec


class ParquetWriter(tune.Callback):
    """Driver side: keeps every epoch row of every trial and rewrites the trial's file atomically
    after each one. An epoch already written is never written again (a restart that reports it
    twice changes nothing)."""

    def __init__(self, sweep_dir: str | Path, dataset: str) -> None:
        self.sweep_dir = sweep_dir
        self.dataset = dataset
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        self._meta_base = {
            results.META_DATASET: dataset,
            results.META_VERSIONS: json.dumps(results.versions()),
            results.META_GIT: results.git_commit() or "",
        }

    def _trial(self, trial) -> TrialSpec:
        return TrialSpec.model_validate(trial.config["trial"])

    def _load(self, spec: TrialSpec) -> dict[int, dict[str, Any]]:
        if spec.trial_id not in self._rows:
            path = results.trial_path(self.sweep_dir, spec.trial_id)
            rows = results.read_trial(path)[0] if results.exists(path) else []
            self._rows[spec.trial_id] = {r["epoch"]: r for r in rows}
        return self._rows[spec.trial_id]

    def _write(self, spec: TrialSpec, status: str) -> None:
        rows = self._load(spec)
        meta = self._meta_base | {results.META_CONFIG: spec.model_dump_json(), results.META_STATUS: status}
        table = results.to_table([rows[e] for e in sorted(rows)], meta)
        results.write_trial(results.trial_path(self.sweep_dir, spec.trial_id), table)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        spec = self._trial(trial)
        rows = self._load(spec)
        row = results.from_metrics(result)
        if row is None or row["epoch"] in rows:
            return
        rows[row["epoch"]] = row
        self._write(spec, results.STATUS_RUNNING)

    def on_trial_complete(self, iteration, trials, trial, **info):
        spec = self._trial(trial)
        if self._load(spec):
            self._write(spec, results.STATUS_COMPLETE)
