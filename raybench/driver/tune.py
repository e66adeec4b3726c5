"""The sweep on Ray Tune: one function trainable per trial runs a TorchTrainer; the driver-side
``writer.ParquetWriter`` writes each trial's Parquet file after every epoch.

The trainable only waits on its TorchTrainer, so it reserves no CPU, only a little memory; the trainer's
workers take the real resources in one placement group. Tune runs at most ``concurrency`` trials at
once (default 1, so timings never share hardware). Above 1, a trial whose workers do not fit beside
the running ones waits: Train's worker group start times out after a minute and Train reschedules it
(a retryable controller error, retried without limit by default), so it queues and says so in the log.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from raybench import results
from raybench.driver.train import train_worker
from raybench.driver.writer import ParquetWriter
from raybench.spec.config import TrialSpec

# The trainable only waits on its trainer: it reserves a little memory and no CPU, so that a trial
# whose workers take every CPU still fits (Ray refuses an all-zero bundle).
TRAINABLE_RESOURCES = tune.PlacementGroupFactory([{"CPU": 0, "memory": 64 * 2**20}])
RAY_DIR = "_ray"  # Ray's run state under results/<sweep>/; "_" keeps it out of the Parquet dataset


def resources_per_worker(trial: TrialSpec) -> dict[str, float]:
    """One worker's bundle: its CPUs, and on a GPU trial its GPUs (a fraction: a share of one GPU)."""
    gpu = {"GPU": trial.gpus_per_worker} if trial.hardware == "gpu" else {}
    return {"CPU": float(trial.cpus_per_worker)} | gpu


def backend(trial: TrialSpec) -> str:
    """gloo on CPU, and on GPUs shared by several workers (NCCL refuses two ranks on one device);
    NCCL on whole GPUs."""
    return "nccl" if trial.hardware == "gpu" and trial.gpus_per_worker >= 1 else "gloo"


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: builds the trial's TorchTrainer and runs it to the end."""
    trial = TrialSpec.model_validate(config["trial"])
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend=backend(trial)),
        scaling_config=ScalingConfig(
            num_workers=trial.workers, use_gpu=trial.hardware == "gpu",
            resources_per_worker=resources_per_worker(trial),
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


def run_sweep(trials: list[TrialSpec], sweep_dir: str | Path, data: str | None, dataset: str, run_id: str,
              max_failures: int = 0, concurrency: int = 1) -> tune.ResultGrid:
    """Run every trial under Tune (Ray must be initialised, see ``session.init_ray``), at most
    ``concurrency`` at once, and return Tune's result grid."""
    storage = str(results.join(sweep_dir, RAY_DIR)) if results.is_uri(sweep_dir) else str(
        (Path(sweep_dir) / RAY_DIR).resolve())
    param_space = {
        "trial": tune.grid_search([t.model_dump(mode="json") for t in trials]),
        "data": data, "run_id": run_id, "storage_path": storage, "max_failures": max_failures,
    }
    tuner = tune.Tuner(
        tune.with_resources(run_trial, TRAINABLE_RESOURCES),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency,
                                    trial_name_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(name="tune", storage_path=storage,
                                  callbacks=[ParquetWriter(sweep_dir, dataset, concurrency)], verbose=1),
    )
    return tuner.fit()
