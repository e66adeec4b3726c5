"""The README's commands, run as a user runs them."""
import math
import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, quickstart_command, readme_quick_start, run_quickstart, write_sweep

README = (ROOT / "README.md").read_text()


def test_quick_start_is_install_and_run_then_pytest():
    first, second = readme_quick_start()
    assert "pip install -e \".[test]\"" in first
    assert first.endswith("python -m raybench.sweep quickstart")
    assert second == "pytest"
    assert re.search(r"^pytest$", (ROOT / ".ci" / "run").read_text(), re.M), ".ci/run must run the README's tests"


def test_quickstart_plans_what_the_readme_says(cifar_dir, tmp_path):
    """The quickstart as the README describes it (ResNet-20 v1 at 1 and 2 CPU workers, 4 epochs on
    10,000 training images): the exact command's plan, with --dry-run."""
    from raybench import sweep

    proc = run_quickstart(["--dry-run"], cifar_dir, tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "sweep quickstart: 2 trial(s)"
    head = re.split(r"\s{2,}", lines[1].strip())  # columns are 2+ spaces apart; a value may hold one ("0 ms")
    table = [dict(zip(head, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[2:]]
    assert len(table) == 2
    assert sorted((int(t["workers"]), int(t["epochs"])) for t in table) == [(1, 4), (2, 4)]
    assert {(t["model"], t["hw"]) for t in table} == {("resnet20_v1", "cpu")}
    assert not (tmp_path / "results").exists()  # --dry-run starts nothing
    argv = quickstart_command()[3:] + ["--data", str(cifar_dir), "--results", str(tmp_path / "r"), "--dry-run"]
    trials = sweep.plan(sweep.parse_args(argv)).trials
    assert sorted(t.trial_id for t in trials) == sorted(t["trial_id"] for t in table)
    assert {(t.data.train_images, t.schedule.epochs) for t in trials} == {(10_000, 4)}


def test_quickstart_runs_as_the_readme_says(quickstart_smoke):
    """The exact command, end to end with --smoke (every trial, every epoch, shrunk): real Ray, real
    Parquet, in a fresh folder (the run ``tests/test_console.py`` reads the console of)."""
    _, folder = quickstart_smoke
    df = pd.read_parquet(folder)
    assert sorted(df.groupby("workers").epoch.max().items()) == [(1, 2), (2, 2)]  # --smoke: at most 2 epochs
    assert sorted(zip(df.workers, df.epoch, strict=True)) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_quickstart_trial_learns_in_its_4_epochs_on_10000_images(cifar_dir, tmp_path):
    """What the quickstart's rows show: 4 epochs on 10,000 images learn something (test top-1 above 0.3
    at some epoch). Its 2-worker trial, unshrunk (the exact plan of the README's command), on two real
    gloo ranks without Ray: the loop the Ray workers run (the Ray path is the --smoke run above).
    The trial stops at the first epoch above 0.3 (``goal.stop_at_target``, which changes no epoch
    before it), so a trial that never gets there still runs all 4 epochs and fails."""
    from raybench import sweep

    from multirank import run_ranks, train_rows

    argv = quickstart_command()[3:] + ["--data", str(cifar_dir), "--results", str(tmp_path / "r"), "--dry-run"]
    trials = sweep.plan(sweep.parse_args(argv)).trials
    (two,) = [t for t in trials if t.workers == 2]
    assert (two.data.train_images, two.schedule.epochs) == (10_000, 4)
    early = two.model_copy(update={"goal": two.goal.model_copy(update={
        "stop_at_target": True, "target_top1": math.nextafter(0.3, 1.0)})})  # stops at the first epoch > 0.3
    ranks = run_ranks(train_rows, 2, early.model_dump_json(), str(cifar_dir), out=tmp_path / "ranks", timeout=900)
    df = pd.DataFrame(ranks[0])
    assert list(df.epoch) == list(range(1, len(df) + 1)) and len(df) <= 4
    assert df.test_top1.max() > 0.3  # 4 epochs on 10,000 images learn something


def test_the_error_example_is_what_the_cli_prints(tmp_path):
    example = re.search(r"^error: sweeps/mine.yaml: .*$", README, re.M).group(0)
    mine = tmp_path / "sweeps" / "mine.yaml"
    mine.parent.mkdir()
    write_sweep(mine, name="mine", model={"depth": [18]})
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", "sweeps/mine.yaml", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == example


def test_dry_run_prints_the_trial_table_and_starts_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", "network", "--smoke", "--dry-run",
                           "--results", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sweep network: 12 trial(s)" in proc.stdout  # 2, 4 and 8 workers collapse onto 2 under --smoke
    assert proc.stdout.count("resnet20v1_w2") == 12
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("fields, needs", [
    ({"workers": [1, 2, 64]}, "workers 64 x cpus_per_worker 1 needs 64 CPUs; this machine has"),
    ({"hardware": ["gpu"]}, "hardware 'gpu' with 1 workers needs 1 GPU(s); this machine has 0"),
])
def test_dry_run_rejects_trials_this_machine_cannot_hold(tmp_path, fields, needs):
    import torch

    if "gpu" in str(fields) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    f = write_sweep(tmp_path / "big.yaml", name="big", **fields)
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(f), "--dry-run"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert needs in proc.stderr


def test_the_schema_table_names_every_column_of_epochrow():
    from raybench import results

    table = README.split("## Results: one row per (trial, epoch)", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in table.splitlines()
                                                   if line.startswith("| `"))))
    assert named == set(results.COLUMNS)


def test_ruff_is_configured_and_run_by_ci():
    import tomllib

    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"F", "E", "I", "UP", "B"} <= set(lint["select"])
    assert re.search(r"^ruff check \.$", (ROOT / ".ci" / "run").read_text(), re.M)
