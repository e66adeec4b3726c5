"""The per-worker loop in-process (a real gloo process group of one): goals, checkpoint restore,
precision, and the communication hook's wire thread."""
import shutil
import threading
import time

import pytest
import torch

from raybench import models
from raybench.spec import config as cfg
from raybench.worker import data as cifar
from raybench.worker.checkpoint import load_state
from raybench.worker.comm import hook
from raybench.worker.comm.link import Link
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


def collect(t, ds, restore=None, keep=None, clock=time.perf_counter):
    rows = []

    def report(row, ckpt, trace):
        rows.append(row.to_dict())
        if keep is not None:
            shutil.copytree(ckpt, keep / f"epoch_{row.epoch}")

    run(t, CPU, ds, "run", report, restore, clock=clock)
    return rows


def ticking(step: float = 0.1):
    """A clock that advances ``step`` seconds each time it is read: the loop's decisions without a race."""
    ticks = iter(range(1 << 30))
    return lambda: step * next(ticks)


def test_time_budget_cuts_the_epoch_in_progress(ds):
    # 10 steps per epoch; the clock moves 0.1 s per reading, so 0.5 s are spent after about 5 steps
    # whatever the machine's speed.
    rows = collect(trial(time_budget_s=0.5), ds, clock=ticking())
    assert len(rows) == 1
    (row,) = rows
    assert row["budget_cut"] and row["train_seconds"] >= 0.5
    assert 0 < row["images_per_second"] * row["epoch_seconds"] < 640  # fewer images than a full epoch
    assert 0 <= row["test_top1"] <= 1


@pytest.fixture(scope="module")
def two_epochs(ds, tmp_path_factory):
    """A 2-epoch trial without a budget, run once, each epoch's checkpoint kept: its rows and the
    checkpoints' folder (the restore test restarts it from epoch 1 and compares with it)."""
    keep = tmp_path_factory.mktemp("two_epochs")
    return collect(trial(time_budget_s=None, epochs=2), ds, keep=keep), keep


def test_without_a_budget_every_epoch_runs_in_full(two_epochs):
    rows, _ = two_epochs
    assert [r["epoch"] for r in rows] == [1, 2]
    assert not any(r["budget_cut"] for r in rows)
    assert rows[1]["train_seconds"] == pytest.approx(rows[0]["epoch_seconds"] + rows[1]["epoch_seconds"])


def test_stop_at_target_ends_the_trial_at_the_first_epoch_that_reaches_it(ds):
    rows = collect(trial(stop_at_target=True, target_top1=0.01, time_budget_s=None), ds)
    assert len(rows) == 1 and rows[0]["test_top1"] >= 0.01
    # A target never reached: every epoch runs.
    never = collect(trial(stop_at_target=True, target_top1=1.0, time_budget_s=None), ds)
    assert [r["epoch"] for r in never] == [1, 2, 3] and all(r["test_top1"] < 1.0 for r in never)
    # A target first reached after epoch 1 (runs are deterministic: the same accuracies again): the
    # trial runs on until that epoch, and stops there.
    top1 = [r["test_top1"] for r in never]
    later = next((e for e in (2, 3) if top1[e - 1] > top1[0]), None)
    assert later is not None, f"no epoch after the first beat its accuracy: {top1}"
    rows = collect(trial(stop_at_target=True, target_top1=top1[later - 1], time_budget_s=None), ds)
    assert [r["epoch"] for r in rows] == list(range(1, later + 1))
    assert [r["test_top1"] for r in rows] == top1[:later]


def test_restore_continues_from_the_checkpoint(ds, two_epochs):
    """Restarted from the epoch-1 checkpoint of the uninterrupted 2-epoch run (kept before its epoch 2
    began: what a restart of that run loads), epoch 2 is that run's epoch 2."""
    full, keep = two_epochs
    t = trial(time_budget_s=None, epochs=2)
    state = load_state(keep / "epoch_1", torch.device("cpu"))
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "scheduler", "torch_rng", "train_seconds"}
    rows = collect(t, ds, restore=keep / "epoch_1")
    assert [r["epoch"] for r in rows] == [2]
    assert rows[0]["train_seconds"] == pytest.approx(full[0]["train_seconds"] + rows[0]["epoch_seconds"])
    assert rows[0]["lr"] == full[1]["lr"]
    assert rows[0]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-4)


