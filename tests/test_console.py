"""The sweep's console: one line per epoch per trial, none of Ray Train's per-report dumps, and the
ways to watch a sweep; ``--verbose`` brings Ray's logs back.

The README's quickstart command with --smoke (two trials of two epochs, 1 and 2 CPU workers; run
once for the session by ``conftest.quickstart_smoke``) is read as a user sees it: its stdout and
stderr, and the progress lines against the rows the sweep wrote.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from raybench import results

from conftest import write_sweep

PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (\S+)  epoch (\d+)/(\d+)  test top-1 (\d\.\d{3})  (\d+) img/s  "
                      r"train (\d+\.\d) s  ETA (\d+:\d\d(?::\d\d)?)")
DUMPS = ("TrainingReport(", results.ROW_KEY, "Logical resource usage", "Trial status:")
EPOCHS = 2  # --smoke runs at most 2 of the quickstart's 4 epochs


def _sweep(tmp: Path, data: Path, name: str, workers: list[int], epochs: int, *extra: str):
    path = write_sweep(tmp / f"{name}.yaml", name=name, workers=workers, schedule={"epochs": epochs})
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(path), "--smoke", "--data", str(data),
                           "--results", str(tmp / "r"), *extra], cwd=tmp, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, tmp / "r" / name


@pytest.fixture(scope="module")
def quiet(quickstart_smoke):
    return quickstart_smoke


def test_one_progress_line_per_trial_epoch(quiet):
    proc, sweep_dir = quiet
    lines = [m for m in map(PROGRESS.match, proc.stdout.splitlines()) if m]
    files = results.trial_files(sweep_dir)
    assert len(files) == 2
    expected = {}
    for f in files:
        trial_rows, _ = results.read_trial(f)
        assert [r["epoch"] for r in trial_rows] == list(range(1, EPOCHS + 1))
        expected |= {(r["trial_id"], r["epoch"]): r for r in trial_rows}
    seen = [(m[3], int(m[4])) for m in lines]
    assert sorted(seen) == sorted(expected), proc.stdout  # exactly one line per (trial, epoch)
    for m in lines:
        row = expected[(m[3], int(m[4]))]
        assert (int(m[2]), int(m[5])) == (2, EPOCHS)
        assert m[6] == f"{row['test_top1']:.3f}"
        assert m[7] == f"{row['images_per_second']:.0f}"
        assert m[8] == f"{row['train_seconds']:.1f}"
    assert [m[9] for m in lines if int(m[4]) == EPOCHS] == ["0:00", "0:00"]  # nothing left after the last epoch


def test_no_ray_train_dumps_and_no_tune_table(quiet):
    proc, _ = quiet
    for text in (proc.stdout, proc.stderr):
        for dump in DUMPS:
            assert dump not in text, f"{dump!r} in:\n{text[-3000:]}"


def test_the_cli_says_how_to_watch(quiet):
    """The dashboard's address with how to get its token, and a TensorBoard command whose folder
    holds the sweep's event files."""
    proc, sweep_dir = quiet
    out = proc.stdout
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+", out, re.M), out
    assert re.search(r"it asks for a token: run `\S*ray get-auth-token`", out), out
    logdir = re.search(r"^tensorboard: tensorboard --logdir (\S+)", out, re.M)
    assert logdir, out
    assert Path(logdir[1]) == (sweep_dir / "_ray" / "tune").resolve()
    for f in results.trial_files(sweep_dir):
        events = list((Path(logdir[1]) / Path(f).stem).glob("events.out.tfevents.*"))
        assert events and b"rb_test_top1" in events[0].read_bytes(), f


def test_verbose_brings_ray_logs_back(tmp_path, cifar_dir):
    proc, _ = _sweep(tmp_path, cifar_dir, "loud", [1], 1, "--verbose")
    assert "TrainingReport(" in proc.stdout + proc.stderr
    assert len([m for m in map(PROGRESS.match, proc.stdout.splitlines()) if m]) == 1


def test_eta_is_the_epochs_left_or_the_budget_left_at_the_trials_pace():
    from raybench.driver.console import clock, eta_seconds

    row = {"epoch": 2, "epoch_seconds": 10.0, "train_seconds": 20.0}
    assert eta_seconds(row, 10, None, 12.0) == 8 * 12.0
    assert eta_seconds(row, 10, 45.0, 12.0) == 3 * 12.0  # 25 s of budget: two epochs and the one it cuts
    assert eta_seconds(row | {"epoch": 10}, 10, None, 12.0) == 0
    assert (clock(65), clock(3725), clock(-1)) == ("1:05", "1:02:05", "0:00")


def test_an_emulated_trials_first_eta_goes_by_the_wall_clock_not_its_predicted_epoch():
    """An emulated trial's epoch_seconds are predicted at its worker count (0.5 s here), while the
    epoch took 20 s of wall time on the processes that emulate it: the ETA after its first epoch
    goes by the wall time since it started; a measured trial's by its own epoch and evaluation."""
    from raybench.driver.console import wall_per_epoch

    row = {"epoch": 1, "epoch_seconds": 0.5, "eval_seconds": 0.1, "source": results.SOURCE_EMULATED}
    assert wall_per_epoch(row, [], 20.0) == 20.0
    assert wall_per_epoch(row | {"source": results.SOURCE_MEASURED}, [], 20.0) == pytest.approx(0.6)
    assert wall_per_epoch(row, [18.0, 22.0], 60.0) == 20.0  # later: the mean between its reports
