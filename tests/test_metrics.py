"""Metrics on hand-made epoch rows: thresholds, budgets that end mid-epoch, speedup and efficiency."""
from __future__ import annotations

import functools
import math

import pandas as pd
import pytest

from raybench.analysis import metrics

from rows import epoch_rows, frame, trial, trials

# One trial: epochs of 10 s each, so train_seconds = 10, 20, 30, 40.
ACC = [0.30, 0.50, 0.49, 0.70]


@pytest.fixture(scope="module")
def one() -> pd.DataFrame:
    return frame(epoch_rows(trial(workers=1), ACC, epoch_seconds=10.0))


def test_target_reached_at_exactly_the_threshold(one):
    assert metrics.time_to_accuracy(one, 0.50) == 20.0  # >=, not >


def test_target_is_the_first_epoch_to_reach_it_not_a_later_one(one):
    assert metrics.time_to_accuracy(one, 0.49) == 20.0
    assert metrics.time_to_accuracy(one, 0.70) == 40.0


def test_target_never_reached_is_none(one):
    assert metrics.time_to_accuracy(one, 0.71) is None


def test_rows_in_any_order(one):
    assert metrics.time_to_accuracy(one.iloc[::-1], 0.50) == 20.0
    assert metrics.final_top1(one.sample(frac=1, random_state=1)) == 0.70


def test_budget_ending_mid_epoch_counts_only_finished_epochs(one):
    # 25 s: epoch 2 ended at 20 s (counts), epoch 3 ends at 30 s (crosses the budget: does not).
    assert metrics.accuracy_after_time(one, 25.0) == 0.50
    assert metrics.accuracy_after_time(one, 30.0) == 0.49  # an epoch ending exactly on the budget counts
    assert metrics.accuracy_after_time(one, 29.999) == 0.50


def test_epoch_cut_by_the_budget_is_the_model_at_the_budget():
    # The loop stops after the step during which the budget ran out: the cut epoch ends just past it,
    # and its evaluation is the accuracy of the model when the time was up.
    rows = frame(epoch_rows(trial(), [0.3, 0.5, 0.55], epoch_seconds=[10.0, 10.0, 5.2], cut_last=True))
    assert metrics.budget_cut_epoch(rows) == 3
    assert metrics.accuracy_after_time(rows, 25.0) == 0.55
    uncut = frame(epoch_rows(trial(), [0.3, 0.5, 0.55], epoch_seconds=[10.0, 10.0, 5.2]))
    assert metrics.accuracy_after_time(uncut, 25.0) == 0.50  # crossing the budget is not being cut at it
    assert metrics.final_top1(rows) == 0.55


def test_budget_before_the_first_epoch_or_none(one):
    assert metrics.accuracy_after_time(one, 9.0) is None
    assert metrics.accuracy_after_time(one, None) is None
    assert metrics.accuracy_after_time(one, 1e9) == 0.70


def test_rows_of_two_trials_are_refused():
    a, b = trials(workers=[1, 2])
    both = frame(epoch_rows(a, ACC) + epoch_rows(b, ACC))
    with pytest.raises(ValueError, match="one trial, got 2"):
        metrics.time_to_accuracy(both, 0.5)


def test_comm_share_and_throughput():
    spec = trial()
    rows = frame(epoch_rows(spec, [0.1, 0.2], epoch_seconds=[10.0, 30.0], comm_fraction=0.25, images=1000))
    assert metrics.comm_share(rows) == pytest.approx(0.25)
    assert metrics.images_per_second(rows) == pytest.approx((100 + 1000 / 30) / 2)
    assert metrics.seconds_per_epoch(rows) == pytest.approx(20.0)


def _scaled(workers=(1, 2, 4), seconds=(100.0, 60.0, 40.0), **overrides) -> pd.DataFrame:
    """One trial per grid point; all reach 0.6 at epoch 2; p workers take seconds[i] to get there."""
    time_of = dict(zip(workers, seconds, strict=True))
    rows = []
    for spec in trials(workers=list(workers), **overrides):
        rows += epoch_rows(spec, [0.4, 0.6, 0.65], epoch_seconds=time_of[spec.workers] / 2)
    return frame(rows)


