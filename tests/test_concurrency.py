"""Trials do not share hardware unless asked (--concurrency), their files say where each rank ran;
a failed trial says so and runs again; a restarted trial keeps the rows of the attempt that went on;
a worker's bundle must fit one node."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from raybench import results, sweep
from raybench.results import EpochRow
from raybench.spec import config as cfg

import rows as synthetic
from conftest import write_sweep


def _cli(args, tmp_path, cifar_dir) -> subprocess.Popen:
    env = os.environ | {"RAYBENCH_DATA": str(cifar_dir), "PYTHONUNBUFFERED": "1"}
    if (tmp_path / "cli.log").exists():  # keep the earlier run's log
        (tmp_path / "cli.log").rename(tmp_path / f"cli.{len(list(tmp_path.glob('cli*.log')))}.log")
    log = open(tmp_path / "cli.log", "w")
    return subprocess.Popen([sys.executable, "-m", "raybench.sweep", *args, "--results", str(tmp_path / "r")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _log(tmp_path) -> str:
    return (tmp_path / "cli.log").read_text()[-4000:]


def wait_for(cond, proc, timeout=300.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if found := cond():
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- a failed trial (real Ray, the CLI)

def test_a_failed_trial_says_failed_with_its_error_and_a_rerun_completes_it(cifar_dir, tmp_path):
    import psutil

    f = write_sweep(tmp_path / "fails.yaml", name="fails", workers=[1],
                    schedule={"batch_per_worker": 64, "warmup_epochs": 0, "milestones": [], "epochs": 3},
                    data={"train_images": 1024, "test_images": 256}, goal={"time_budget_s": None})
    folder = tmp_path / "r" / "fails"
    proc = _cli([str(f)], tmp_path, cifar_dir)  # --max-failures 0: a dead worker fails the trial
    try:
        wait_for(lambda: list(folder.glob("*.parquet")), proc, what="epoch 1's row")
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RayTrainWorker" in " ".join(p.cmdline())]
        assert len(workers) == 1
        os.kill(workers[0].pid, signal.SIGKILL)
        assert proc.wait(timeout=300) == 1, _log(tmp_path)
    finally:
        proc.kill()
    (path,) = folder.glob("*.parquet")
    rows, meta = results.read_trial(path)
    assert meta["raybench.status"] == results.STATUS_FAILED, meta
    assert 1 <= len(rows) < 3
    error = meta["raybench.error"]
    assert 0 < len(error) <= results.ERROR_CHARS
    assert "WorkerGroupError" in error and "The actor died" in error and "\x1b[" not in error, error
    assert f"trial {path.stem} failed" in _log(tmp_path)

    proc = _cli([str(f), "--resume"], tmp_path, cifar_dir)  # not complete: run again
    try:
        assert proc.wait(timeout=600) == 0, _log(tmp_path)
    finally:
        proc.kill()
    rows, meta = results.read_trial(path)
    assert meta["raybench.status"] == results.STATUS_COMPLETE and "raybench.error" not in meta
    assert [r["epoch"] for r in rows] == [1, 2, 3]


# ---------------------------------------------------------------- one trial at a time (real Ray, 2 CPUs)

def _span(path: Path) -> tuple:
    """A trial's [start of its first epoch's training, end of its last epoch's evaluation]."""
    rows, _ = results.read_trial(path)
    first, last = rows[0], rows[-1]
    return first["timestamp"] - timedelta(seconds=first["epoch_seconds"] + first["eval_seconds"]), last["timestamp"]


def _pair_sweep(tmp_path: Path, cifar_dir, *flags) -> list[str]:
    f = write_sweep(tmp_path / "pair.yaml", name="pair", workers=[1], seed=[0, 1],
                    schedule={"warmup_epochs": 0, "milestones": [], "epochs": 2}, goal={"time_budget_s": None})
    return [str(f), "--smoke", "--data", str(cifar_dir), "--results", str(tmp_path), *flags]


def _two_trials(tmp_path, cifar_dir, *flags) -> tuple[list[tuple], list[dict[str, str]]]:
    assert sweep.main(_pair_sweep(tmp_path, cifar_dir, *flags)) == 0
    paths = sorted((tmp_path / "pair").glob("*.parquet"))
    assert len(paths) == 2
    return sorted(_span(p) for p in paths), [results.read_trial(p)[1] for p in paths]


@pytest.fixture(scope="module")
def one_at_a_time(cifar_dir, tmp_path_factory, ray_session):
    """The two-trial sweep run once with the default --concurrency: its spans, metadata and stderr
    (taken now), and its folder, whose finished trials the lost-row test reruns."""
    tmp = tmp_path_factory.mktemp("default")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        spans, metas = _two_trials(tmp, cifar_dir)
    return tmp, spans, metas, err.getvalue()


