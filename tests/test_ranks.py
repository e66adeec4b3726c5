"""Two real ranks over gloo, without Ray: one model per row, one clock per decision, exact restarts.

Each test starts two processes (tests/multirank.py); every assertion compares what the ranks
reported with each other, with a checkpoint, or with an uninterrupted run.
"""
import json
import subprocess
import sys

import pytest

from raybench.spec import config as cfg

from multirank import run_ranks, train_each, train_rows


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
    """Restored from its epoch-1 checkpoint, epoch 2 matches the uninterrupted run's epoch 2. The
    checkpoint is the uninterrupted run's own (kept after epoch 1, before epoch 2 started): what a
    restart of that run would load."""
    full = trial(algorithm, epochs=2, train=640, test=100)
    straight = run_ranks(train_rows, 2, full.model_dump_json(), str(cifar_dir), str(tmp_path / "keep"),
                         out=tmp_path / "c")
    resumed = run_ranks(train_rows, 2, full.model_dump_json(), str(cifar_dir), None,
                        str(tmp_path / "keep" / "epoch_1"), out=tmp_path / "b")
    assert [r["epoch"] for r in resumed[0]] == [2]
    assert resumed[0][0]["train_loss"] == pytest.approx(straight[0][1]["train_loss"], rel=1e-4)
    assert resumed[0][0]["test_loss"] == pytest.approx(straight[0][1]["test_loss"], rel=1e-4)


def test_algorithms_smoke_sweep_charges_the_bytes_each_algorithm_sends(cifar_dir, tmp_path):
    """The trials `sweeps/algorithms.yaml --smoke` plans, each trained in turn on the same two ranks
    (the loop the Ray workers run; Ray itself is exercised by test_e2e's sweeps)."""
    import pandas as pd

    from raybench import sweep
    from raybench.models import build

    plan = sweep.plan(sweep.parse_args(["algorithms", "--smoke", "--data", str(cifar_dir), "--results",
                                        str(tmp_path / "results")]))
    assert {t.workers for t in plan.trials} == {2}  # 4 workers, clamped to 2 by --smoke
    ranks = run_ranks(train_each, 2, [t.model_dump_json() for t in plan.trials], str(cifar_dir), out=tmp_path / "r",
                      timeout=600)
    df = pd.DataFrame([row for trial in ranks[0] for row in trial])
    assert sorted(df.algorithm.unique()) == ["allreduce", "fp16", "localsgd", "powersgd"]
    assert (df.groupby("algorithm").epoch.max() == 2).all()
    steps = 512 // 2 // int(df.batch_per_worker.iloc[0])
    assert steps == 4  # --smoke: 512 images, 2 workers, 64 per worker
    epoch2 = df[df.epoch == 2].set_index("algorithm")  # PowerSGD and local SGD have started by then
    per_step = epoch2.simulated_delay_seconds / steps
    full = sum(p.numel() for p in build("resnet", 20, "v1").parameters())
    assert full == 269_722
    assert per_step["fp16"] / per_step["allreduce"] == pytest.approx(0.5, rel=1e-9)
    # PowerSGD at rank r = 2 (--smoke starts it after 2 steps), worked out by hand for ResNet-20 v1.
    # A weight of shape (n, ...) is an n x m matrix, m = its other dimensions' product; it is sent as
    # P (n x r) and Q (m x r), (n + m) * r elements, when that is under half of n * m (torch's
    # min_compression_rate 2), which holds for every weight here:
    #   conv1                16 x 27:   (16 + 27) * 2 =   86
    #   layer1, 6 convs      16 x 144:  (16 + 144) * 2 = 320 each  -> 1,920
    #   layer2.0.conv1       32 x 144:  (32 + 144) * 2 = 352
    #   layer2, 5 convs      32 x 288:  (32 + 288) * 2 = 640 each  -> 3,200
    #   layer3.0.conv1       64 x 288:  (64 + 288) * 2 = 704
    #   layer3, 5 convs      64 x 576:  (64 + 576) * 2 = 1,280 each -> 6,400
    #   fc                   10 x 64:   (10 + 64) * 2 =  148
    #   compressed total: 12,810. The 1-d tensors go as they are: 19 batch norms' weight and bias,
    #   2 * (16 * 7 + 32 * 6 + 64 * 6) = 1,376, and fc's bias, 10: 1,386. Per step: 14,196 elements.
    assert per_step["powersgd"] / per_step["allreduce"] == pytest.approx(14_196 / full, rel=1e-9)
    # Local SGD (--smoke: warmup_steps 2, period 2): steps 0 and 1 all-reduce gradients, then none;
    # the parameters (all 269,722) are averaged at steps 2, 4, 6. Epoch 2 is steps 4 to 7: two
    # averagings in four steps, half of an all-reduce per step.
    assert per_step["localsgd"] / per_step["allreduce"] == pytest.approx(2 / 4, rel=1e-9)
