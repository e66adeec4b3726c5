"""The sweep on Ray Tune: one function trainable per trial runs a Ray Train trainer (torch DDP); the driver-side
``writer.ParquetWriter`` writes each trial's Parquet file after every epoch.

The trainable only waits on its trainer, so it reserves no CPU, only a little memory; the trainer's
workers take the real resources in one placement group. Tune runs at most ``concurrency`` trials at
once (default 1, so timings never share hardware). Above 1, a trial whose workers do not fit beside
the running ones waits: Train's worker group start times out after a minute and Train reschedules it
(a retryable controller error, retried without limit by default), so it queues and says so in the log.

The console (``console.Progress``) prints one line per epoch per trial; Tune's status table is off, and
Ray Train's routine INFO lines (among them "Reporting training result ... TrainingReport(...)" per report
and rank, which carries the whole row) are held back in every Ray process by ``session.worker_setup``
unless ``--verbose``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from raybench import results
from raybench.driver import lean
from raybench.driver.backend import DATA_REF_KEY, STARTUP_KEY, TorchBackendConfig, train_worker
from raybench.driver.console import Progress
from raybench.driver.writer import ParquetWriter
from raybench.spec.config import TrialSpec
from raybench.worker.data import load, to_arrays

# The trainable only waits on its trainer: it reserves a little memory and no CPU, so that a trial
# whose workers take every CPU still fits (Ray refuses an all-zero bundle).
TRAINABLE_RESOURCES = tune.PlacementGroupFactory([{"CPU": 0, "memory": 64 * 2**20}])
RAY_DIR = "_ray"  # Ray's run state under results/<sweep>/; "_" keeps it out of the Parquet dataset
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
TUNE_DIR = "tune"  # Tune's experiment under RAY_DIR: its state and, per trial, TensorBoard event files


def resources_per_worker(trial: TrialSpec) -> dict[str, float]:
    """One worker's bundle: its CPUs, and on a GPU trial its GPUs (a fraction: a share of one GPU)."""
    gpu = {"GPU": trial.gpus_per_worker} if trial.hardware == "gpu" else {}
    return {"CPU": float(trial.cpus_per_worker)} | gpu


def backend(trial: TrialSpec) -> str:
    """gloo on CPU, and on GPUs shared by several workers (NCCL refuses two ranks on one device);
    NCCL on whole GPUs."""
    return "nccl" if trial.hardware == "gpu" and trial.gpus_per_worker >= 1 else "gloo"


def run_trial(config: dict[str, Any], data_ref: list | None = None) -> None:
    """Tune function trainable: builds the trial's trainer (torch DDP) and runs it to the end, with one Ray
    Train worker per process (``trial.procs``: fewer than its workers when they run as virtual workers).
    ``data_ref`` (from ``tune.with_parameters``): [the object store reference of the data set], passed on
    to the workers as it is, so that each maps the one copy instead of reading the files."""
    entered = time.time()
    trial = TrialSpec.model_validate(config["trial"])
    trainer_cls = lean.LeanTrainer if lean.is_local() else DataParallelTrainer
    if lean.is_local():
        lean.share_report_queue()  # before TuneReportCallback, which would start a queue actor per trial
    trainer = trainer_cls(  # TorchTrainer's set-up, without torch in this process or the controller (backend)
        train_worker,
        train_loop_config=config | {STARTUP_KEY: {"trainable": entered}, DATA_REF_KEY: data_ref},
        backend_config=TorchBackendConfig(backend=backend(trial)),
        scaling_config=ScalingConfig(
            num_workers=trial.procs, use_gpu=trial.hardware == "gpu",
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


def put_dataset(trials: list[TrialSpec], data: str | None) -> ray.ObjectRef:
    """CIFAR-10 read once by the driver, cut to the most images any trial uses, and put into Ray's object
    store as numpy arrays: each node holds one copy, which its workers map without reading or copying."""
    def most(counts: list[int | None]) -> int | None:
        return None if any(c is None for c in counts) else max(counts)

    ds = load(data).subset(most([t.data.train_images for t in trials]), most([t.data.test_images for t in trials]))
    return ray.put(to_arrays(ds))


def storage_path(sweep_dir: str | Path) -> str:
    """Where Ray keeps the sweep's run state: ``<sweep_dir>/_ray`` (absolute, or a URI)."""
    return str(results.join(sweep_dir, RAY_DIR)) if results.is_uri(sweep_dir) else str(
        (Path(sweep_dir) / RAY_DIR).resolve())


def tensorboard_dir(sweep_dir: str | Path) -> str:
    """The folder whose trial subfolders hold Tune's TensorBoard event files (the rb_epoch,
    rb_test_top1 and rb_train_seconds of every result), copied there from the driver every ~10 s."""
    return f"{storage_path(sweep_dir)}/{TUNE_DIR}"


def run_sweep(trials: list[TrialSpec], sweep_dir: str | Path, data: str | None, dataset: str, run_id: str,
              max_failures: int = 0, concurrency: int = 1) -> tune.ResultGrid:
    """Run every trial under Tune (Ray must be initialised, see ``session.init_ray``, whose ``verbose``
    decides which of Ray's logs show), at most ``concurrency`` at once, and return Tune's result grid.
    The console gets one line per epoch per trial."""
    storage = storage_path(sweep_dir)
    data_ref = [put_dataset(trials, data)]  # in a list: the trainables get the reference, not the arrays
    param_space = {
        "trial": tune.grid_search([t.model_dump(mode="json") for t in trials]),
        "data": data, "run_id": run_id, "storage_path": storage, "max_failures": max_failures,
    }
    # Tune's status table is off: its "Logical resource usage" counts the trainables' reservations only
    # (no CPU), not the workers' placement groups, so it said 0 CPUs while every CPU trained; console.Progress
    # prints what to read instead. Its newer output engine prints an experiment header even at verbose=0,
    # the older one (RAY_AIR_NEW_OUTPUT=0) prints nothing at verbose=0.
    before = os.environ.get(NEW_OUTPUT_ENV)
    os.environ[NEW_OUTPUT_ENV] = "0"
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, data_ref=data_ref), TRAINABLE_RESOURCES),
        param_space=param_space,
        # reuse_actors: one trainable process runs trial after trial (a fresh one after a failure), so
        # each trial does not start a Python process and import Ray Train and torch again.
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True,
                                    trial_name_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=storage, verbose=0,
                                  callbacks=[ParquetWriter(sweep_dir, dataset, concurrency),
                                             Progress([t.trial_id for t in trials])]),
    )
    try:
        return tuner.fit()
    finally:
        if before is None:
            os.environ.pop(NEW_OUTPUT_ENV, None)
        else:
            os.environ[NEW_OUTPUT_ENV] = before
