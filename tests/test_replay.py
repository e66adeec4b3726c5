"""Network replay: the engine by hand, the trace a live run records, and replay against live runs.

The engine's arithmetic is checked on hand-made traces (no torch, no Ray). The fidelity check runs
one 2-worker trial three times on real gloo ranks (tests/multirank.py): at unlimited bandwidth, on
a bandwidth-bound link and on a latency-bound one; replaying the unlimited run's trace must give
the other two runs' epoch times within 10% per epoch (the issue's bar at smoke size).
"""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from raybench import replay, results, traces
from raybench.spec import config as cfg
from raybench.worker.comm.link import Link

from multirank import run_ranks, train_rows


def _record(handover, real_done, release, nbytes, backward, end, avg=(0, 0, 0.0)):
    return {"handover": handover, "real_done": real_done, "release": release, "collectives": [1] * len(nbytes),
            "nbytes": nbytes, "backward": backward, "end": end, "avg_collectives": avg[0], "avg_nbytes": avg[1],
            "avg_real": avg[2]}


# An unlimited-link step of two ranks with two buckets each; 8 Mbit/s moves 1e6 bytes/s, and a
# 2-worker ring sends each byte once, so bucket b's transfer takes nbytes/1e6 s (0.1 and 0.05).
UNLIMITED_STEP = [
    _record([0.10, 0.20], [0.15, 0.25], [0.15, 0.25], [100_000, 50_000], backward=0.26, end=0.30),
    _record([0.12, 0.18], [0.15, 0.25], [0.15, 0.25], [100_000, 50_000], backward=0.255, end=0.29),
]
SLOW = Link(bandwidth_mbps=8.0)


def _steps(ranks, epoch=1):
    return replay.steps(traces.to_table(epoch, [[r] for r in ranks]))


def test_replay_charges_each_bucket_from_when_every_rank_had_handed_it_over_on_one_wire():
    # No measured ``ready``: every rank had handed bucket 0 over at 0.12 and bucket 1 at 0.20 (the
    # latest rank's hand-over). rank 0: bucket 0's transfer 0.12 + 0.1 = 0.22 (its real end 0.15 is
    # earlier); bucket 1 waits for the wire: 0.22 + 0.05 = 0.27; backward returns 0.01 after the last
    # release (0.28), the optimizer takes 0.04: 0.32. rank 1: 0.27 + 0.005 + 0.035 = 0.31.
    s = _steps(UNLIMITED_STEP)
    t = replay.step_times(s, SLOW, 2, Link(), 2)
    assert t.seconds.tolist() == pytest.approx([0.32])
    assert t.modelled.tolist() == pytest.approx([0.15])
    assert t.hold.tolist() == pytest.approx([0.09])  # held from each real end (0.15, 0.25) to release (0.22, 0.27)
    assert t.comm.tolist() == pytest.approx([0.09])  # rank 1: last release 0.27, last hand-over 0.18


def test_a_measured_ready_time_starts_the_transfer_and_the_real_end_bounds_the_release():
    measured = [dict(r, ready=[0.13, 0.21]) for r in UNLIMITED_STEP]  # a little after the latest hand-over
    t = replay.step_times(_steps(measured), SLOW, 2, Link(), 2)
    assert t.seconds.tolist() == pytest.approx([0.33])  # rank 0: 0.13 + 0.1 + 0.05, + 0.01 + 0.04
    # a link so fast that the transfer ends before the real collective: the real end (0.25) stands
    fast = replay.step_times(_steps(measured), Link(bandwidth_mbps=8000.0), 2, Link(), 2)
    assert fast.seconds.tolist() == pytest.approx([0.30])


def test_replay_at_the_traced_link_gives_the_measured_epoch_and_adds_the_difference_elsewhere():
    s = _steps(UNLIMITED_STEP)
    (same,) = replay.epoch_times(s, Link(), 2, Link(), 2, {1: 0.31})
    (slow,) = replay.epoch_times(s, SLOW, 2, Link(), 2, {1: 0.31})
    assert same.epoch_seconds == pytest.approx(0.31)  # 0.30 of steps + 0.01 outside them
    assert slow.epoch_seconds == pytest.approx(0.33)  # 0.32 of steps + 0.01


def test_a_held_trace_replays_back_to_the_unlimited_one():
    """Traced on the slow link (releases held), replayed at unlimited: the hold comes off again."""
    held = [_record([0.10, 0.20], [0.15, 0.25], [0.25, 0.30], [100_000, 50_000], backward=0.31, end=0.35),
            _record([0.12, 0.18], [0.15, 0.25], [0.25, 0.30], [100_000, 50_000], backward=0.305, end=0.34)]
    t = replay.step_times(_steps(held), Link(), 2, SLOW, 2)
    assert t.seconds.tolist() == pytest.approx([0.30])
    assert t.hold.tolist() == pytest.approx([0.0])


