"""The per-worker loop in-process (a real gloo process group of one): goals and checkpoint restore."""
import shutil

import pytest
import torch

from raybench.spec import config as cfg
from raybench.worker import data as cifar
from raybench.worker.checkpoint import load_state
from raybench.worker.loop import run
from raybench.worker.setup import Worker

from conftest import one_rank_gloo

CPU = Worker(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with one_rank_gloo():
        yield


@pytest.fixture(scope="module")
def ds(cifar_dir):
    return cifar.load(cifar_dir)


def trial(**goal_and_schedule):
    goal = {k: v for k, v in goal_and_schedule.items() if k in cfg.Goal.model_fields}
    sched = {"epochs": 3, "warmup_epochs": 0, "milestones": [], "batch_per_worker": 64} | {
        k: v for k, v in goal_and_schedule.items() if k in cfg.Schedule.model_fields}
    return cfg.expand(cfg.parse({"name": "t", "schedule": sched, "goal": goal,
                                 "data": {"train_images": 640, "test_images": 128}}))[0]


def collect(t, ds, restore=None, keep=None):
    rows = []

    def report(row, ckpt):
        rows.append(row.to_dict())
        if keep is not None:
            shutil.copytree(ckpt, keep / f"epoch_{row.epoch}")

    run(t, CPU, ds, "run", report, restore)
    return rows


def test_time_budget_cuts_the_epoch_in_progress(ds):
    rows = collect(trial(time_budget_s=0.5), ds)
    assert len(rows) == 1
    (row,) = rows
    assert row["budget_cut"] and row["train_seconds"] >= 0.5
    assert 0 < row["images_per_second"] * row["epoch_seconds"] < 640  # fewer images than a full epoch
    assert 0 <= row["test_top1"] <= 1


def test_without_a_budget_every_epoch_runs_in_full(ds):
    rows = collect(trial(time_budget_s=None, epochs=2), ds)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert not any(r["budget_cut"] for r in rows)
    assert rows[1]["train_seconds"] == pytest.approx(rows[0]["epoch_seconds"] + rows[1]["epoch_seconds"])


def test_stop_at_target_ends_the_trial_at_the_first_epoch_that_reaches_it(ds):
    rows = collect(trial(stop_at_target=True, target_top1=0.01, time_budget_s=None), ds)
    assert len(rows) == 1 and rows[0]["test_top1"] >= 0.01


def test_restore_continues_from_the_checkpoint(ds, tmp_path):
    t = trial(time_budget_s=None, epochs=2)
    first = collect(t.model_copy(update={"schedule": t.schedule.model_copy(update={"epochs": 1})}), ds, keep=tmp_path)
    state = load_state(tmp_path / "epoch_1", torch.device("cpu"))
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "scheduler", "torch_rng", "train_seconds"}
    rows = collect(t, ds, restore=tmp_path / "epoch_1")
    assert [r["epoch"] for r in rows] == [2]
    assert rows[0]["train_seconds"] == pytest.approx(first[0]["train_seconds"] + rows[0]["epoch_seconds"])
    full = collect(t, ds)  # the same two epochs without the interruption
    assert rows[0]["lr"] == full[1]["lr"]
    assert rows[0]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-4)


def test_bf16_autocast_trains_and_is_recorded(ds):
    t = trial(time_budget_s=None, epochs=1).model_copy(update={"precision": "bf16"})
    (row,) = collect(t, ds)
    assert row["precision"] == "bf16" and row["train_loss"] == row["train_loss"]  # finite, recorded
    assert 0 <= row["test_top1"] <= 1
