"""Ray Train's per-worker entry point: the few Ray calls around ``worker.loop.run``."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from raybench import results
from raybench.results import EpochRow
from raybench.spec.config import TrialSpec
from raybench.worker import checkpoint, loop
from raybench.worker.data import load
from raybench.worker.setup import Worker


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the trial, the data, the loop; rows and checkpoints go to
    ``ray.train.report``, a restart starts from ``ray.train.get_checkpoint()``."""
    trial = TrialSpec.model_validate(config["trial"])
    ctx = ray.train.get_context()  # [ray]
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())  # [ray]
    torch.set_num_threads(trial.cpus_per_worker)
    ds = load(config["data"])

    def report(row: EpochRow, ckpt_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None  # [ray]
        ray.train.report(results.to_metrics(row), checkpoint=ckpt,  # [ray]
                         checkpoint_dir_name=f"epoch_{row.epoch:04d}")

    with tempfile.TemporaryDirectory(prefix="raybench-restore-") as local:
        restore = None
        previous = ray.train.get_checkpoint()  # [ray]
        if previous is not None:
            with previous.as_directory() as d:
                restore = checkpoint.copy(Path(d), Path(local))
        loop.run(trial, worker, ds, config["run_id"], report, restore)