def test_parameter_averaging_pays_its_modelled_time_after_its_real_one_as_the_hook_does():
    """Buckets and local SGD's averaging follow one rule: the modelled transfer starts when the real
    one has finished. The live hook's ``charge`` holds exactly the modelled time; replay agrees."""
    rec = _record([], [], [], [], backward=0.2, end=0.35, avg=(1, 1_000_000, 0.05))
    s = _steps([rec, rec])
    assert replay.step_times(s, Link(), 2, Link(), 2).seconds.tolist() == pytest.approx([0.35])
    t = replay.step_times(s, SLOW, 2, Link(), 2)
    assert t.seconds.tolist() == pytest.approx([0.35 + 1.0])
    assert t.hold.tolist() == pytest.approx([1.0])

    from raybench.worker.comm.hook import LinkHook  # the live side of the same rule
    hook = LinkHook(SLOW, 2)
    hook.charge([1_000_000], real_seconds=0.05)
    stats = hook.take_stats()
    assert stats.simulated_hold_seconds == pytest.approx(1.0)
    assert stats.comm_seconds == pytest.approx(1.05)


def test_one_worker_pays_no_link_and_latency_is_paid_per_collective():
    s = _steps(UNLIMITED_STEP)
    assert replay.step_times(s, SLOW, 1, Link(), 2).seconds.tolist() == pytest.approx([0.30])  # the unlimited step
    # 4 workers at 10 ms: each all-reduce pays 2 * 3 * 10 ms = 60 ms, plus 0.5 ms per collective overhead
    t = replay.step_times(s, Link(None, 10.0, 0.5), 4, Link(), 2)
    assert t.modelled.tolist() == pytest.approx([2 * 0.0605])


def test_a_trace_missing_a_ranks_step_is_refused():
    table = traces.to_table(1, [[UNLIMITED_STEP[0], UNLIMITED_STEP[0]], [UNLIMITED_STEP[1]]])
    with pytest.raises(ValueError, match="every step of every rank"):
        replay.steps(table)


def test_a_trace_travels_as_text_and_a_later_attempt_replaces_its_epochs():
    e1, e2 = traces.to_table(1, [[UNLIMITED_STEP[0]]]), traces.to_table(2, [[UNLIMITED_STEP[0]]])
    assert str(traces.decode(traces.encode(e1)).to_pylist()) == str(e1.to_pylist())  # NaN: not measured
    old = traces.decode(traces.encode(e1.drop_columns(["ready"])))  # a trace written before ``ready``
    assert str(old.to_pylist()) == str(e1.to_pylist())
    older = traces.decode(traces.encode(e1.drop_columns(["ready", "micro"])))  # ... and before ``micro``
    assert str(older.to_pylist()) == str(e1.to_pylist()) and older["micro"].to_pylist() == [[]]
    again = traces.to_table(2, [[UNLIMITED_STEP[1]]])
    merged = traces.merged(traces.merged(e1, e2), again)
    assert merged["epoch"].to_pylist() == [1, 2] and merged["backward"].to_pylist() == [0.26, 0.255]


# ---------------------------------------------------------------- replay against live runs

# Links on which the link time dominates a step (about 1.7 s and 1.6 s against about 0.5 s of
# compute on an idle core), so that run-to-run compute noise stays well inside the 10%.
LINKS = {"unlimited": ("unlimited", 0), "bandwidth": (5, 0), "latency": ("unlimited", 400)}


def _trial(bw, lat) -> cfg.TrialSpec:
    return cfg.expand(cfg.parse({
        "name": "replay", "workers": [2], "network": {"bandwidth_mbps": [bw], "latency_ms": [lat]},
        "schedule": {"epochs": 1, "warmup_epochs": 0, "milestones": [], "batch_per_worker": 64},
        "data": {"train_images": 512, "test_images": 64}}))[0]


@pytest.fixture(scope="module")
def live(cifar_dir, tmp_path_factory):
    """The same trial run live on each of LINKS: its spec, its rows, its trace."""
    out = {}
    for name, (bw, lat) in LINKS.items():
        d = tmp_path_factory.mktemp(name)
        t = _trial(bw, lat)
        rows = run_ranks(train_rows, 2, t.model_dump_json(), str(cifar_dir), str(d / "keep"), out=d / "r")
        assert rows[0] == rows[1] or [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]]
        table = pa.concat_tables([traces.read(d / "keep" / f"trace_{r['epoch']}.parquet") for r in rows[0]])
        out[name] = (t, rows[0], table)
    return out