def _check_placement(meta: dict[str, str], concurrency: int) -> None:
    import ray

    assert meta["raybench.concurrency"] == str(concurrency)
    (rank,) = json.loads(meta["raybench.placement"])  # one worker: one rank
    assert rank["rank"] == 0 and rank["from_epoch"] == 1
    assert rank["node_id"] in {n["NodeID"] for n in ray.nodes()}
    assert rank["node_ip"] == ray.util.get_node_ip_address()  # one machine: the same address
    assert rank["device"] and set(rank["cpus"]) <= os.sched_getaffinity(0) and rank["cpus"]


def test_trials_run_one_at_a_time_by_default(one_at_a_time):
    _, spans, metas, err = one_at_a_time
    (a_start, a_end), (b_start, b_end) = spans
    assert a_end < b_start, "the second trial trained while the first was running"
    assert "warning" not in err
    for meta in metas:
        _check_placement(meta, 1)


def test_a_row_whose_checkpoint_train_kept_is_not_lost_when_the_driver_stopped_before_writing_it(
        cifar_dir, one_at_a_time):
    """Ctrl-C can stop the driver after Train kept epoch 2's checkpoint but before epoch 2's row reached
    the writer; the rerun then continues from that checkpoint with nothing left to train. Made here
    exactly: a finished trial's file (of the default-concurrency sweep above) cut back to epoch 1,
    status running; the rerun runs that trial only."""
    tmp, *_ = one_at_a_time
    argv = _pair_sweep(tmp, cifar_dir)
    path, other = sorted((tmp / "pair").glob("*.parquet"))
    rows, meta = results.read_trial(path)
    assert [r["epoch"] for r in rows] == [1, 2]
    untouched = other.read_bytes()
    cut = {k.encode(): v for k, v in meta.items()} | {results.META_STATUS: results.STATUS_RUNNING}
    results.write_trial(path, results.to_table(rows[:1], cut))
    assert sweep.main(argv) == 0
    again, meta = results.read_trial(path)
    assert again == rows and meta["raybench.status"] == results.STATUS_COMPLETE  # epoch 2's row, as it was
    assert other.read_bytes() == untouched  # complete: not run again


def test_concurrency_2_runs_two_trials_together_and_says_so(cifar_dir, tmp_path, ray_session, capsys):
    spans, metas = _two_trials(tmp_path, cifar_dir, "--concurrency", "2")
    (a_start, a_end), (b_start, b_end) = spans
    assert b_start < a_end, "with --concurrency 2 the two trials should have trained at the same time"
    assert "warning: --concurrency 2" in capsys.readouterr().err
    for meta in metas:
        _check_placement(meta, 2)


def test_concurrency_must_be_an_int_of_1_or_more(tmp_path, capsys):
    f = write_sweep(tmp_path / "c.yaml", name="c")
    argv = [str(f), "--dry-run", "--results", str(tmp_path / "r"), "--concurrency"]
    assert sweep.main(argv + ["0"]) == 2  # exit 2, before Ray starts
    assert "error: --concurrency 0: must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sweep.main(argv + ["two"])
    assert e.value.code == 2 and "argument --concurrency: invalid int value: 'two'" in capsys.readouterr().err


# ---------------------------------------------------------------- the writer, as Tune calls it

def _attempt(spec, epochs, run_id, placement_node):
    """What one attempt reports: its rows from ``epochs[0]`` on, the placement with the first."""
    out = []
    for row in synthetic.epoch_rows(spec, [0.1 * e for e in range(1, epochs[-1] + 1)], run_id=run_id)[
            epochs[0] - 1:]:
        placement = [{"rank": 0, "node_id": placement_node}] if not out else None
        out.append(results.to_metrics(EpochRow(**row), placement) | {"trial_id": "tune-id", "timestamp": 0})
    return out


def test_rows_of_the_attempt_that_continued_replace_those_of_the_attempt_that_died(tmp_path):
    from raybench.driver.writer import ParquetWriter

    spec = synthetic.trial()
    trial = SimpleNamespace(config={"trial": spec.model_dump(mode="json")})  # what Tune hands the callback
    writer = ParquetWriter(tmp_path, "cifar10-local", concurrency=1)
    for result in _attempt(spec, [1, 2, 3], "died", "node-a"):  # reported 1..3, then a worker died
        writer.on_trial_result(0, [trial], trial, result)
    for result in _attempt(spec, [2, 3, 4], "continued", "node-b"):  # restarted from epoch 1's checkpoint
        writer.on_trial_result(0, [trial], trial, result)
    writer.on_trial_complete(0, [trial], trial)
    rows, meta = results.read_trial(results.trial_path(tmp_path, spec.trial_id))
    assert [(r["epoch"], r["run_id"]) for r in rows] == [(1, "died"), (2, "continued"), (3, "continued"),
                                                         (4, "continued")]
    assert json.loads(meta["raybench.placement"]) == [{"rank": 0, "node_id": "node-a", "from_epoch": 1},
                                                      {"rank": 0, "node_id": "node-b", "from_epoch": 2}]
    assert meta["raybench.status"] == "complete" and meta["raybench.concurrency"] == "1"


