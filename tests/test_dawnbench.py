"""DAWNBench files: the export passes DAWNBench's own submission checks; infer measures a real checkpoint."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raybench import dawnbench, results
from raybench.analysis import inference, metrics
from raybench.models import build
from raybench.worker import checkpoint as ckpt
from raybench.worker import data as cifar
from raybench.worker.checkpoint import STATE_FILE, TRIAL_FILE
from raybench.worker.setup import make_optimizer

from rows import epoch_rows, scaling_sweep, trial, write

REPO = Path(__file__).resolve().parent.parent
# What DAWNBench's tests/test_submissions.py requires of every entry.
TRAIN_REQUIRED = ("version", "author", "authorEmail", "framework", "model", "hardware", "timestamp")
INFER_REQUIRED = TRAIN_REQUIRED + ("latency",)
# Every field the DAWNBench page defines; nothing else may appear at the top level.
TRAIN_FIELDS = {"version", "author", "authorEmail", "framework", "codeURL", "model", "hardware", "costPerHour",
                "timestamp", "logFilename", "misc"}
INFER_FIELDS = {"version", "author", "authorEmail", "framework", "codeURL", "model", "hardware", "latency", "cost",
                "top1Accuracy", "timestamp", "logFilename", "misc"}


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raybench.dawnbench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(REPO)})


# ---------------------------------------------------------------- export

@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results") / "synthetic"
    scaling_sweep(folder, workers=(1, 2), network={"bandwidth_mbps": [100, "unlimited"], "latency_ms": [0]})
    (folder / "_ray").mkdir()  # Ray's run state sits beside the trial files; it is not a trial
    return folder


@pytest.fixture(scope="module")
def exported(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dawn")
    run = cli("export", str(sweep), "--out", str(out), "--author", "raybench", "--email", "dev@example.org",
              "--cost-per-hour", "0.75", "--hardware", "GCP n2-standard-4")
    assert run.returncode == 0, run.stderr
    return out / "CIFAR10" / "train"


def dawnbench_checks(folder: Path) -> int:
    """DAWNBench's submission tests for CIFAR-10 training entries, plus range checks; returns entries seen."""
    entries = sorted(folder.glob("*.json"))
    for path in entries:
        record = json.loads(path.read_text())  # valid JSON
        for field in TRAIN_REQUIRED:
            assert field in record, f"{path.name}: {field} is a required field"
        datetime.strptime(record["timestamp"], "%Y-%m-%d")
        tsv = path.with_suffix(".tsv")
        assert tsv.exists(), f"{path.name}: the TSV file doesn't exist"
        df = pd.read_csv(tsv, sep="\t")
        assert list(df.columns) == ["epoch", "hours", "top1Accuracy"], f"{tsv.name}: incorrect columns"
        assert len(df) > 0, f"{tsv.name}: the TSV file shouldn't be empty"
        assert df["top1Accuracy"].between(0, 100).all(), f"{tsv.name}: accuracy outside 0..100"
        assert (df["hours"] > 0).all() and df["hours"].is_monotonic_increasing and df["hours"].is_unique
        assert df["epoch"].tolist() == sorted(df["epoch"]) and df["epoch"].is_unique
    return len(entries)


def test_export_passes_dawnbench_checks(exported):
    assert dawnbench_checks(exported) == 4


def test_one_uniquely_named_pair_per_trial(exported, sweep):
    stems = sorted(p.stem for p in exported.glob("*.json"))
    assert stems == sorted(p.stem for p in exported.glob("*.tsv"))
    assert stems == ["raybench_resnet20v1-w1-bw100_1xcpu_pytorch", "raybench_resnet20v1-w1-bwinf_1xcpu_pytorch",
                     "raybench_resnet20v1-w2-bw100_2xcpu_pytorch", "raybench_resnet20v1-w2-bwinf_2xcpu_pytorch"]
    for stem in stems:
        assert re.fullmatch(r"[a-z0-9.-]+(_[a-z0-9.-]+){3}", stem)


