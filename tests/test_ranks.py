"""Two real ranks over gloo, without Ray: one model per row, one clock per decision, exact restarts.

Each test starts two processes (tests/multirank.py); every assertion compares what the ranks
reported with each other, with a checkpoint, or with an uninterrupted run.
"""
import json
import subprocess
import sys

import pytest

from raybench.spec import config as cfg

from multirank import run_ranks, train_rows


def trial(algorithm="allreduce", epochs=1, train=1024, test=500, budget=None, **schedule):
    sched = {"epochs": epochs, "warmup_epochs": 0, "milestones": [], "batch_per_worker": 32} | schedule
    return cfg.expand(cfg.parse({
        "name": "ranks", "workers": [2], "algorithm": [algorithm], "schedule": sched,
        "goal": {"time_budget_s": budget}, "data": {"train_images": train, "test_images": test},
        "powersgd": {"start_iter": 2}, "localsgd": {"warmup_steps": 2, "period": 3}}))[0]


@pytest.mark.parametrize("algorithm", ["allreduce", "localsgd"])
def test_the_row_scores_the_model_its_checkpoint_holds(algorithm, cifar_dir, tmp_path):
    """test_top1 of the row = what `dawnbench infer` measures on the epoch's checkpoint, same images."""
    t = trial(algorithm)
    rows = run_ranks(train_rows, 2, t.model_dump_json(), str(cifar_dir), str(tmp_path / "keep"), out=tmp_path / "r")
    assert rows[0] == [r | {"timestamp": rows[0][i]["timestamp"]} for i, r in enumerate(rows[1])]  # one row
    (row,) = rows[0]
    proc = subprocess.run([sys.executable, "-m", "raybench.dawnbench", "infer", "--checkpoint",
                           str(tmp_path / "keep" / "epoch_1"), "--data", str(cifar_dir), "--limit", "500",
                           "--warmup", "0", "--device", "cpu", "--out", str(tmp_path / "infer")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(f.read_text()) for f in (tmp_path / "infer").rglob("*.json")]
    assert record["misc"]["images"] == 500
    assert record["top1Accuracy"] == pytest.approx(100 * row["test_top1"], abs=1e-9)


def test_a_skewed_clock_ends_every_rank_at_the_same_step(cifar_dir, tmp_path):
    """Rank 1's clock runs 3x fast: alone it would leave the loop epochs before rank 0 (a hang);
    with one agreed clock both stop together and report the same times."""
    t = trial(epochs=20, train=1024, budget=3.0)
    ranks = run_ranks(train_rows, 2, t.model_dump_json(), str(cifar_dir), None, None, 3.0, out=tmp_path / "r",
                      timeout=240)
    epochs = [[(r["epoch"], r["budget_cut"]) for r in rows] for rows in ranks]
    assert epochs[0] == epochs[1] and len(epochs[0]) < 20  # the budget ended it, on both ranks alike
    assert epochs[0][-1][1] or ranks[0][-1]["train_seconds"] >= 3.0
    for key in ("epoch_seconds", "train_seconds", "images_per_second", "train_loss"):
        assert [r[key] for r in ranks[0]] == [r[key] for r in ranks[1]], key  # one clock, one set of sums


@pytest.mark.parametrize("algorithm", ["powersgd", "localsgd"])
def test_a_restart_continues_exactly(algorithm, cifar_dir, tmp_path):
    """Restored from its epoch-1 checkpoint, epoch 2 matches the uninterrupted run's epoch 2."""
    full = trial(algorithm, epochs=2, train=640, test=100)
    first = full.model_copy(update={"schedule": full.schedule.model_copy(update={"epochs": 1})})
    run_ranks(train_rows, 2, first.model_dump_json(), str(cifar_dir), str(tmp_path / "keep"), out=tmp_path / "a")
    resumed = run_ranks(train_rows, 2, full.model_dump_json(), str(cifar_dir), None,
                        str(tmp_path / "keep" / "epoch_1"), out=tmp_path / "b")
    straight = run_ranks(train_rows, 2, full.model_dump_json(), str(cifar_dir), out=tmp_path / "c")
    assert [r["epoch"] for r in resumed[0]] == [2]
    assert resumed[0][0]["train_loss"] == pytest.approx(straight[0][1]["train_loss"], rel=1e-4)
    assert resumed[0][0]["test_loss"] == pytest.approx(straight[0][1]["test_loss"], rel=1e-4)
