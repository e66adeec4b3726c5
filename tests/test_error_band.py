"""The report's error band (issue 13, item 5): the prediction error measured where a measured trial
can be predicted from another trial of its configuration, drawn as a band of +-(worst |error|)
around emulated and predicted points, and said plainly to be unmeasured where nothing could be
checked. Synthetic results folders (tests/rows.py) with hand-made step traces: no torch, no Ray."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raybench import emulation, replay, report, results, traces
from raybench.analysis import page, plots, prediction
from raybench.worker.comm.link import Link

import rows

LINK = Link(1000, 0.05)
IMAGES, BATCH = 1024, 128  # 8, 4 and 2 steps an epoch at 1, 2 and 4 workers
# A real worker's step: one 1.0 s micro-batch (its two buckets handed over at 0.9 and 0.95 s), the
# real collective ending at 1.0 s, backward returning at 1.05 s, the optimizer until 1.2 s.
ONE = dict(handover=[0.9, 0.95], real_done=[1.0, 1.0], release=[1.0, 1.0], backward=1.05, end=1.2)


def _record(t0: float) -> dict:
    """ONE, ``t0`` later (a process that first ran earlier micro-batches)."""
    return {"handover": [t0 + x for x in ONE["handover"]], "real_done": [t0 + x for x in ONE["real_done"]],
            "release": [t0 + x for x in ONE["release"]], "collectives": [1, 1], "nbytes": [400_000, 200_000],
            "backward": t0 + ONE["backward"], "end": t0 + ONE["end"], "avg_collectives": 0, "avg_nbytes": 0,
            "avg_real": 0.0}


def _trace(procs: int, virtual: int, steps: int, epochs: int = 2):
    import pyarrow as pa

    return pa.concat_tables([traces.to_table(e, [[_record(virtual - 1.0) for _ in range(steps)]
                                                 for _ in range(procs)]) for e in range(1, epochs + 1)])


ACCURACY = {1: [0.55, 0.6], 2: [0.3, 0.6], 4: [0.3, 0.6]}  # the target, 50%: epoch 1 at 1 worker, else 2


def checked_folder(folder, measured=((10.0, 10.4), (5.5, 5.0))):
    """A sweep folder as the sweep writes it: 1 and 2 workers measured (epoch times ``measured``),
    4 workers emulated (2 processes x 2 virtual workers), each with its step trace; accuracy as
    ACCURACY (a smaller global batch reaches the target sooner)."""
    specs = rows.trials(workers=[1, 2, 4], max_processes=2, data={"train_images": IMAGES},
                        network={"bandwidth_mbps": [1000], "latency_ms": [0.05]})
    for spec, seconds in zip(specs[:2], measured, strict=True):
        rows.write(folder, spec, rows.epoch_rows(spec, ACCURACY[spec.workers], epoch_seconds=list(seconds)))
        traces.write(traces.path(folder, spec.trial_id), _trace(spec.workers, 1, IMAGES // spec.global_batch))
    emu = specs[2]
    assert (emu.procs, emu.virtual) == (2, 2)
    table = _trace(emu.procs, emu.virtual, IMAGES // emu.global_batch)
    own = {e: 2.5 for e in (1, 2)}
    times = emulation.epoch_times(replay.steps(table), emu.virtual, LINK, emu.workers, own)
    emulated = rows.epoch_rows(emu, ACCURACY[4], epoch_seconds=[t.epoch_seconds for t in times])
    rows.write(folder, emu, [r | {"source": results.SOURCE_EMULATED, "predicted_from": emu.trial_id} for r in emulated])
    traces.write(traces.path(folder, emu.trial_id), table)
    return specs


def test_the_error_band_is_the_worst_error_of_the_checked_predictions():
    checks = pd.DataFrame({"predicted_from": ["a", "a", "b", "b", "c"], "trial_id": ["m1", "m1", "m1", "m1", "m2"],
                           "epoch": [1, 2, 1, 2, 1], "error": [0.05, -0.12, 0.02, 0.03, -0.01],
                           "tta_error": [0.04, 0.04, None, None, -0.07]})
    band = prediction.error_band(checks)
    assert (band.epoch, band.tta, band.epochs, band.pairs, band.trials, band.tta_pairs) == (0.12, 0.07, 5, 3, 2, 2)
    assert band.time_to_target == 0.12  # a time to target is a sum of epoch times: the epochs' worst bounds it
    assert band.text().startswith("worst epoch-time error 12.0% over 5 epochs of 3 predictions of 2 measured trials")
    assert "worst time-to-target error 7.0% over 2 predictions where both reached the target" in band.text()
    none = prediction.error_band(checks.iloc[0:0])
    assert none.epoch is None and none.time_to_target is None and none.text().startswith("unmeasured")


def test_only_measured_trials_are_the_yardstick(tmp_path):
    """The 4-worker trial is emulated: its trace predicts the measured ones, but its own times are
    predictions, so no prediction is checked against them."""
    specs = checked_folder(tmp_path)
    checks = prediction.checks_of(results.read_trials(tmp_path))
    ids = [s.trial_id for s in specs]
    assert sorted(set(zip(checks["predicted_from"], checks["trial_id"], strict=True))) == sorted(
        [(ids[1], ids[0]), (ids[2], ids[0]), (ids[0], ids[1]), (ids[2], ids[1])])
    assert len(checks) == 4 * 2  # two epochs each


def test_the_report_draws_the_band_of_the_worst_measured_error_and_says_which(tmp_path, capsys):
    specs = checked_folder(tmp_path)
    found, _ = prediction.measured_trials(tmp_path)
    by_id = {m.spec.trial_id: m for m in found}
    worst, tta = 0.0, 0.0  # by hand: every measured trial predicted from the other two (the replay engine)
    for dst in specs[:2]:
        measured = by_id[dst.trial_id].rows
        hit = ACCURACY[dst.workers].index(0.6 if dst.workers > 1 else 0.55)  # the measured trial's target epoch
        for src in specs:
            if src is not dst:
                _, pred = prediction.predict(by_id[src.trial_id], LINK, dst.workers, "t")
                worst = max([worst] + [abs(p["epoch_seconds"] / m["epoch_seconds"] - 1)
                                       for p, m in zip(pred, measured, strict=True)])
                # the time to target predicted is the predicted times to the epoch the measured trial
                # reached it, not to the epoch another worker count's accuracy reached it
                tta = max(tta, abs(pred[hit]["train_seconds"] / measured[hit]["train_seconds"] - 1))
    assert worst > 0.05  # the hand-set measured times are not what the traces replay to
    assert tta <= worst  # a sum of epoch times: its error is at most the epochs' worst

    rep = page.build(results.load(tmp_path), checks=prediction.checks_of(results.read_trials(tmp_path)))
    (note,) = [n for n in rep.notes if n.startswith("prediction error")]
    assert f"worst epoch-time error {worst:.1%} over 8 epochs of 4 predictions of 2 measured trials" in note
    assert f"worst time-to-target error {tta:.1%}" in note
    caption = dict((name, cap) for name, cap, _ in rep.figures)["tta_vs_workers.png"]
    assert f"\u00b1{worst:.1%} on time per epoch" in caption
    assert any(title.startswith("Prediction error") for title, _ in rep.tables)

    res = results.load(tmp_path)
    fig = plots.plot_time_vs_workers(res.rows, {k: 0.5 for k in res.by_key}, prediction.error_band(
        prediction.checks_of(results.read_trials(tmp_path))))
    per_epoch = res.rows[res.rows["workers"] == 4]["epoch_seconds"].mean()
    ax_t, ax_e = fig.axes[:2]
    (bar,) = [c for c in ax_e.collections if c.get_gid() == plots.BAND_GID]  # one emulated point: a bar
    (seg,) = bar.get_segments()
    assert sorted(seg[:, 1]) == pytest.approx([per_epoch * (1 - worst), per_epoch * (1 + worst)])
    assert [c for c in ax_t.collections if c.get_gid() == plots.BAND_GID]

    # the CLI: the same note on stdout as `predict --validate` prints
    assert report.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"note: prediction error: worst epoch-time error {worst:.1%}" in out
    from raybench import predict
    assert predict.main([str(tmp_path), "--validate"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == note.removeprefix("prediction error: ")


def _emulated_sweep(folder):
    specs = rows.scaling_sweep(folder, workers=(1, 2, 4, 16, 64))
    for spec in specs[2:]:
        got, _ = results.read_trial(results.trial_path(folder, spec.trial_id))
        rows.write(folder, spec, [r | {"source": results.SOURCE_EMULATED, "predicted_from": spec.trial_id}
                                  for r in got])
    return specs


def test_the_band_spans_plus_minus_the_error_around_every_emulated_point(tmp_path):
    specs = _emulated_sweep(tmp_path)
    res = results.load(tmp_path)
    targets = {(s.sweep, s.trial_id): 0.5 for s in specs}
    band = prediction.ErrorBand(epoch=0.08, tta=0.03, epochs=4, pairs=2, trials=2, tta_pairs=2)
    fig = plots.plot_time_vs_workers(res.rows, targets, band)
    ax_t, ax_e = fig.axes[:2]
    for ax, col in ((ax_e, "epoch_seconds"), (ax_t, "train_seconds")):
        (poly,) = [c for c in ax.collections if c.get_gid() == plots.BAND_GID]
        xy = np.concatenate([p.vertices for p in poly.get_paths()])
        for w in (4, 16, 64):  # the emulated points, and only they
            g = res.rows[res.rows["workers"] == w]
            y = g[col].mean() if col == "epoch_seconds" else g.loc[g["test_top1"] >= 0.5, col].min()
            at = xy[np.isclose(xy[:, 0], w), 1]
            assert (at.min(), at.max()) == pytest.approx((0.92 * y, 1.08 * y)), (col, w)
        assert xy[:, 0].min() == 4 and xy[:, 0].max() == 64
    scal = __import__("raybench.analysis.tables", fromlist=["x"]).scaling_table(res.rows, targets)
    fig = plots.plot_scaling(scal, res.rows, band)
    polys = [c for c in fig.axes[0].collections if c.get_gid() == plots.BAND_GID]
    assert len(polys) == 2  # time to target and time per epoch, the emulated points of each
    s64 = scal[(scal["workers"] == 64) & (scal["metric"] == "time per epoch")]["speedup"].iloc[0]
    xy = np.concatenate([p.vertices for c in polys for p in c.get_paths()])
    at = xy[np.isclose(xy[:, 0], 64), 1]
    assert at.min() == pytest.approx(s64 / 1.08) and at.max() >= s64 / 0.92 - 1e-9


def test_where_nothing_was_checked_the_error_is_unmeasured_and_no_band_is_drawn(tmp_path, capsys):
    _emulated_sweep(tmp_path)  # no step traces: no trial can be predicted from another
    assert report.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "note: prediction error: unmeasured: no measured trial could be predicted" in out
    assert "Prediction error:" not in out  # no table
    page_html = (tmp_path / "o" / "index.html").read_text()
    assert "prediction error unmeasured, so no error band" in page_html
    rep = page.build(results.load(tmp_path), checks=None)
    fig = plots.plot_time_vs_workers(rep_rows := results.load(tmp_path).rows, {}, prediction.error_band(
        pd.DataFrame()))
    assert not [c for ax in fig.axes for c in ax.collections if c.get_gid() == plots.BAND_GID]
    assert any("error unmeasured" in t.get_text() for t in fig.axes[1].texts) and len(rep_rows)
    assert any("unmeasured" in n for n in rep.notes)


def test_a_sweep_without_emulated_or_predicted_points_has_no_band_note(tmp_path, capsys):
    rows.scaling_sweep(tmp_path, workers=(1, 2))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert "prediction error" not in capsys.readouterr().out


def test_the_report_reads_each_trial_file_once(tmp_path, monkeypatch):
    """The rows, the metadata and the prediction checks come from one read of each file: one consistent view
    while a running sweep rewrites them, and a third of the reading on a large sweep."""
    checked_folder(tmp_path)
    opened = []
    read = results._read_table
    monkeypatch.setattr(results, "_read_table", lambda fs, p: opened.append(p) or read(fs, p))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    trial_files = [p for p in opened if f"/{traces.TRACE_DIR}/" not in p]
    assert len(trial_files) == 3 and len(set(trial_files)) == 3, opened  # 1, 2 and 4 workers, once each
    assert len(opened) == 6 and len(set(opened)) == 6, opened  # and each one's step trace, once
