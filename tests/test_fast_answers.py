"""Fast answers: ``--dry-run`` and every kind of bad input are answered without importing torch or ray.

Each case runs the real CLI (``python -m raybench.sweep ...``, through runpy as ``-m`` does) in a
fresh interpreter whose atexit hook records which of torch, torchvision and ray were ever imported;
the answer itself must be unchanged: exit code, and an error naming the field or flag, the value
and what is allowed. One case of each kind of check in ``sweep.plan`` (the sweep file, a flag, the
results folder, the data, the machine's capacity, --address); tests/test_bad_input.py has all 54.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raybench import sweep
from raybench.worker import data as cifar

from conftest import ROOT, write_sweep

HEAVY = ("torch", "torchvision", "ray")
LAUNCHER = (
    "import atexit, json, os, runpy, sys\n"
    "atexit.register(lambda: open(os.environ['RAYBENCH_TEST_IMPORTED'], 'w').write(\n"
    f"    json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules))))\n"
    "runpy.run_module('raybench.sweep', run_name='__main__', alter_sys=True)\n"
)
VALID = {"name": "fast", "workers": [1], "schedule": {"epochs": 1}, "data": {"train_images": 128, "test_images": 32}}


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list]:
    marker = cwd / f"imported-{abs(hash(tuple(args)))}.json"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYBENCH_"))}
    full |= {"RAYBENCH_TEST_IMPORTED": str(marker), "PYTHONPATH": str(ROOT)} | (env or {})
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)
    return proc, json.loads(marker.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory, cifar_dir) -> dict[str, str]:
    base = tmp_path_factory.mktemp("fast")
    good = write_sweep(base / "good.yaml", **VALID)
    bad_depth = write_sweep(base / "depth.yaml", **(VALID | {"model": {"arch": "resnet", "depth": [18]}}))
    big = write_sweep(base / "big.yaml", **(VALID | {"workers": [4 * (os.cpu_count() or 1)],
                                                     "data": {"train_images": 512 * (os.cpu_count() or 1)}}))
    emulated = write_sweep(base / "emulated.yaml", **(VALID | {"workers": [4, 8], "max_processes": 2,
                                                               "data": {"train_images": 1024}}))
    broken = base / "broken" / cifar.BATCHES
    broken.mkdir(parents=True)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        (broken / name).symlink_to(Path(cifar_dir) / cifar.BATCHES / name)
    (broken / "test_batch").unlink()
    (broken / "test_batch").write_bytes(b"not a pickle")
    (base / "blocker").write_text("a file where a folder should be")
    return {"base": str(base), "good": str(good), "depth": str(bad_depth), "big": str(big), "emulated": str(emulated),
            "data": str(cifar_dir), "broken": str(broken.parent), "blocker": str(base / "blocker"),
            "cpus4": str(4 * (os.cpu_count() or 1))}


# id -> (arguments, exit code, what stderr (or, for 0, stdout) must hold)
CASES = {
    "dry-run": (["{good}", "--dry-run", "--data", "{data}"], 0, ["sweep fast: 1 trial(s)", "resnet20v1_w1"]),
    "dry-run-no-data": (["{good}", "--dry-run"], 0, ["sweep fast: 1 trial(s)"]),
    "sweep-file": (["{depth}", "--data", "{data}"], 2,
                   ["{depth}", "field 'model.depth[0]'", "value 18 is not allowed", "allowed: 20, 32, 44 or 56"]),
    "flag": (["{good}", "--concurrency", "0", "--data", "{data}"], 2, ["--concurrency 0", "must be 1 or more"]),
    "results": (["{good}", "--results", "{blocker}/r", "--data", "{data}"], 2,
                ["--results {blocker}/r", "is a file, not a folder"]),
    "data-file": (["{good}", "--data", "{broken}"], 2, ["test_batch", "not a readable CIFAR-10 batch file"]),
    "capacity": (["{big}", "--data", "{data}"], 2, ["needs", "CPUs; this machine has", "Use fewer workers"]),
    "dry-run-emulated": (["{emulated}", "--dry-run", "--data", "{data}"], 0,
                         ["resnet20v1_w4", "2 x 2", "resnet20v1_w8", "2 x 4", "2 trial(s) run as virtual workers"]),
    "dry-run-scale": (["scale", "--smoke", "--dry-run"], 0,  # issue 13, must-show 2
                      ["sweep scale: 66 trial(s)", "processes x virtual", "54 trial(s) run as virtual workers"]),
    "num-cpus-dry-run": (["{big}", "--dry-run", "--num-cpus", "{cpus4}", "--data", "{data}"], 0,
                         ["sweep fast: 1 trial(s)"]),
    "address": (["{good}", "--data", "{data}", "--address", "127.0.0.1:9"], 2,
                ["--address 127.0.0.1:9", "nothing answers there"]),
}


@pytest.fixture(scope="module")
def answers(work) -> dict:
    base = Path(work["base"])
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(_cli, [a.format(**work) for a in args], base) for k, (args, _, _) in CASES.items()}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", CASES)
def test_answers_without_torch_or_ray(case, answers, work):
    (proc, imported), (_, code, expect) = answers[case], CASES[case]
    assert proc.returncode == code, proc.stdout + proc.stderr
    text = proc.stdout if code == 0 else proc.stderr
    for part in expect:
        assert part.format(**work) in text, text
    if code:
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    assert imported == [], f"{case} imported {imported}"


def test_scale_smoke_dry_run_lists_how_each_trial_runs_up_to_1024_workers(answers):
    """Issue 13, must-show 2: every trial of `scale --smoke --dry-run` with its processes x virtual
    workers per process (this machine's CPUs decide; on 2 cores, 4 workers and more run on 2)."""
    (proc, _) = answers["dry-run-scale"]
    lines = proc.stdout.splitlines()
    head = re.split(r"\s{2,}", lines[1].strip())
    rows = [dict(zip(head, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[2:68]]
    runs = {int(r["workers"]): r["processes x virtual"] for r in rows}
    assert sorted(runs) == [2**i for i in range(11)]
    held = os.cpu_count() or 1
    for workers, shown in runs.items():
        k = max(d for d in range(1, min(workers, held) + 1) if workers % d == 0)
        assert shown == f"{k} x {workers // k}", (workers, shown)
    assert int(runs[1024].split(" x ")[1]) >= 1024 // held


def test_the_launcher_sees_an_import_of_torch(tmp_path):
    """The check can fail: a CLI run that does reach torch is recorded as such."""
    marker = tmp_path / "m.json"
    code = LAUNCHER.replace("runpy.run_module('raybench.sweep', run_name='__main__', alter_sys=True)", "import torch")
    subprocess.run([sys.executable, "-c", code], env=os.environ | {"RAYBENCH_TEST_IMPORTED": str(marker)},
                   check=True)
    assert json.loads(marker.read_text()) == ["torch"]


def test_local_gpus_counts_what_torch_counts(monkeypatch):
    """The capacity check's GPU count (NVML, no torch) agrees with torch's, and honours CUDA_VISIBLE_DEVICES."""
    import torch

    assert sweep.local_gpus() == torch.cuda.device_count()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep.local_gpus() == 0


def test_verify_refuses_what_load_refuses(work):
    """The torch-free check of a local copy raises the same error as loading it."""
    with pytest.raises(cifar.DataError) as checked:
        cifar.verify(Path(work["broken"]))
    with pytest.raises(cifar.DataError) as loaded:
        cifar.load(work["broken"])
    assert str(checked.value) == str(loaded.value)
    cifar.verify(Path(work["data"]))  # a good copy passes