def test_json_fields_come_from_the_trial(exported, sweep):
    path = exported / "raybench_resnet20v1-w2-bw100_2xcpu_pytorch.json"
    record = json.loads(path.read_text())
    assert set(record) <= TRAIN_FIELDS
    rows, meta = results.read_trial(sweep / "resnet20v1_w2_cpu_bw100_lat0_allreduce_s0.parquet")
    versions = json.loads(meta[results.META_VERSIONS.decode()])
    assert record["version"] == "v1.0"
    assert record["authorEmail"] == "dev@example.org"
    assert record["framework"] == f"PyTorch {versions['torch'].split('+')[0]} + Ray {versions['ray']}"
    assert record["model"] == "ResNet-20 v1"
    assert record["hardware"].startswith("GCP n2-standard-4") and "2 data-parallel worker" in record["hardware"]
    assert record["costPerHour"] == 0.75
    assert "codeURL" not in record  # optional, and not given
    misc = record["misc"]
    assert misc["dataset"] == "CIFAR-10 local copy (differs from the official release)"  # rows.metadata: cifar10-local
    assert misc["workers"] == 2 and misc["algorithm"] == "allreduce"
    assert misc["network"] == {"bandwidth_mbps": 100.0, "latency_ms": 0.0}
    assert misc["trial_id"] == "resnet20v1_w2_cpu_bw100_lat0_allreduce_s0"
    assert misc["raybench"] == versions["raybench"]
    assert "warmed up" in misc["lrSchedule"] and "x0.1 at epochs 3" in misc["lrSchedule"]


def test_tsv_is_the_trial_in_hours_and_percent(exported, sweep):
    rows, meta = results.read_trial(sweep / "resnet20v1_w2_cpu_bwinf_lat0_allreduce_s0.parquet")
    df = pd.read_csv(exported / "raybench_resnet20v1-w2-bwinf_2xcpu_pytorch.tsv", sep="\t")
    assert df["epoch"].tolist() == [r["epoch"] for r in rows]
    assert df["hours"].tolist() == pytest.approx([r["train_seconds"] / 3600 for r in rows], rel=1e-12)
    assert df["top1Accuracy"].tolist() == pytest.approx([100 * r["test_top1"] for r in rows])
    # DAWNBench reads time-to-accuracy off the first TSV line at or above the target: the same as ours.
    target = results.trial_config(meta)["goal"]["target_top1"]
    first = df[df["top1Accuracy"] >= 100 * target]["hours"].iloc[0]
    assert first * 3600 == pytest.approx(metrics.time_to_accuracy(pd.DataFrame(rows), target))


def test_a_copy_identical_to_the_release_is_named_official(tmp_path):
    spec = trial(workers=[1])
    write(tmp_path / "r", spec, epoch_rows(spec, [0.3, 0.5]), dataset=cifar.DATASET_OFFICIAL)
    assert dawnbench.main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    (path,) = (tmp_path / "out" / "CIFAR10" / "train").glob("*.json")
    assert json.loads(path.read_text())["misc"]["dataset"] == "CIFAR-10 (official python archive)"


