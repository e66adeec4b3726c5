"""DAWNBench's CIFAR-10 submission formats, and the export of a results folder as training entries.

Per trial, a training JSON and a TSV (``epoch hours top1Accuracy``) in ``OUT/CIFAR10/train/``;
hours are cumulative training time, evaluation excluded (the DAWNBench FAQ allows it). The fields
are those of the DAWNBench entries page; ``inference.py`` writes the inference entry with the
pieces here (names, framework, the common head of an entry).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from raybench import results
from raybench.analysis import metrics
from raybench.models import display_name, model_name
from raybench.spec.config import Schedule
from raybench.spec.schedule import base_lr, peak_lr

DAWN_VERSION = "v1.0"
TASK_DIR = "CIFAR10"
TSV_HEADER = ("epoch", "hours", "top1Accuracy")
FRAMEWORK_TAG = "pytorch"
# raybench.dataset (worker.data.dataset_label): a copy is official only if md5-identical to the release.
DATASET_NAMES = {"cifar10-local": "CIFAR-10 local copy (differs from the official release)",
                 "cifar10-official": "CIFAR-10 (official python archive)"}
TIME_NOTE = "hours = cumulative training time; evaluation (validation) time excluded, as the DAWNBench FAQ allows"


class InputError(ValueError):
    """A bad flag or input file: the message names the flag and the value."""


# ---------------------------------------------------------------- names and the head of an entry

def tag(text: str) -> str:
    """A file-name part: lowercase, only [a-z0-9.-] (underscores separate the parts of a name)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9.-]+", "-", text.lower())).strip("-") or "x"


def file_stem(author: str, model: str, hardware: str, framework: str = FRAMEWORK_TAG) -> str:
    """``[author]_[model]_[hardware tag]_[framework]``, as DAWNBench names entries."""
    return "_".join(tag(p) for p in (author, model, hardware, framework))


def model_tag(arch: str, depth: int, version: str, workers: int) -> str:
    """The model part of a file name: ``resnet20v1-w2``, ``resnet9-w1``."""
    return f"{model_name(arch, depth, version, sep='')}-w{workers}"


def _release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1' (the local build label goes to misc, not to the framework name)."""
    return version.split("+", 1)[0]


def framework_name(versions: dict[str, str]) -> str:
    """E.g. 'PyTorch 2.14.1 + Ray 2.60.0' from the versions a trial file records."""
    parts = [f"PyTorch {_release(versions['torch'])}" if versions.get("torch") else "PyTorch"]
    if versions.get("ray"):
        parts.append(f"Ray {_release(versions['ray'])}")
    return " + ".join(parts)


def entry_head(args, versions: dict[str, str], model: str, hardware: str) -> dict[str, Any]:
    """The fields every entry starts with, in DAWNBench's order: version ... hardware."""
    record: dict[str, Any] = {"version": DAWN_VERSION, "author": args.author, "authorEmail": args.email,
                              "framework": framework_name(versions)}
    if args.code_url:
        record["codeURL"] = args.code_url
    return record | {"model": model, "hardware": hardware}


def today() -> str:
    """DAWNBench's timestamp: the submission date, yyyy-mm-dd (UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%d")


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=4, allow_nan=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- training entries

def lr_schedule(config: dict[str, Any]) -> str:
    """The trial's learning-rate schedule in words, from its resolved config."""
    s, workers = Schedule.model_validate(config["schedule"]), config["workers"]
    start, peak = base_lr(s), peak_lr(s, workers)
    text = f"lr {peak:g} (lr_per_256 {s.lr_per_256:g} x global batch / 256)"
    if s.warmup_epochs and start != peak:
        text += f", warmed up linearly from {start:g} over {s.warmup_epochs} epoch(s)"
    if s.milestones:
        text += f", x{s.gamma:g} at epochs {', '.join(map(str, s.milestones))}"
    return text + f"; {s.epochs} epochs"


def optimizer_text(config: dict[str, Any]) -> str:
    s = config["schedule"]
    nesterov = " (Nesterov)" if s.get("nesterov") and s.get("momentum") else ""
    return f"SGD momentum {s.get('momentum'):g}{nesterov}, weight decay {s.get('weight_decay'):g}"


