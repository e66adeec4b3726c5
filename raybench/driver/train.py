"""Ray Train's per-worker entry point: the few Ray calls around ``worker.loop.run``."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from raybench import results, traces
from raybench.driver.backend import DATA_REF_KEY, STARTUP_KEY
from raybench.results import EpochRow
from raybench.spec.config import TrialSpec
from raybench.worker import checkpoint, loop
from raybench.worker.data import from_arrays, load
from raybench.worker.setup import Worker, device_name


def process_started() -> float | None:
    """When this process started, on the time.time() clock (Linux /proc; None elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def placement(worker: Worker) -> list[dict[str, Any]]:
    """Where every rank runs, gathered on every rank (a collective: all ranks call it): world rank,
    Ray node id and IP, and the device: the CPU model and the CPU ids the process may run on, or
    the GPU's name, its CUDA index in the process and the GPU ids Ray gave it."""
    ctx = ray.get_runtime_context()  # [ray]
    mine: dict[str, Any] = {"rank": worker.rank, "node_id": ctx.get_node_id(),  # [ray]
                            "node_ip": ray.util.get_node_ip_address(),  # [ray]
                            "device": device_name(worker.device)}
    if worker.device.type == "cuda":
        mine |= {"cuda_index": worker.device.index if worker.device.index is not None else 0,
                 "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]}  # [ray]
    else:
        mine["cpus"] = sorted(os.sched_getaffinity(0))
    if worker.world == 1 or not dist.is_initialized():
        return [mine]
    if worker.device.type == "cuda" and dist.get_backend() == "nccl":
        torch.cuda.set_device(worker.device)  # NCCL's object collectives run on the current device
    every: list[Any] = [None] * worker.world
    dist.all_gather_object(every, mine)
    return sorted(every, key=lambda p: p["rank"])


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the trial, the data, the loop; rows and checkpoints go to
    ``ray.train.report``, a restart starts from ``ray.train.get_checkpoint()``."""
    entered = time.time()
    trial = TrialSpec.model_validate(config["trial"])
    ctx = ray.train.get_context()  # [ray]
    world = ctx.get_world_size()  # [ray] trial.procs processes, each running trial.workers / world (virtual) workers
    worker = Worker(ctx.get_world_rank(), world, ray.train.torch.get_device(), trial.workers // world)  # [ray]
    torch.set_num_threads(trial.cpus_per_worker)
    # CIFAR-10 from the object store, mapped without a copy (put there once by the driver: tune.run_sweep);
    # read from --data / the download only where there is no reference (a trainer started outside run_sweep).
    refs = config.get(DATA_REF_KEY)
    ds = from_arrays(ray.get(refs[0])) if refs else load(config["data"])  # [ray]
    loaded = time.time()
    unsent = [placement(worker)]  # goes to the driver with this attempt's first row
    startup = [config.get(STARTUP_KEY, {}) | {"process": process_started(), "entry": entered, "data": loaded,
                                               "placed": time.time()}]

    def report(row: EpochRow, ckpt_dir: Path | None, trace: pa.Table | None) -> None:
        metrics = results.to_metrics(row) | ({traces.TRACE_KEY: traces.encode(trace)} if trace is not None else {})
        if ckpt_dir:
            (ckpt_dir / checkpoint.ROW_FILE).write_text(json.dumps(metrics))
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None  # [ray]
        placed = results.to_metrics(row, unsent.pop()) if unsent else {}
        started = {STARTUP_KEY: json.dumps(startup.pop())} if startup else {}
        ray.train.report(metrics | placed | started,  # [ray]
                         checkpoint=ckpt, checkpoint_dir_name=f"epoch_{row.epoch:04d}")

    with tempfile.TemporaryDirectory(prefix="raybench-restore-") as local:
        restore, resend = None, None
        previous = ray.train.get_checkpoint()  # [ray]
        if previous is not None:
            with previous.as_directory() as d:
                restore = checkpoint.copy(Path(d), Path(local))
                if (Path(d) / checkpoint.ROW_FILE).is_file():
                    resend = json.loads((Path(d) / checkpoint.ROW_FILE).read_text())
        if resend is not None:
            # The row (and trace) of the checkpoint this attempt continues from, once more: if the driver
            # stopped after Train kept the checkpoint but before the row reached the writer, it is not lost.
            ray.train.report(resend)  # [ray]
        loop.run(trial, worker, ds, config["run_id"], report, restore)
