"""`python -m raybench.sweep network --smoke --replay`: one training run answers for the whole network grid.

Through the real path: a local Ray, Tune, Train, two gloo workers, the writer's trial file and
trace file, then the replayed grid points written beside the trained trial.
"""
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq

from raybench import results, traces
from raybench.spec import config as cfg

from conftest import ROOT


def test_replay_trains_once_per_configuration_and_writes_every_grid_point(cifar_dir, tmp_path):
    grid = cfg.smoke(cfg.expand(cfg.load(ROOT / "sweeps" / "network.yaml")))
    assert len(grid) == 12 and len({t.workers for t in grid}) == 1  # one configuration, twelve links
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", "network", "--smoke", "--replay", "--data",
                           str(cifar_dir), "--results", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "11 of 11 grid point(s) written as predicted trials" in proc.stdout
    assert proc.stdout.count("complete after 2 epoch(s)") == 1  # trained once

    df = pd.read_parquet(tmp_path / "network", schema=results.SCHEMA)
    measured, predicted = df[df.source == "measured"], df[df.source == "predicted"]
    (trained,) = measured.trial_id.unique()
    assert trained == grid[0].trial_id  # the first link of the grid: unlimited, 0 ms
    assert sorted(predicted.trial_id.str.removesuffix("_pred").unique()) == sorted(t.trial_id for t in grid[1:])
    assert set(predicted.predicted_from) == {trained}
    for _, g in predicted.groupby("trial_id"):  # accuracy is the trained run's; the link is the grid point's
        assert g.sort_values("epoch").test_top1.tolist() == measured.sort_values("epoch").test_top1.tolist()
    slow = predicted[(predicted.bandwidth_mbps == 100) & (predicted.latency_ms == 10)]
    assert (slow.epoch_seconds.values > measured.sort_values("epoch").epoch_seconds.values).all()

    trace = pq.read_table(traces.path(tmp_path / "network", trained))
    assert sorted(set(trace["rank"].to_pylist())) == [0, 1] and sorted(set(trace["epoch"].to_pylist())) == [1, 2]
    assert measured.simulated_hold_seconds.notna().all()