def tsv_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``epoch hours top1Accuracy``, one line per epoch: hours of training, accuracy in percent."""
    lines = ["\t".join(TSV_HEADER)]
    for r in sorted(rows, key=lambda r: r["epoch"]):
        lines.append(f"{r['epoch']}\t{r['train_seconds'] / 3600!r}\t{round(100 * r['test_top1'], 10)!r}")
    return lines


def hardware_text(given: str | None, rows: Sequence[dict[str, Any]], config: dict[str, Any]) -> str:
    """The machine (``--hardware`` or the device the rows name) and how the trial used it."""
    devices = sorted({r["device_name"] for r in rows if r.get("device_name")})
    where = given or (" / ".join(devices) if devices else config.get("hardware", "?"))
    workers = config["workers"]
    unit = "1 GPU" if config.get("hardware") == "gpu" else f"{config.get('cpus_per_worker', 1)} CPU core(s)"
    return f"{where}; {workers} data-parallel worker(s) x {unit}"


def train_record(trial: results.TrialFile, args) -> dict[str, Any]:
    """The DAWNBench training JSON of one trial (fields as the DAWNBench page defines them)."""
    rows, meta = trial.rows, trial.meta
    config = results.trial_config(meta)
    versions = json.loads(meta.get(results.META_VERSIONS.decode(), "{}"))
    goal = config.get("goal", {})
    target = goal.get("target_top1")
    reached = metrics.time_to_accuracy(pd.DataFrame(list(rows)), target) if target is not None else None
    last = max(rows, key=lambda r: r["epoch"])
    record = entry_head(args, versions, display_name(config["arch"], config["depth"], config["version"]),
                        hardware_text(args.hardware, rows, config))
    if args.cost_per_hour is not None:
        record["costPerHour"] = args.cost_per_hour
    record |= {
        "timestamp": today(),
        "logFilename": PurePosixPath(str(trial.path)).name,
        "misc": {
            "trial_id": config["trial_id"], "sweep": config["sweep"],
            "status": meta.get(results.META_STATUS.decode(), "unknown"),
            "workers": config["workers"], "cpusPerWorker": config.get("cpus_per_worker"),
            "device": sorted({r["device_name"] for r in rows}),
            "algorithm": config["algorithm"],
            "network": {"bandwidth_mbps": "unlimited" if config.get("bandwidth_mbps") is None
                        else config["bandwidth_mbps"], "latency_ms": config.get("latency_ms")},
            "lrSchedule": lr_schedule(config), "optimizer": optimizer_text(config),
            "batchPerWorker": config["schedule"]["batch_per_worker"],
            "globalBatch": config["schedule"]["batch_per_worker"] * config["workers"],
            "epochs": {"recorded": len(rows), "planned": config["schedule"]["epochs"],
                       "budgetCut": next((r["epoch"] for r in rows if r.get("budget_cut")), None)},
            "dataset": DATASET_NAMES.get(meta.get(results.META_DATASET.decode(), ""), "CIFAR-10"),
            "trainImages": config.get("data", {}).get("train_images") or 50_000,
            "testImages": config.get("data", {}).get("test_images") or 10_000,
            "target": {"top1Accuracy": None if target is None else 100 * target,
                       "hours": None if reached is None else reached / 3600},
            "timing": TIME_NOTE,
            "raybench": versions.get("raybench"), "versions": versions,
            "gitCommit": meta.get(results.META_GIT.decode()) or None,
            "lastEpochAt": last["timestamp"].isoformat() if hasattr(last["timestamp"], "isoformat") else None,
            "seed": config.get("seed"),
        },
    }
    return record


def _distinguishing(configs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Config fields that differ between the trials exported, with how each enters a file name."""
    fields = [("sweep", lambda c: c["sweep"]),
              ("bw", lambda c: "inf" if c.get("bandwidth_mbps") is None else f"{c['bandwidth_mbps']:g}"),
              ("lat", lambda c: f"{c.get('latency_ms', 0):g}"), ("", lambda c: c["algorithm"]),
              ("b", lambda c: c["schedule"]["batch_per_worker"]), ("c", lambda c: c.get("cpus_per_worker")),
              ("s", lambda c: c.get("seed"))]
    return [(p, f) for p, f in fields if len({str(f(c)) for c in configs}) > 1]


def export(results_dir: str | Path, out: Path, args) -> list[Path]:
    """Write a JSON and a TSV per trial under ``results_dir`` (a path or a URI) into ``out/CIFAR10/train/``;
    returns the paths written. Raises results.ResultsError when there is nothing to export."""
    trials = [t for t in results.read_trials(results_dir) if t.rows and results.META_CONFIG.decode() in t.meta]
    if not trials:
        raise results.ResultsError(f"RESULTS_DIR {str(results_dir)!r}: no trial file with epoch rows and a config")
    configs = [results.trial_config(t.meta) for t in trials]
    extra = _distinguishing(configs)
    folder = out / TASK_DIR / "train"
    written, used = [], set()
    for trial, config in zip(trials, configs, strict=True):
        model = model_tag(config["arch"], config["depth"], config["version"], config["workers"])
        model += "".join(f"-{p}{fn(config)}" for p, fn in extra)
        stem = file_stem(args.author, model, f"{config['workers']}x{config['hardware']}")
        n, unique = 1, stem
        while unique in used:  # the same grid point in two folders of one export
            n += 1
            unique = f"{stem}-{n}"
        used.add(unique)
        json_path, tsv_path = folder / f"{unique}.json", folder / f"{unique}.tsv"
        write_json(json_path, train_record(trial, args))
        tsv_path.write_text("\n".join(tsv_lines(trial.rows)) + "\n", encoding="utf-8")
        written += [json_path, tsv_path]
    return written
