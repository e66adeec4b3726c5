"""Synthetic epoch rows and results folders for tests: real TrialSpecs, the real schema and writer.

Nothing here trains: the numbers are made up by the test that asks for them, and every file goes
through ``results.to_table`` and ``results.write_trial``, with the metadata the sweep writes.
"""
from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

import raybench
from raybench import results
from raybench.results import EpochRow
from raybench.spec import config

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DEVICE = "AMD EPYC 7B13"

SWEEP = {
    "name": "synthetic",
    "model": {"arch": "resnet", "depth": [20], "version": ["v1"]},
    "workers": [1, 2],
    "hardware": ["cpu"],
    "cpus_per_worker": 1,
    "network": {"bandwidth_mbps": ["unlimited"], "latency_ms": [0]},
    "algorithm": ["allreduce"],
    "schedule": {"batch_per_worker": 128, "lr_per_256": 0.1, "warmup_epochs": 1, "milestones": [3], "gamma": 0.1,
                 "epochs": 4},
    "goal": {"target_top1": 0.5, "time_budget_s": 100, "stop_at_target": False},
    "seed": 0,
}


def trials(**overrides: Any) -> list[config.TrialSpec]:
    """The TrialSpecs of SWEEP with top-level fields replaced, e.g. ``trials(workers=[1, 2, 4])``."""
    return config.expand(config.parse(SWEEP | overrides))


def trial(**overrides: Any) -> config.TrialSpec:
    """The first (or only) trial of SWEEP with ``overrides``."""
    return trials(**overrides)[0]


def epoch_rows(spec: config.TrialSpec, top1: Sequence[float], epoch_seconds: float | Sequence[float] = 10.0,
               comm_fraction: float = 0.25, delay_fraction: float = 0.5, images: int = 50_000,
               run_id: str = "20250301T120000Z-abc123", cut_last: bool = False) -> list[dict[str, Any]]:
    """One schema row per epoch with the given test top-1 fractions; train_seconds is the running sum
    of ``epoch_seconds``; comm_seconds is ``comm_fraction`` of each epoch, ``delay_fraction`` of it
    simulated delay. ``cut_last``: the time budget cut the last epoch short (its budget_cut is true)."""
    if isinstance(epoch_seconds, (int, float)):
        epoch_seconds = [float(epoch_seconds)] * len(top1)
    rows, total = [], 0.0
    for i, (acc, secs) in enumerate(zip(top1, epoch_seconds, strict=True)):
        total += secs
        comm = comm_fraction * secs
        rows.append(EpochRow(
            sweep=spec.sweep, run_id=run_id, trial_id=spec.trial_id, model=spec.model_name,
            depth=spec.depth, version=spec.version, algorithm=spec.algorithm, hardware=spec.hardware,
            device_name=DEVICE, workers=spec.workers, cpus_per_worker=spec.cpus_per_worker,
            precision=spec.precision, bandwidth_mbps=spec.bandwidth_mbps, latency_ms=spec.latency_ms,
            batch_per_worker=spec.schedule.batch_per_worker, global_batch=spec.global_batch, lr=0.1,
            seed=spec.seed, epoch=i + 1, train_seconds=total, epoch_seconds=secs, eval_seconds=1.5,
            compute_seconds=secs - comm, comm_seconds=comm, simulated_delay_seconds=comm * delay_fraction,
            images_per_second=images / secs, train_loss=2.0 / (i + 1), train_top1=min(1.0, acc + 0.05),
            test_loss=2.2 / (i + 1), test_top1=acc, budget_cut=cut_last and i == len(top1) - 1,
            timestamp=START + timedelta(seconds=total + 1.5 * (i + 1)),
        ).to_dict())
    return rows


def metadata(spec: config.TrialSpec, dataset: str = "cifar10-local",
             status: str = results.STATUS_COMPLETE) -> dict[bytes, str]:
    """The key-value metadata the sweep's writer puts in every trial file."""
    versions = {"raybench": raybench.__version__, "torch": importlib.metadata.version("torch"),
                "ray": importlib.metadata.version("ray")}
    return {results.META_CONFIG: spec.model_dump_json(), results.META_STATUS: status,
            results.META_DATASET: dataset, results.META_VERSIONS: json.dumps(versions),
            results.META_GIT: "0123456789abcdef0123456789abcdef01234567"}


def write(folder: Path, spec: config.TrialSpec, rows: Iterable[dict[str, Any]], **meta: Any) -> Path:
    """Write one trial's file into ``folder`` as the sweep does; returns its path."""
    path = results.trial_path(folder, spec.trial_id)
    results.write_trial(path, results.to_table(rows, metadata(spec, **meta)))
    return path


def frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the DataFrame a reader gets (schema dtypes, null bandwidth as NaN)."""
    return results.to_table(list(rows), {}).to_pandas()


ACCURACY = (0.30, 0.45, 0.55, 0.60)  # per epoch, the same for every trial of scaling_sweep
MODEL_MBIT = 269_722 * 32 / 1e6  # ResNet-20's gradients, fp32, in Mbit


def scaling_sweep(folder: Path, workers: Sequence[int] = (1, 2), **overrides: Any) -> list[config.TrialSpec]:
    """A results folder with one trial per grid point of SWEEP (``overrides`` as in ``trials``).

    Compute takes 40 s per epoch on one worker and scales perfectly; communication costs 10% of
    compute plus, per step, the ring all-reduce time of the link model (DESIGN.md), recorded as
    simulated delay. Every trial reaches the same accuracy after the same epoch.
    """
    specs = trials(workers=list(workers), **overrides)
    for spec in specs:
        p = spec.workers
        compute = 40.0 / p
        steps = 50_000 // spec.global_batch
        link = 0.0
        if p > 1:
            link = 2 * (p - 1) * spec.latency_ms / 1000
            if spec.bandwidth_mbps is not None:
                link += 2 * (p - 1) / p * MODEL_MBIT / spec.bandwidth_mbps
        delay = steps * link
        comm = 0.0 if p == 1 else 0.1 * compute + delay
        seconds = compute + comm
        write(folder, spec, epoch_rows(spec, ACCURACY, epoch_seconds=seconds, comm_fraction=comm / seconds,
                                       delay_fraction=delay / comm if comm else 0.0))
    return specs
