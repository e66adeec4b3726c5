"""Failures and interruptions, through the real CLI in a subprocess with its own local Ray."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from raybench import results

from conftest import write_sweep


def start(args, tmp_path, cifar_dir) -> subprocess.Popen:
    env = os.environ | {"RAYBENCH_DATA": str(cifar_dir), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "cli.log", "w")
    return subprocess.Popen([sys.executable, "-m", "raybench.sweep", *args, "--results", str(tmp_path / "r")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(cond, proc, timeout=300.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        found = cond()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def rows_of(folder: Path) -> dict[str, list[dict]]:
    out = {}
    for path in folder.glob("*.parquet"):
        try:
            out[path.stem] = results.read_trial(path)[0]
        except Exception:  # pragma: no cover - files are renamed into place, never half-written
            raise
    return out


def ray_descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def still_running(procs: list[psutil.Process], timeout: float = 60.0) -> list[str]:
    """Of ``procs`` (taken while they ran), those still alive after up to ``timeout`` s (a zombie,
    exited but not yet reaped, counts as gone); psutil tells a reused pid from the original process."""
    def alive():
        out = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
            except psutil.NoSuchProcess:
                pass
        return out

    end = time.time() + timeout
    while (left := alive()) and time.time() < end:
        time.sleep(0.5)
    return left


def continues(rows: list[dict], kept: list[dict]) -> None:
    """``rows`` (the trial's file at the end) begin with ``kept`` unchanged (the rows up to the
    checkpoint the restart loaded), and every later epoch's train_seconds continues the count: the
    previous row's plus its own epoch_seconds. A restart from scratch would count from 0 again (or
    replace the kept rows)."""
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    fields = ("epoch", "train_seconds", "epoch_seconds", "test_top1", "timestamp", "run_id")
    assert [{k: r[k] for k in fields} for r in rows[:len(kept)]] == [{k: r[k] for k in fields} for r in kept]
    for prev, row in zip(rows[len(kept) - 1:], rows[len(kept):], strict=False):
        assert row["train_seconds"] == pytest.approx(prev["train_seconds"] + row["epoch_seconds"], rel=1e-12), \
            (prev, row)


def test_a_killed_worker_restarts_from_the_checkpoint(cifar_dir, tmp_path):
    f = write_sweep(tmp_path / "fail.yaml", name="fail", workers=[2],
                    schedule={"batch_per_worker": 64, "lr_per_256": 0.2, "warmup_epochs": 0, "milestones": [],
                              "epochs": 3},
                    data={"train_images": 3072, "test_images": 512}, goal={"time_budget_s": None})
    proc = start([str(f), "--max-failures", "1"], tmp_path, cifar_dir)
    try:
        folder = tmp_path / "r" / "fail"
        wait_for(lambda: any(len(r) >= 1 for r in rows_of(folder).values()), proc, what="epoch 1's row")
        workers = [p for p in ray_descendants(proc) if "RayTrainWorker" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in ray_descendants(proc)]
        (at_kill,) = rows_of(folder).values()  # the rows, and so the checkpoint, when the worker dies
        os.kill(workers[1].pid, signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        proc.kill()
    (rows,) = rows_of(folder).values()
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # every epoch once, none twice
    assert "RETRY" in (tmp_path / "cli.log").read_text()  # Ray Train saw the failure and restarted
    # the epoch after the kill continued from epoch 1's checkpoint: a fresh start would repeat epoch 1's
    # losses and chance accuracy
    assert rows[1]["train_loss"] < rows[0]["train_loss"] and rows[1]["test_loss"] < rows[0]["test_loss"]
    assert rows[2]["test_top1"] > 0.15
    assert rows[2]["train_seconds"] > rows[1]["train_seconds"] > rows[0]["train_seconds"]
    # ... and so did its clock: train_seconds after the kill continues from the checkpointed value
    assert 1 <= len(at_kill) < 3, at_kill
    continues(rows, at_kill)


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(cifar_dir, tmp_path):
    epochs = 4  # trial 2 is interrupted after its first: Ray's shutdown cannot finish the rest meanwhile
    f = write_sweep(tmp_path / "resume.yaml", name="resume", workers=[2], seed=[0, 1],
                    schedule={"batch_per_worker": 64, "warmup_epochs": 0, "milestones": [], "epochs": epochs},
                    data={"train_images": 1024, "test_images": 256}, goal={"time_budget_s": None})
    folder = tmp_path / "r" / "resume"

    def one_complete_one_started():
        """(finished trial's path, the other trial's path and rows) once one trial is complete and the
        other has written its first epoch (and so has a checkpoint to continue from)."""
        done, started = None, None
        for path in folder.glob("*.parquet"):
            rows, meta = results.read_trial(path)
            if meta["raybench.status"] == results.STATUS_COMPLETE:
                done = path
            elif rows:
                started = (path, rows)
        return (done, *started) if done and started else None

    proc = start([str(f)], tmp_path, cifar_dir)
    try:
        finished, second, second_rows = wait_for(one_complete_one_started, proc,
                                                 what="one trial to finish and the other's first epoch")
        tree = [psutil.Process(proc.pid), *ray_descendants(proc)]  # the CLI and its Ray, while they run
        commands = " | ".join(" ".join(p.cmdline()) for p in tree)
        before = finished.read_bytes()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        proc.kill()
    log = (tmp_path / "cli.log").read_text()
    assert "rerun the same command" in log
    assert "raylet" in commands and "gcs_server" in commands, commands  # Ray's processes were in the tree
    assert still_running(tree) == []  # no stray Ray processes
    assert 1 <= len(second_rows) < epochs, second_rows

    proc = start([str(f), "--resume"], tmp_path, cifar_dir)
    try:
        assert proc.wait(timeout=600) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        proc.kill()
    assert "1 trial(s) already complete" in (tmp_path / "cli.log").read_text()
    assert finished.read_bytes() == before  # the finished trial was not run again
    everything = rows_of(folder)
    assert len(everything) == 2
    for trial_id, rows in everything.items():
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)), trial_id
    # The interrupted trial continued from its checkpoint: the rows it had written as they were, and
    # the resumed sweep's epochs (another run id) counting train_seconds on from them.
    resumed = everything[second.stem]
    continues(resumed, second_rows)
    assert resumed[-1]["run_id"] != second_rows[0]["run_id"], "the resumed sweep trained no epoch of it"
    df = results.read_results(folder)
    assert len(df) == 2 * epochs and not df.duplicated(["trial_id", "epoch"]).any()