def test_bf16_autocast_trains_and_is_recorded(ds, monkeypatch):
    # The training forward's output dtype, seen by a hook on the model the loop builds.
    seen, build = [], models.build

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda m, _in, out: seen.append(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(models, "build", build_and_watch)
    t = trial(time_budget_s=None, epochs=1)
    (row,) = collect(t.model_copy(update={"precision": "bf16"}), ds)
    assert row["precision"] == "bf16" and row["train_loss"] == row["train_loss"]  # finite, recorded
    assert 0 <= row["test_top1"] <= 1
    assert seen and set(seen) == {torch.bfloat16}  # every training step ran under bf16 autocast
    seen.clear()
    (fp32,) = collect(t, ds)  # the same trial in fp32: same data, same initial weights
    assert set(seen) == {torch.float32} and fp32["precision"] == "fp32"
    assert row["train_loss"] != pytest.approx(fp32["train_loss"], rel=1e-6)  # bf16 rounding changed the run


# ---------------------------------------------------------------- the wire thread: every error reaches DDP

def _completes(fut: torch.futures.Future, timeout: float = 10.0) -> bool:
    """Whether ``fut`` completes within ``timeout`` (a hang fails the test rather than blocking it)."""
    done = threading.Event()
    fut.add_done_callback(lambda _: done.set())
    return done.wait(timeout)


class _RefusingFuture(torch.futures.Future):
    """A future whose set_result fails for a value (set_exception goes through set_result too)."""

    def set_result(self, result):
        if not isinstance(result, Exception):
            raise RuntimeError("set_result failed")
        super().set_result(result)


class _RefusingRecord(list):
    """A bucket's record whose release time cannot be written (the wire's bookkeeping fails)."""

    def __setitem__(self, i, v):
        if i == 2:
            raise RuntimeError("release bookkeeping failed")
        super().__setitem__(i, v)


def _record(t: float) -> list:
    """A bucket's record as the hook keeps it: hand-over, real end, release, collectives, bytes, ready."""
    return [t, t, t, 1, 12, float("nan")]


@pytest.mark.parametrize("failure", ["real", "release", "set_result"])
def test_wire_passes_every_error_to_the_waiting_future_and_keeps_going(failure):
    wire = hook._Wire(None, threading.Lock())
    wire.start()
    real, out, record = torch.futures.Future(), torch.futures.Future(), _record(time.perf_counter())
    if failure == "real":
        real.set_exception(RuntimeError("collective failed"))
    else:
        real.set_result(torch.ones(3))
    if failure == "release":
        record = _RefusingRecord(record)
    if failure == "set_result":
        out = _RefusingFuture()
    wire.send(real, out, 0.0, record)
    assert _completes(out), "the wire never completed the future DDP waits on"
    with pytest.raises(RuntimeError, match="failed"):
        out.wait()
    # The wire is still alive: it releases the next futures in order, one after the other on the
    # wire, each its modelled time after the previous one's transfer ended.
    futures, records = [], []
    for value in (1.0, 2.0):
        done, fut, rec = torch.futures.Future(), torch.futures.Future(), _record(time.perf_counter())
        done.set_result(torch.full((3,), value))
        wire.send(done, fut, 0.1, rec)
        futures.append(fut)
        records.append(rec)
    assert all(_completes(f) for f in futures)
    assert [f.wait().tolist() for f in futures] == [[1.0] * 3, [2.0] * 3]
    assert records[0][2] - records[0][1] >= 0.1 and records[1][2] - records[0][2] >= 0.1 - 1e-3


def test_a_failing_release_reaches_ddp_backward_as_an_error(monkeypatch):
    # Through DDP on a real (one-rank) gloo group: the hook models 2 workers on a slow link, so every
    # bucket is held on the wire; a callback that raises there must fail backward(), not hang it.
    state = hook.LinkHook(Link(bandwidth_mbps=0.001), workers=2)

    def failing_hold(_seconds: float) -> None:
        raise RuntimeError("the hold failed")

    monkeypatch.setattr(hook.time, "sleep", failing_hold)  # the wire's hold, on its own thread
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 2))
    ddp.register_comm_hook(state, hook.link_hook)
    outcome: list[BaseException | None] = []

    def step():
        try:
            ddp(torch.randn(4, 8)).sum().backward()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            outcome.append(e)

    t = threading.Thread(target=step, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "backward() waited forever on a future the wire never completed"
    assert isinstance(outcome[0], RuntimeError) and "the hold failed" in str(outcome[0])
