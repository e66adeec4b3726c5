"""``python -m raybench.dawnbench export|infer``: DAWNBench CIFAR-10 submission files.

export: per trial, a training JSON and a TSV (``epoch hours top1Accuracy``) in ``OUT/CIFAR10/train/``;
hours are cumulative training time, evaluation excluded (the DAWNBench FAQ allows it).
infer: classify the test images one at a time (batch 1) with a checkpoint and write the inference
JSON (mean latency, cost, top-1) in ``OUT/CIFAR10/inference/``. Formats: the DAWNBench entries page.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

EXIT_BAD_INPUT = 2
DAWN_VERSION = "v1.0"
TASK_DIR = "CIFAR10"
TSV_HEADER = ("epoch", "hours", "top1Accuracy")
FRAMEWORK_TAG = "pytorch"
DATASET_NAMES = {"cifar10-local": "CIFAR-10 (JPEG copy)", "cifar10-official": "CIFAR-10 (official python archive)"}
TIME_NOTE = "hours = cumulative training time; evaluation (validation) time excluded, as the DAWNBench FAQ allows"


class InputError(ValueError):
    """A bad flag or input file: the message names the flag and the value."""


# ---------------------------------------------------------------- shared pieces

def tag(text: str) -> str:
    """A file-name part: lowercase, only [a-z0-9.-] (underscores separate the parts of a name)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9.-]+", "-", text.lower())).strip("-") or "x"


def file_stem(author: str, model: str, hardware: str, framework: str = FRAMEWORK_TAG) -> str:
    """``[author]_[model]_[hardware tag]_[framework]``, as DAWNBench names entries."""
    return "_".join(tag(p) for p in (author, model, hardware, framework))


def _release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1' (the local build label goes to misc, not to the framework name)."""
    return version.split("+", 1)[0]


def framework_name(versions: dict[str, str]) -> str:
    """E.g. 'PyTorch 2.14.1 + Ray 2.60.0' from the versions a trial file records."""
    parts = [f"PyTorch {_release(versions['torch'])}" if versions.get("torch") else "PyTorch"]
    if versions.get("ray"):
        parts.append(f"Ray {_release(versions['ray'])}")
    return " + ".join(parts)


def model_name(arch: str, depth: int, version: str) -> str:
    if arch == "resnet9":  # one depth and one version only
        return "ResNet-9"
    return f"ResNet-{depth} {version}" if arch == "resnet" else f"{arch}{depth} {version}"


def model_tag(arch: str, depth: int, version: str, workers: int) -> str:
    return f"{arch if arch == 'resnet9' else f'{arch}{depth}{version}'}-w{workers}"


def today() -> str:
    """DAWNBench's timestamp: the submission date, yyyy-mm-dd (UTC)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=4, allow_nan=False) + "\n", encoding="utf-8")


def _non_negative(text: str) -> float:
    """argparse type: a finite number >= 0 (argparse names the flag in its message)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return v


def _count(minimum: int):
    """argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be {minimum} or more")
        return v
    return parse


# ---------------------------------------------------------------- export (training entries)

def lr_schedule(config: dict[str, Any]) -> str:
    """The trial's learning-rate schedule in words, from its resolved config."""
    from raybench.spec.config import Schedule
    from raybench.spec.schedule import base_lr, peak_lr

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


