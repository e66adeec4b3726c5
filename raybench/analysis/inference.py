"""DAWNBench's CIFAR-10 inference task: classify the test images one at a time (batch 1) with a
checkpoint, and write the inference JSON (mean latency, cost, top-1) in ``OUT/CIFAR10/inference/``.

The checkpoint is read through ``raybench.worker.checkpoint``; torch is imported when a
measurement starts, never ray.
"""
from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from typing import Any

from raybench.analysis.dawnbench import (
    DATASET_NAMES,
    TASK_DIR,
    InputError,
    entry_head,
    file_stem,
    model_tag,
    today,
    write_json,
)
from raybench.models import display_name


def classify_one_at_a_time(model, images, labels, device, warmup: int) -> tuple[list[float], int]:
    """Per-image latency in seconds (copy to device, normalise, forward, argmax) and the number
    correct. ``warmup`` untimed classifications of the first images run before timing starts."""
    import torch

    from raybench.worker.data import normalize

    model.eval()
    n = len(labels)
    latencies, correct = [], 0
    with torch.inference_mode():
        for i in range(warmup):
            model(normalize(images[i % n:i % n + 1].to(device))).argmax(1).item()
        for i in range(n):
            t0 = time.perf_counter()
            pred = model(normalize(images[i:i + 1].to(device))).argmax(1).item()  # .item() waits for the device
            latencies.append(time.perf_counter() - t0)
            correct += int(pred == int(labels[i]))
    return latencies, correct


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def infer(args) -> tuple[Path, dict[str, Any]]:
    """Measure a checkpoint as DAWNBench's CIFAR-10 inference task does and write its JSON; bad
    flags and inputs raise InputError naming the flag."""
    import torch

    from raybench.models import build
    from raybench.worker import checkpoint
    from raybench.worker import data as cifar
    from raybench.worker.setup import device_name

    path = Path(args.checkpoint)
    try:
        state, trial = checkpoint.read(path)
    except checkpoint.CheckpointError as e:
        raise InputError(f"--checkpoint {path}: {e}") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = build(trial.arch, trial.depth, trial.version)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise InputError(f"--checkpoint {args.checkpoint}: weights do not fit {trial.model_name} ({e})") from None
    model.to(device)
    try:
        ds = cifar.load(args.data)
    except cifar.DataError as e:
        raise InputError(str(e) if args.data is None else f"--data {args.data}: {e}") from None
    n = len(ds.test_y) if args.limit is None else args.limit
    if n > len(ds.test_y):
        raise InputError(f"--limit {args.limit}: the test set has {len(ds.test_y)} images")
    latencies, correct = classify_one_at_a_time(model, ds.test_x[:n], ds.test_y[:n], device, args.warmup)
    latency_ms = 1000 * sum(latencies) / n
    ordered = sorted(latencies)
    versions = {"raybench": _dist_version("raybench"), "torch": torch.__version__, "ray": _dist_version("ray")}
    hw = "gpu" if device.type == "cuda" else "cpu"
    record = entry_head(args, versions, display_name(trial.arch, trial.depth, trial.version),
                        args.hardware or device_name(device))
    record["latency"] = latency_ms
    if args.cost_per_hour is not None:
        record["cost"] = args.cost_per_hour * latency_ms / 3_600_000  # USD per image: $/h x hours
    record |= {
        "top1Accuracy": 100 * correct / n,
        "timestamp": today(),
        "logFilename": path.name,
        "misc": {
            "batchSize": 1, "images": n, "fullTestSet": n == len(ds.test_y),
            "warmupImages": args.warmup,
            "warmup": f"{args.warmup} untimed classification(s) of the first test images ran before timing; "
                      f"they are excluded from the latency, and every one of the {n} timed images counts",
            "latencyIncludes": "copy to the device, normalisation, forward pass, argmax (torch.inference_mode, "
                               "eval mode)",
            "latencyMedianMs": 1000 * ordered[n // 2], "latencyP99Ms": 1000 * ordered[min(n - 1, int(0.99 * n))],
            "device": device_name(device), "torchThreads": torch.get_num_threads(),
            "costPerHour": args.cost_per_hour,
            "trial_id": trial.trial_id, "sweep": trial.sweep, "trainedWorkers": trial.workers,
            "checkpointEpoch": state.get("epoch"), "checkpointTrainSeconds": state.get("train_seconds"),
            "dataset": DATASET_NAMES[cifar.dataset_label(*cifar.data_root(args.data))],
            "raybench": versions["raybench"], "versions": versions,
        },
    }
    stem = file_stem(args.author, model_tag(trial.arch, trial.depth, trial.version, trial.workers), f"1x{hw}")
    out = Path(args.out) / TASK_DIR / "inference" / f"{stem}.json"
    write_json(out, record)
    return out, record
