"""Ray glue: one Tune function trainable per trial runs a TorchTrainer; a driver-side Tune callback
writes each trial's Parquet file after every epoch.

The trainable only waits on its TorchTrainer, so it reserves no CPU, only a little memory; the trainer's
workers take the real resources in one placement group, which waits (Train's start timeout is
raised) until the CPUs are free: trials that fit the cluster, but not all at once, queue.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from raybench import results
from raybench.config import TrialSpec
from raybench.train_loop import train_worker

# The trainable only waits on its trainer: it reserves a little memory and no CPU, so that a trial
# whose workers take every CPU still fits (Ray refuses an all-zero bundle).
TRAINABLE_RESOURCES = tune.PlacementGroupFactory([{"CPU": 0, "memory": 64 * 2**20}])
RAY_DIR = "_ray"  # Ray's run state under results/<sweep>/; "_" keeps it out of the Parquet dataset
JOB_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(7 * 24 * 3600),  # queue, do not fail, while CPUs are busy
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
}


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: builds the trial's TorchTrainer and runs it to the end."""
    trial = TrialSpec.model_validate(config["trial"])
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=trial.workers, use_gpu=trial.hardware == "gpu",
            resources_per_worker={"CPU": trial.cpus_per_worker} | ({"GPU": 1} if trial.hardware == "gpu" else {}),
            accelerator_type=trial.accelerator_type if trial.hardware == "gpu" else None,
        ),
        run_config=RunConfig(
            name=trial.trial_id,
            storage_path=config["storage_path"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=config.get("max_failures", 0)),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()


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


def run_sweep(trials: list[TrialSpec], sweep_dir: str | Path, data: str | None, dataset: str, run_id: str,
              max_failures: int = 0) -> tune.ResultGrid:
    """Run every trial under Tune (Ray must be initialised) and return Tune's result grid."""
    storage = str(results.join(sweep_dir, RAY_DIR)) if results.is_uri(sweep_dir) else str(
        (Path(sweep_dir) / RAY_DIR).resolve())
    param_space = {
        "trial": tune.grid_search([t.model_dump(mode="json") for t in trials]),
        "data": data, "run_id": run_id, "storage_path": storage, "max_failures": max_failures,
    }
    tuner = tune.Tuner(
        tune.with_resources(run_trial, TRAINABLE_RESOURCES),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=1, trial_name_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(name="tune", storage_path=storage, callbacks=[ParquetWriter(sweep_dir, dataset)],
                                  verbose=1),
    )
    return tuner.fit()


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join ``address`` or start a local Ray in-process, its dashboard and ports on 127.0.0.1.

    Returns whether this call started (and so should shut down) the Ray session; an already
    initialised session (a notebook, a test module) is used as it is.
    """
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": JOB_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Ray's gRPC ports listen on every interface (Ray 2.60 cannot keep them on loopback); a new
        # local cluster has token authentication on by default, so they refuse callers without
        # this machine's token (~/.ray/auth_token). tests/test_e2e.py checks both.
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", include_dashboard=None)
    return True


def cluster_capacity() -> dict[str, float]:
    res = ray.cluster_resources()
    return {"CPU": res.get("CPU", 0.0), "GPU": res.get("GPU", 0.0)}