def train_record(rows: Sequence[dict[str, Any]], meta: dict[str, str], source: Path, args) -> dict[str, Any]:
    """The DAWNBench training JSON of one trial (fields as the DAWNBench page defines them)."""
    from raybench import results
    from raybench.analysis import metrics
    import pandas as pd

    config = results.trial_config(meta)
    versions = json.loads(meta.get(results.META_VERSIONS.decode(), "{}"))
    goal = config.get("goal", {})
    target = goal.get("target_top1")
    reached = metrics.time_to_accuracy(pd.DataFrame(list(rows)), target) if target is not None else None
    last = max(rows, key=lambda r: r["epoch"])
    record: dict[str, Any] = {
        "version": DAWN_VERSION,
        "author": args.author,
        "authorEmail": args.email,
        "framework": framework_name(versions),
    }
    if args.code_url:
        record["codeURL"] = args.code_url
    record |= {
        "model": model_name(config["arch"], config["depth"], config["version"]),
        "hardware": hardware_text(args.hardware, rows, config),
    }
    if args.cost_per_hour is not None:
        record["costPerHour"] = args.cost_per_hour
    record |= {
        "timestamp": today(),
        "logFilename": source.name,
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
    """Write a JSON and a TSV per trial into ``out/CIFAR10/train/``; returns the paths written."""
    from raybench import report, results

    trials = []
    for f in report.trial_files(results_dir):
        rows, meta = results.read_trial(f)
        if rows and results.META_CONFIG.decode() in meta:
            trials.append((f, rows, meta, results.trial_config(meta)))
    if not trials:
        raise report.ResultsError(f"RESULTS_DIR {str(results_dir)!r}: no trial file with epoch rows and a config")
    extra = _distinguishing([c for *_, c in trials])
    folder = out / TASK_DIR / "train"
    written, used = [], set()
    for f, rows, meta, config in trials:
        model = model_tag(config["arch"], config["depth"], config["version"], config["workers"])
        model += "".join(f"-{p}{fn(config)}" for p, fn in extra)
        stem = file_stem(args.author, model, f"{config['workers']}x{config['hardware']}")
        n, unique = 1, stem
        while unique in used:  # the same grid point in two folders of one export
            n += 1
            unique = f"{stem}-{n}"
        used.add(unique)
        json_path, tsv_path = folder / f"{unique}.json", folder / f"{unique}.tsv"
        write_json(json_path, train_record(rows, meta, f, args))
        tsv_path.write_text("\n".join(tsv_lines(rows)) + "\n", encoding="utf-8")
        written += [json_path, tsv_path]
    return written


# ---------------------------------------------------------------- infer (inference entry)

def load_checkpoint(path: Path):
    """(state, TrialSpec) from a raybench checkpoint folder (state.pt + trial.json) or its state.pt."""
    import torch

    from raybench.spec.config import TrialSpec
    from raybench.worker.checkpoint import STATE_FILE, TRIAL_FILE

    folder = path.parent if path.is_file() else path
    if not path.exists():
        raise InputError(f"--checkpoint {path}: no such file or folder")
    for name in (STATE_FILE, TRIAL_FILE):
        if not (folder / name).is_file():
            raise InputError(f"--checkpoint {path}: no {name} in {folder} (a raybench checkpoint folder holds "
                             f"{STATE_FILE} and {TRIAL_FILE})")
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or one that is not a plain tensor checkpoint
        raise InputError(f"--checkpoint {path}: {STATE_FILE} cannot be loaded with weights_only=True ({e})") from None
    try:
        trial = TrialSpec.model_validate_json((folder / TRIAL_FILE).read_text())
    except Exception as e:
        raise InputError(f"--checkpoint {path}: {TRIAL_FILE} is not a raybench TrialSpec ({e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(f"--checkpoint {path}: {STATE_FILE} has no 'model' weights")
    return state, trial


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


def infer(args) -> tuple[Path, dict[str, Any]]:
    """Measure a checkpoint as DAWNBench's CIFAR-10 inference task does and write its JSON."""
    import torch

    from raybench.worker import data as cifar
    from raybench.models import build
    from raybench.worker.setup import device_name

    state, trial = load_checkpoint(Path(args.checkpoint))
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
    record: dict[str, Any] = {
        "version": DAWN_VERSION, "author": args.author, "authorEmail": args.email,
        "framework": framework_name(versions),
    }
    if args.code_url:
        record["codeURL"] = args.code_url
    record |= {
        "model": model_name(trial.arch, trial.depth, trial.version),
        "hardware": args.hardware or device_name(device),
        "latency": latency_ms,
    }
    if args.cost_per_hour is not None:
        record["cost"] = args.cost_per_hour * latency_ms / 3_600_000  # USD per image: $/h x hours
    record |= {
        "top1Accuracy": 100 * correct / n,
        "timestamp": today(),
        "logFilename": f"{Path(args.checkpoint).name}",
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
            "dataset": DATASET_NAMES.get(ds.source, ds.source), "raybench": versions["raybench"],
            "versions": versions,
        },
    }
    stem = file_stem(args.author, model_tag(trial.arch, trial.depth, trial.version, trial.workers), f"1x{hw}")
    path = Path(args.out) / TASK_DIR / "inference" / f"{stem}.json"
    write_json(path, record)
    return path, record


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.dawnbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--author", default="raybench", help="author name (default: raybench)")
        sp.add_argument("--email", default="", help="author email (DAWNBench's authorEmail)")
        sp.add_argument("--hardware", help="machine description, e.g. 'GCP n2-standard-8' (default: the CPU "
                                           "or GPU model)")
        sp.add_argument("--code-url", help="URL of the code (DAWNBench's optional codeURL)")
        sp.add_argument("--cost-per-hour", type=_non_negative,
                        help="on-demand price of the machine in USD per hour")

    ex = sub.add_parser("export", help="training JSON + TSV per trial of a results folder")
    ex.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder (results/<sweep>) or a folder of sweeps")
    ex.add_argument("--out", required=True, help="folder to write CIFAR10/train/ into")
    common(ex)

    inf = sub.add_parser("infer", help="latency and top-1 of a checkpoint, one image at a time")
    inf.add_argument("--checkpoint", required=True, help="checkpoint folder (state.pt + trial.json) or its state.pt")
    inf.add_argument("--data", help="folder holding cifar-10-batches-py/ (default: $RAYBENCH_DATA, else the "
                                    "official download)")
    inf.add_argument("--limit", type=_count(1), help="classify only the first N test images (default: all)")
    inf.add_argument("--warmup", type=_count(0), default=20,
                     help="untimed warm-up classifications before timing (default 20)")
    inf.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to run (default: cuda when available, else cpu)")
    inf.add_argument("--out", default="dawnbench", help="folder to write CIFAR10/inference/ into (default: dawnbench)")
    common(inf)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from raybench.report import ResultsError

    try:
        if args.command == "export":
            paths = export(args.results_dir, Path(args.out), args)
            for path in paths:
                print(path)
            print(f"{len(paths) // 2} trial(s) exported to {Path(args.out) / TASK_DIR / 'train'}")
        else:
            path, r = infer(args)
            cost = f", cost ${r['cost']:.3g}/image" if "cost" in r else ""
            print(f"{r['model']} ({r['misc']['trial_id']}, epoch {r['misc']['checkpointEpoch']}): top-1 "
                  f"{r['top1Accuracy']:.2f}% on {r['misc']['images']} test image(s), latency {r['latency']:.3f} "
                  f"ms/image (batch 1, {r['misc']['device']}, {args.warmup} warm-up){cost} -> {path}")
    except (InputError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.email:
        print("note: authorEmail is empty; pass --email before submitting to DAWNBench", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