def test_a_failed_trial_is_written_failed_with_its_error_cut_to_size(tmp_path):
    from raybench.driver.writer import ParquetWriter

    spec = synthetic.trial()
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1\n" + "traceback line\n" * 1000 + "RuntimeError: the real cause\n")
    trial = SimpleNamespace(config={"trial": spec.model_dump(mode="json")}, error_file=str(error_file))
    writer = ParquetWriter(tmp_path, "cifar10-local", concurrency=3)
    for result in _attempt(spec, [1, 2], "first", "node-a"):
        writer.on_trial_result(0, [trial], trial, result)
    writer.on_trial_error(0, [trial], trial)
    path = results.trial_path(tmp_path, spec.trial_id)
    rows, meta = results.read_trial(path)
    assert meta["raybench.status"] == "failed" and len(rows) == 2
    assert meta["raybench.error"].startswith("Failure # 1") and meta["raybench.error"].endswith("the real cause")
    assert len(meta["raybench.error"]) <= results.ERROR_CHARS and "characters left out" in meta["raybench.error"]
    assert sweep._earlier_results([spec], tmp_path) == []  # not complete: the next run runs it again

    rerun = ParquetWriter(tmp_path, "cifar10-local", concurrency=1)  # a rerun continues from epoch 2's checkpoint
    for result in _attempt(spec, [3, 4], "second", "node-b"):
        rerun.on_trial_result(0, [trial], trial, result)
    rerun.on_trial_complete(0, [trial], trial)
    rows, meta = results.read_trial(path)
    assert [r["run_id"] for r in rows] == ["first", "first", "second", "second"]
    assert meta["raybench.status"] == "complete" and "raybench.error" not in meta
    assert meta["raybench.concurrency"] == "3"  # the most trials that ran at once while its rows were measured
    assert [p["from_epoch"] for p in json.loads(meta["raybench.placement"])] == [1, 3]
    assert sweep._earlier_results([spec], tmp_path) == [spec.trial_id]


# ---------------------------------------------------------------- fits: each worker's bundle on one node

def test_a_bundle_that_fits_the_total_but_no_node_is_rejected():
    (trial,) = cfg.expand(cfg.parse({"name": "big", "workers": [1], "cpus_per_worker": 6}))
    two_nodes = [{"CPU": 4.0, "GPU": 0.0}, {"CPU": 4.0, "GPU": 0.0}]  # 8 CPUs in all, 4 on each
    with pytest.raises(cfg.ConfigError) as e:
        sweep.check_fits([trial], two_nodes, "the cluster at x:6379")
    msg = str(e.value)
    assert msg.startswith(f"trial {trial.trial_id}: one worker's bundle {{CPU: 6}} fits no single node")
    assert "the largest has {CPU: 4}" in msg
    sweep.check_fits([trial], [{"CPU": 8.0, "GPU": 0.0}], "one node")  # the same 8 CPUs on one node hold it


def test_workers_must_fit_the_nodes_bundle_by_bundle():
    (trial,) = cfg.expand(cfg.parse({"name": "w", "workers": [3], "cpus_per_worker": 2}))
    with pytest.raises(cfg.ConfigError, match="hold only 2 such bundles"):  # 6 CPUs of 6, but 2 + 2 + 2 on 3 + 3
        sweep.check_fits([trial], [{"CPU": 3.0, "GPU": 0.0}, {"CPU": 3.0, "GPU": 0.0}], "c")
    (gpu,) = cfg.expand(cfg.parse({"name": "g", "workers": [4], "hardware": ["gpu"], "gpus_per_worker": 0.5}))
    sweep.check_fits([gpu], [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}], "c")  # two workers per GPU
    (whole,) = cfg.expand(cfg.parse({"name": "g", "workers": [1], "hardware": ["gpu"], "gpus_per_worker": 2}))
    with pytest.raises(cfg.ConfigError, match=r"bundle \{CPU: 1, GPU: 2\} fits no single node"):
        sweep.check_fits([whole], [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}], "c")


def test_a_shared_gpu_asks_ray_for_a_fraction_and_uses_gloo():
    from raybench.driver import tune

    def trial(hardware, share):
        return cfg.expand(cfg.parse({"name": "g", "hardware": [hardware], "gpus_per_worker": share}))[0]

    assert tune.resources_per_worker(trial("gpu", 0.5)) == {"CPU": 1.0, "GPU": 0.5}
    assert tune.backend(trial("gpu", 0.5)) == "gloo"  # NCCL refuses two ranks on one device
    assert tune.backend(trial("gpu", 1)) == "nccl" and tune.backend(trial("cpu", 1)) == "gloo"
    assert tune.resources_per_worker(trial("cpu", 0.5)) == {"CPU": 1.0}