def test_speedup_and_efficiency_values():
    out = metrics.scaling(_scaled(), functools.partial(metrics.time_to_accuracy, target=0.6))
    assert out["workers"].tolist() == [1, 2, 4]
    assert out["seconds"].tolist() == [100.0, 60.0, 40.0]
    assert out["speedup"].tolist() == pytest.approx([1.0, 100 / 60, 2.5])
    assert out["efficiency"].tolist() == pytest.approx([1.0, 100 / 120, 0.625])


def test_speedup_with_another_time_metric():
    out = metrics.scaling(_scaled(), metrics.seconds_per_epoch)
    assert out["seconds"].tolist() == [50.0, 30.0, 20.0]
    assert out["speedup"].tolist() == pytest.approx([1.0, 100 / 60, 2.5])


def test_target_never_reached_gives_nan_speedup():
    out = metrics.scaling(_scaled(), functools.partial(metrics.time_to_accuracy, target=0.9))
    assert out["speedup"].isna().all() and out["efficiency"].isna().all()


def test_each_configuration_has_its_own_baseline():
    rows = _scaled(workers=(1, 2), seconds=(100.0, 50.0),
                   network={"bandwidth_mbps": [100, "unlimited"], "latency_ms": [0]})
    out = metrics.scaling(rows, metrics.seconds_per_epoch)
    assert len(out) == 4  # 2 bandwidths x 2 worker counts, each against its own 1-worker trial
    assert out.groupby("bandwidth_mbps", dropna=False)["speedup"].max().tolist() == pytest.approx([2.0, 2.0])


@pytest.mark.parametrize("grid", [
    {"precision": ["fp32", "bf16"]}, {"algorithm": ["allreduce", "fp16"]}, {"seed": [0, 1]},
    {"hardware": ["cpu", "gpu"]}, {"model": {"arch": "resnet", "depth": [20, 32], "version": ["v1", "v2"]}},
    {"network": {"bandwidth_mbps": [10, "unlimited"], "latency_ms": [0, 5]}},
], ids=lambda g: "+".join(g))
def test_every_grid_field_but_workers_is_its_own_configuration(grid):
    # Each value of a swept field is measured against its own 1-worker trial; a field missing from
    # CONFIG_KEY puts two 1-worker trials in one group ("more than one 1-worker trial").
    rows = _scaled(workers=(1, 2), seconds=(100.0, 50.0), **grid)
    out = metrics.scaling(rows, metrics.seconds_per_epoch)
    groups = len(trials(workers=[1], **grid))
    assert groups > 1 and len(out) == 2 * groups
    assert out["speedup"].tolist() == pytest.approx([1.0, 2.0] * groups)


def test_missing_one_worker_trial_names_the_configuration():
    rows = _scaled(workers=(2, 4), seconds=(60.0, 40.0), network={"bandwidth_mbps": [100], "latency_ms": [5]})
    with pytest.raises(metrics.MissingBaseline) as err:
        metrics.scaling(rows, metrics.seconds_per_epoch)
    msg = str(err.value)
    assert "no 1-worker trial" in msg
    for part in ("sweep=synthetic", "model=resnet20_v1", "depth=20", "bandwidth_mbps=100", "latency_ms=5",
                 "algorithm=allreduce", "precision=fp32", "seed=0", "workers 2, 4"):
        assert part in msg
    assert metrics.scaling(rows, metrics.seconds_per_epoch, strict=False).empty
    assert metrics.missing_baselines(rows) == [msg]


def test_summary_per_trial_with_per_trial_targets():
    specs = trials(workers=[1, 2])
    rows = frame(epoch_rows(specs[0], ACC, epoch_seconds=10.0) + epoch_rows(specs[1], ACC, epoch_seconds=5.0))
    key = (specs[1].sweep, specs[1].trial_id)
    out = metrics.summary(rows, target={key: 0.7}, budget=12.0).set_index("workers")
    assert out.loc[1, "target_top1"] is None or math.isnan(out.loc[1, "target_top1"])
    assert pd.isna(out.loc[1, "time_to_target_s"])
    assert out.loc[2, "time_to_target_s"] == 20.0
    assert out.loc[1, "top1_after_budget"] == 0.30 and out.loc[2, "top1_after_budget"] == 0.50
    assert out.loc[2, "final_top1"] == 0.70
    assert out.loc[2, "comm_share"] == pytest.approx(0.25)
    assert out.loc[2, "epochs"] == 4 and out.loc[2, "train_seconds"] == 20.0
