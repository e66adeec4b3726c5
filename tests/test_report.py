"""The report CLI on synthetic sweeps: summary on stdout, PNGs, one offline HTML page, clear errors."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raybench import report, results
from raybench.analysis import tables

from rows import epoch_rows, scaling_sweep, trials, write

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raybench.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"})


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    """A 2-trial sweep (1 and 2 workers) reported through the CLI."""
    folder = tmp_path_factory.mktemp("results") / "synthetic"
    specs = scaling_sweep(folder, workers=(1, 2))
    out = tmp_path_factory.mktemp("report")
    return specs, out, cli(str(folder), "--out", str(out))


@pytest.fixture(scope="module")
def network_run(tmp_path_factory):
    """A bandwidth sweep (10, 100 Mbit/s, unlimited) x (1, 2 workers), default --out."""
    folder = tmp_path_factory.mktemp("results") / "network"
    specs = scaling_sweep(folder, workers=(1, 2), network={"bandwidth_mbps": [10, 100, "unlimited"], "latency_ms": [0]})
    return specs, folder / report.REPORT_DIR, cli(str(folder))


def _html_checks(out: Path, pngs: list[str]) -> str:
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(pngs)
    assert {base64.b64decode(e) for e in embedded} == {(out / p).read_bytes() for p in pngs}
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page)  # nothing fetched: opens offline
    assert "http" not in page and "<script" not in page and "<link" not in page
    return page


def test_scaling_sweep_report(scaling_run):
    specs, out, run = scaling_run
    assert run.returncode == 0, run.stderr
    pngs = ["accuracy_vs_time.png", "scaling.png", "tta_vs_workers.png", "epochs_vs_global_batch.png",
            "compute_comm.png"]
    for name in pngs:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert not list(out.glob("time_vs_*.png"))  # no network parameter was swept
    page = _html_checks(out, pngs)
    for spec in specs:
        assert spec.trial_id in run.stdout and spec.trial_id in page
    assert "Per-trial summary" in run.stdout and "Speedup and efficiency" in run.stdout


def test_summary_line_matches_the_synthetic_trial(scaling_run):
    specs, _, run = scaling_run
    line = next(s for s in run.stdout.splitlines() if s.strip().startswith(specs[0].trial_id))
    # 1 worker: 40 s epochs, accuracies 30/45/55/60%: target 50% at 120 s, budget 100 s -> epoch 2 (45%).
    assert re.search(r"\b1 +unlimited +0 ms +4 +complete +50\.00% +120\.0 +100 +45\.00% +60\.00% +1250\.0 +0\.00%",
                     line), line


def test_bandwidth_sweep_report(network_run):
    specs, out, run = network_run
    assert run.returncode == 0, run.stderr
    pngs = ["accuracy_vs_time.png", "scaling.png", "tta_vs_workers.png", "epochs_vs_global_batch.png",
            "time_vs_bandwidth.png", "compute_comm.png"]
    for name in pngs:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert not (out / "time_vs_latency.png").exists()  # latency was not swept
    _html_checks(out, pngs)
    assert "10 Mbit/s" in run.stdout and "unlimited" in run.stdout
    assert str(out / "index.html") in run.stdout


def test_one_worker_count_skips_scaling_with_a_note(tmp_path, capsys):
    scaling_sweep(tmp_path / "r", workers=(2,))
    assert report.main([str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    assert "scaling plot skipped" in capsys.readouterr().out
    assert not (tmp_path / "o" / "scaling.png").exists() and (tmp_path / "o" / "index.html").exists()


def test_missing_baseline_is_named_in_a_note(tmp_path, capsys):
    scaling_sweep(tmp_path / "r", workers=(2, 4))
    assert report.main([str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "no 1-worker trial for configuration sweep=synthetic, model=resnet20_v1" in out
    assert "scaling plot skipped" in out
    assert "no 1-worker trial" in (tmp_path / "o" / "index.html").read_text()


def test_target_and_budget_come_from_metadata_unless_overridden(tmp_path):
    spec = trials(workers=[1], goal={"target_top1": 0.4, "time_budget_s": 25})[0]
    write(tmp_path, spec, epoch_rows(spec, [0.3, 0.45, 0.6], epoch_seconds=10.0))
    res = results.load(tmp_path)
    table = tables.summary(res, *tables.goals(res)).iloc[0]
    assert (table["target_top1"], table["time_to_target_s"]) == (0.4, 20.0)
    assert (table["budget_s"], table["top1_after_budget"]) == (25, 0.45)
    table = tables.summary(res, *tables.goals(res, target=0.55, budget=35.0)).iloc[0]
    assert (table["time_to_target_s"], table["top1_after_budget"]) == (30.0, 0.6)


def test_running_and_budget_cut_trials_are_marked(tmp_path, capsys):
    running, cut = trials(workers=[1, 2])
    write(tmp_path, running, epoch_rows(running, [0.3]), status="running")
    write(tmp_path, cut, epoch_rows(cut, [0.3, 0.4], cut_last=True))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{running.trial_id} .* running ", out)
    assert re.search(rf"{cut.trial_id} .* complete \(budget cut epoch 2\)", out)


@pytest.mark.parametrize("case", ["missing", "empty", "not parquet"])
def test_bad_results_dir_exit_2(tmp_path, capsys, case):
    folder = tmp_path / "results"
    if case != "missing":
        folder.mkdir()
    if case == "not parquet":
        (folder / "trial.parquet").write_text("this is not parquet")
    assert report.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(folder) in err


@pytest.mark.parametrize("argv, flag", [(["--target", "94"], "--target"), (["--budget", "-5"], "--budget"),
                                        (["--budget", "soon"], "--budget")])
def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path), *argv])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_precision_swept_with_workers_has_a_baseline_per_precision(tmp_path, capsys):
    # fp32 and bf16 are two configurations: each 2-worker trial is measured against the 1-worker
    # trial of its own precision (grouping them together found two baselines and crashed).
    scaling_sweep(tmp_path / "r", workers=(1, 2), precision=["fp32", "bf16"])
    assert report.main([str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "no 1-worker trial" not in out
    scal = tables.scaling_table(results.load(tmp_path / "r").rows, {})
    per_epoch = scal[scal["metric"] == "time per epoch"]
    pairs = sorted(zip(per_epoch["precision"], per_epoch["workers"], strict=True))
    assert pairs == [("bf16", 1), ("bf16", 2), ("fp32", 1), ("fp32", 2)]
    assert (per_epoch["baseline_seconds"] == 40.0).all()  # each its own precision's 1-worker trial (40 s epochs)
    assert (tmp_path / "o" / "scaling.png").exists()


def test_emulated_trials_scale_against_the_measured_one_and_are_drawn_hollow(tmp_path, capsys):
    """Issue 13: trials of 4 to 64 workers emulated (virtual workers), 1 and 2 measured: one
    configuration, speedup against the measured 1-worker trial; the points are drawn hollow."""
    from raybench.analysis import metrics, plots

    folder = tmp_path / "r"
    specs = scaling_sweep(folder, workers=(1, 2, 4, 16, 64))
    for spec in specs[2:]:  # rewrite as the loop writes an emulated trial's rows
        path = results.trial_path(folder, spec.trial_id)
        rows, _ = results.read_trial(path)
        write(folder, spec, [r | {"source": results.SOURCE_EMULATED, "predicted_from": spec.trial_id} for r in rows])
    res = results.load(folder)
    scal = metrics.scaling(res.rows, metrics.seconds_per_epoch)
    assert sorted(scal["workers"]) == [1, 2, 4, 16, 64] and set(scal["source"]) == {"measured"}
    by = scal.set_index("workers")
    assert by["speedup"][1] == 1.0 and by["speedup"][64] == pytest.approx(by["seconds"][1] / by["seconds"][64])
    hollow = plots._hollow(res.rows)
    assert [hollow[(s.sweep, s.trial_id)] for s in specs] == [False, False, True, True, True]
    fig = plots.plot_time_vs_workers(res.rows, {(s.sweep, s.trial_id): 0.5 for s in specs})
    points = [(len(col.get_facecolors()) == 0, len(col.get_offsets())) for ax in fig.axes for col in ax.collections]
    assert sum(n for hollow, n in points if hollow) == 2 * 3  # per panel: 4, 16 and 64 workers hollow
    assert sum(n for hollow, n in points if not hollow) == 2 * 2  # 1 and 2 workers filled
    assert report.main([str(folder), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "epochs_vs_global_batch.png").read_bytes().startswith(PNG_MAGIC)
    assert "no 1-worker trial" not in capsys.readouterr().out
