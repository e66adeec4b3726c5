"""An emulated trial through the real sweep path (issue 13): a 4-worker trial as 4 virtual
workers on 1 process (``max_processes: 1``) by ``sweep.main(... --num-cpus 4)`` on a local Ray of
4 logical CPUs (this machine may have 2): Tune, Train, the writer, the trace. Its rows say
``source = emulated`` and name their trace.

Must-show 1 end to end (the same trial, same seed, also as 4 real DDP workers: the same train
loss) adds some 40-60 s of 4 worker processes on 2 cores, so it runs with RAYBENCH_SLOW_TESTS=1;
tests/test_virtual.py checks the same arithmetic step by step (parameters, batch-norm statistics,
train loss) on real gloo ranks without Ray, always.
"""
import os

import pandas as pd
import pytest

from raybench import results, sweep, traces

from conftest import local_ray, write_sweep

TRIAL = "resnet20v1_w4_cpu_bw1000_lat0.05_allreduce_s0"


@pytest.fixture(scope="module")
def ray_4cpus():
    with local_ray(4):
        yield


def _run(tmp_path, cifar_dir, max_processes) -> pd.DataFrame:
    tmp_path.mkdir()
    f = write_sweep(tmp_path / "emu.yaml", name="emu", workers=[4], max_processes=max_processes,
                    network={"bandwidth_mbps": [1000], "latency_ms": [0.05]},
                    schedule={"batch_per_worker": 32, "warmup_epochs": 0, "milestones": [], "epochs": 2},
                    goal={"time_budget_s": None}, data={"train_images": 256, "test_images": 200}, seed=0)
    out = tmp_path / "results"
    assert sweep.main([str(f), "--num-cpus", "4", "--data", str(cifar_dir), "--results", str(out)]) == 0
    return pd.read_parquet(out / "emu", schema=results.SCHEMA).sort_values("epoch").reset_index(drop=True)


@pytest.fixture(scope="module")
def emulated(cifar_dir, tmp_path_factory, ray_4cpus) -> tuple[pd.DataFrame, object]:
    tmp = tmp_path_factory.mktemp("emulated")
    return _run(tmp / "run", cifar_dir, 1), tmp / "run" / "results" / "emu"


def test_an_emulated_trial_measures_accuracy_and_names_the_trace_of_its_times(emulated):
    rows, folder = emulated
    assert list(rows.trial_id.unique()) == [TRIAL] and list(rows.epoch) == [1, 2]
    assert (rows.source == results.SOURCE_EMULATED).all() and (rows.predicted_from == TRIAL).all()
    for col in ("train_loss", "train_top1", "test_loss", "test_top1"):  # accuracy columns: measured
        assert rows[col].notna().all() and (rows[col] > 0).all(), col
    assert (rows.workers == 4).all() and (rows.global_batch == 128).all()
    # times: the replay at 4 workers of its own trace (1 process running 4 micro-batches per step)
    assert (rows.epoch_seconds > 0).all() and (rows.simulated_delay_seconds > 0).all()
    assert rows.train_seconds.iloc[-1] == pytest.approx(rows.epoch_seconds.sum())
    assert (rows.images_per_second * rows.epoch_seconds).round().tolist() == [256, 256]
    trace = traces.read(traces.path(folder, TRIAL))
    assert set(trace["rank"].to_pylist()) == {0}  # one process
    for micro, backward in zip(trace["micro"].to_pylist(), trace["backward"].to_pylist(), strict=True):
        assert len(micro) == 3 and 0 < micro[0] < micro[1] < micro[2] < backward  # 4 micro-batches, timed
    _, meta = results.read_trial(results.trial_path(folder, TRIAL))
    assert results.trial_config(meta)["processes"] == 1 and meta["raybench.status"] == "complete"


@pytest.mark.skipif(os.environ.get("RAYBENCH_SLOW_TESTS") != "1", reason="set RAYBENCH_SLOW_TESTS=1 (40-60 s)")
def test_the_emulated_trial_trains_as_4_real_workers(emulated, cifar_dir, tmp_path):
    rows, _ = emulated
    real = _run(tmp_path / "real", cifar_dir, None)
    assert (real.source == results.SOURCE_MEASURED).all() and real.predicted_from.isna().all()
    assert list(real.trial_id.unique()) == [TRIAL] and list(real.epoch) == [1, 2]
    # the same arithmetic up to float32 summation order (see tests/test_virtual.py)
    assert rows.train_loss.tolist() == pytest.approx(real.train_loss.tolist(), rel=1e-4)
    assert rows.test_loss.tolist() == pytest.approx(real.test_loss.tolist(), rel=1e-2)


def test_a_sweep_resumed_on_a_machine_of_another_size_keeps_its_complete_emulated_trials(tmp_path):
    """A trial that ran as virtual workers on 2 processes, where this machine (or max_processes) would
    run it on 4: complete, it is kept (the same weights either way); unfinished, the sweep refuses to
    continue it, naming both process counts, since its checkpoint holds each of 2 processes' state."""
    from raybench.spec import config

    import rows

    now = rows.trial(workers=[4], schedule=rows.SWEEP["schedule"] | {"batch_per_worker": 8})
    ran = now.model_copy(update={"processes": 2})
    rows.write(tmp_path, ran, rows.epoch_rows(ran, [0.3, 0.4, 0.5, 0.6]))
    assert sweep._earlier_results([now], tmp_path) == [now.trial_id]

    rows.write(tmp_path, ran, rows.epoch_rows(ran, [0.3]), status="running")
    with pytest.raises(config.ConfigError) as e:
        sweep._earlier_results([now], tmp_path)
    assert f"trial {now.trial_id} started on 2 process(es)" in str(e.value)
    assert "continue it on 4 process(es)" in str(e.value) and "move the file away" in str(e.value)

    other = ran.model_copy(update={"seed": 1})  # any other difference is still another configuration
    rows.write(tmp_path, other.model_copy(update={"trial_id": now.trial_id}), rows.epoch_rows(ran, [0.3]))
    with pytest.raises(config.ConfigError, match="differs in processes, seed"):
        sweep._earlier_results([now], tmp_path)