def test_cost_only_when_given_and_names_stay_unique_across_sweeps(tmp_path, capsys):
    # The same grid point in two sweeps of one results folder: two entries, told apart by the sweep.
    for name in ("a", "b"):
        scaling_sweep(tmp_path / "results" / name, workers=(1,), name=name)
    assert dawnbench.main(["export", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "CIFAR10" / "train"
    assert dawnbench_checks(folder) == 2
    assert sorted(p.stem for p in folder.glob("*.json")) == ["raybench_resnet20v1-w1-sweepa_1xcpu_pytorch",
                                                             "raybench_resnet20v1-w1-sweepb_1xcpu_pytorch"]
    record = json.loads(next(folder.glob("*.json")).read_text())
    assert "costPerHour" not in record
    assert "authorEmail is empty" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_export_bad_results_dir_exit_2(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    assert dawnbench.main(["export", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and ("no such folder" in err or "no trial files" in err)


# ---------------------------------------------------------------- infer

@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A fake CIFAR-10 python folder: random images, the official layout (10,000 images per file)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / cifar.BATCHES
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        batch = {"data": rng.integers(0, 256, (cifar.IMAGES_PER_FILE, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, cifar.IMAGES_PER_FILE).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=4)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A ResNet-20 checkpoint folder as worker.checkpoint.save writes it (state.pt + trial.json)."""
    spec = trial(workers=[2])
    torch.manual_seed(0)
    model = build(spec.arch, spec.depth, spec.version)
    opt, sched = make_optimizer(model, spec, steps_per_epoch=10)
    folder = tmp_path_factory.mktemp("ckpt") / "epoch_0003"
    folder.mkdir()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": 3, "train_seconds": 123.5, "torch_rng": torch.get_rng_state()}, folder / STATE_FILE)
    (folder / TRIAL_FILE).write_text(spec.model_dump_json())
    return folder


def test_infer_cli_on_a_checkpoint(checkpoint, cifar_dir, tmp_path):
    run = cli("infer", "--checkpoint", str(checkpoint), "--data", str(cifar_dir), "--limit", "50", "--warmup", "5",
              "--out", str(tmp_path), "--cost-per-hour", "1.2", "--email", "dev@example.org", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    files = list((tmp_path / "CIFAR10" / "inference").glob("*.json"))
    assert [f.name for f in files] == ["raybench_resnet20v1-w2_1xcpu_pytorch.json"]
    record = json.loads(files[0].read_text())
    for field in INFER_REQUIRED:
        assert field in record
    assert set(record) <= INFER_FIELDS
    datetime.strptime(record["timestamp"], "%Y-%m-%d")
    assert record["latency"] > 0
    # The top-1 of the same weights on the same 50 test images, computed independently (one batch).
    state, spec = ckpt.read(checkpoint)
    model = build(spec.arch, spec.depth, spec.version)
    model.load_state_dict(state["model"])
    model.eval()
    ds = cifar.load(cifar_dir)
    with torch.inference_mode():
        correct = int((model(cifar.normalize(ds.test_x[:50])).argmax(1) == ds.test_y[:50]).sum())
    assert record["top1Accuracy"] == pytest.approx(100 * correct / 50)
    assert record["cost"] == pytest.approx(1.2 * record["latency"] / 3_600_000)
    assert record["model"] == "ResNet-20 v1" and record["framework"].startswith("PyTorch ")
    misc = record["misc"]
    assert misc["batchSize"] == 1 and misc["images"] == 50 and misc["fullTestSet"] is False
    assert misc["warmupImages"] == 5 and "excluded" in misc["warmup"]
    assert misc["checkpointEpoch"] == 3 and misc["trial_id"] == "resnet20v1_w2_cpu_bwinf_lat0_allreduce_s0"
    assert misc["dataset"] == "CIFAR-10 local copy (differs from the official release)"  # random images
    line = run.stdout.strip().splitlines()
    assert len(line) == 1 and "ms/image" in line[0] and "top-1" in line[0]


def test_one_at_a_time_matches_a_batched_forward(checkpoint):
    state, spec = ckpt.read(checkpoint)
    model = build(spec.arch, spec.depth, spec.version)
    model.load_state_dict(state["model"])
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    latencies, correct = inference.classify_one_at_a_time(model, x, y, torch.device("cpu"), warmup=2)
    with torch.inference_mode():
        expected = int((model(cifar.normalize(x)).argmax(1) == y).sum())
    assert len(latencies) == 40 and min(latencies) > 0
    assert correct == expected


@pytest.mark.parametrize("argv, flag", [
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint /nonexistent/ckpt"),
    (["--checkpoint", "CKPT", "--limit", "0"], "--limit"),
    (["--checkpoint", "CKPT", "--limit", "ten"], "--limit"),
    (["--checkpoint", "CKPT", "--cost-per-hour", "-1"], "--cost-per-hour"),
    (["--checkpoint", "CKPT", "--warmup", "-3"], "--warmup"),
])
def test_infer_bad_input_exit_2_naming_the_flag(argv, flag, checkpoint, capsys):
    argv = [str(checkpoint) if a == "CKPT" else a for a in argv]
    try:
        code = dawnbench.main(["infer", *argv])
    except SystemExit as e:  # argparse rejects a bad number itself
        code = e.code
    assert code == 2
    assert flag in capsys.readouterr().err


def test_infer_checkpoint_folder_without_state(tmp_path, capsys):
    (tmp_path / TRIAL_FILE).write_text("{}")
    assert dawnbench.main(["infer", "--checkpoint", str(tmp_path)]) == 2
    assert f"no {STATE_FILE}" in capsys.readouterr().err