def test_the_live_hook_holds_each_bucket_from_when_every_rank_had_handed_it_over(live):
    t, rows, table = live["bandwidth"]
    link = Link(t.bandwidth_mbps, t.latency_ms)
    for rec in table.to_pylist():
        assert rec["release"] and rec["end"] >= rec["backward"] >= max(rec["release"])
        modelled = [2 * (2 - 1) / 2 * n * 8 / (link.bandwidth_mbps * 1e6) for n in rec["nbytes"]]
        for hand, ready, done, rel, m in zip(rec["handover"], rec["ready"], rec["real_done"], rec["release"], modelled,
                                             strict=True):
            assert hand <= ready  # measured: every rank, this one too, had handed the bucket over
            # the transfer starts then (or at the real end, if that came first); never released before the real end
            assert rel - min(ready, done) >= m - 1e-6 and rel >= done
        # one wire: the last bucket is released no sooner than all transfers after the first one's start
        assert rec["release"][-1] - min(rec["ready"][0], rec["real_done"][0]) >= sum(modelled) - 1e-6
    for row in rows:  # one wire: some collective is held during every modelled transfer, and no longer
        assert row["simulated_delay_seconds"] > 0
        assert row["simulated_hold_seconds"] == pytest.approx(row["simulated_delay_seconds"], rel=0.05)


@pytest.mark.parametrize("target", ["bandwidth", "latency"])
def test_replaying_the_unlimited_trace_predicts_the_live_run_within_10_percent(live, target):
    base, base_rows, table = live["unlimited"]
    t, rows, _ = live[target]
    measured = {r["epoch"]: r["epoch_seconds"] for r in base_rows}
    predicted = replay.epoch_times(replay.steps(table), Link(t.bandwidth_mbps, t.latency_ms), 2, Link(), 2, measured)
    assert [p.epoch for p in predicted] == [r["epoch"] for r in rows]
    for p, r in zip(predicted, rows, strict=True):
        assert p.epoch_seconds == pytest.approx(r["epoch_seconds"], rel=0.10), (target, p, r["epoch_seconds"])
        assert p.simulated_delay_seconds == pytest.approx(r["simulated_delay_seconds"], rel=1e-6)


def _results_folder(folder: Path, live, names) -> Path:
    """A sweep folder as the sweep writes it: a complete trial file and its trace per run."""
    for name in names:
        t, rows, table = live[name]
        rows = [r | {"timestamp": datetime.fromisoformat(r["timestamp"])} for r in rows]
        meta = {results.META_CONFIG: t.model_dump_json(), results.META_STATUS: results.STATUS_COMPLETE}
        results.write_trial(results.trial_path(folder, t.trial_id), results.to_table(rows, meta))
        traces.write(traces.path(folder, t.trial_id), table)
    return folder


def test_predict_writes_every_link_of_the_grid_as_predicted_rows(live, tmp_path):
    folder = _results_folder(tmp_path / "sweep", live, ["unlimited"])
    out = tmp_path / "predicted"
    proc = subprocess.run([sys.executable, "-m", "raybench.predict", str(folder), "--bandwidth-mbps", "5,unlimited",
                           "--latency-ms", "0", "400", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = results.read_results(out)
    assert sorted(rows.trial_id.unique()) == sorted(
        f"resnet20v1_w2_cpu_bw{bw}_lat{lat}_allreduce_s0_pred" for bw in ("5", "inf") for lat in ("0", "400"))
    assert set(rows.source) == {"predicted"} and set(rows.predicted_from) == {live["unlimited"][0].trial_id}
    base = pd.DataFrame(live["unlimited"][1])
    for _, group in rows.groupby("trial_id"):  # accuracy is the measured run's, times are replayed
        assert group.sort_values("epoch").test_top1.tolist() == base.test_top1.tolist()
    same = rows[(rows.bandwidth_mbps.isna()) & (rows.latency_ms == 0)].sort_values("epoch")
    assert same.epoch_seconds.tolist() == pytest.approx(base.epoch_seconds.tolist())
    both = pd.concat([pd.read_parquet(out, schema=results.SCHEMA), pd.read_parquet(folder, schema=results.SCHEMA)])
    assert sorted(both.source.unique()) == ["measured", "predicted"]


def test_validate_reports_the_error_of_every_checkable_prediction(live, tmp_path):
    folder = _results_folder(tmp_path / "sweep", live, list(LINKS))
    proc = subprocess.run([sys.executable, "-m", "raybench.predict", str(folder), "--validate"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "worst epoch-time error" in proc.stdout and "over 6 epochs of 6 predictions" in proc.stdout


def test_the_report_prints_the_error_of_every_checkable_prediction_as_validate_does(live, tmp_path):
    folder = _results_folder(tmp_path / "sweep", live, list(LINKS))
    proc = subprocess.run([sys.executable, "-m", "raybench.predict", str(folder), "--bandwidth-mbps", "5",
                           "--latency-ms", "0", "--out", str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = subprocess.run([sys.executable, "-m", "raybench.report", str(folder), "--out", str(tmp_path / "rep")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    section = report.stdout.split("Prediction error", 1)[1]
    # one line per prediction: the 5 Mbit/s trial predicted from the two others, and predicting them
    assert section.count("resnet20v1_w2_cpu_bw5_lat0_allreduce_s0") == 4
    validate = subprocess.run([sys.executable, "-m", "raybench.predict", str(folder), "--validate"],
                              capture_output=True, text=True, timeout=300)
    summary = validate.stdout.strip().splitlines()[-1]
    assert summary.startswith("worst epoch-time error") and f"note: prediction error: {summary}" in report.stdout
