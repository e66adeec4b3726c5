"""The README's commands, run as a user runs them."""
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, write_sweep

README = (ROOT / "README.md").read_text()


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_install_and_run_then_pytest():
    first, second = quick_start()
    assert "pip install -e \".[test]\"" in first
    assert first.endswith("python -m raybench.sweep quickstart")
    assert second == "pytest"
    assert re.search(r"^pytest$", (ROOT / ".ci" / "run").read_text(), re.M), ".ci/run must run the README's tests"


def test_quickstart_runs_as_the_readme_says(cifar_dir, tmp_path):
    """The run half of the first command, in a fresh folder, on the offline copy (the install half is
    what .ci/run does)."""
    cmd = quick_start()[0].split("&&")[-1].split()
    assert cmd[:3] == ["python", "-m", "raybench.sweep"]
    env = os.environ | {"RAYBENCH_DATA": str(cifar_dir)}
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "results" / "quickstart")
    assert sorted(df.groupby("workers").epoch.max().items()) == [(1, 4), (2, 4)]
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
