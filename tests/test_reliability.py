"""Failures and interruptions, through the real CLI in a subprocess with its own local Ray."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

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


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(cifar_dir, tmp_path):
    f = write_sweep(tmp_path / "resume.yaml", name="resume", workers=[2], seed=[0, 1],
                    schedule={"batch_per_worker": 64, "warmup_epochs": 0, "milestones": [], "epochs": 2},
                    data={"train_images": 1024, "test_images": 256}, goal={"time_budget_s": None})
    folder = tmp_path / "r" / "resume"

    def one_complete():
        for path in folder.glob("*.parquet"):
            if results.read_trial(path)[1]["raybench.status"] == results.STATUS_COMPLETE:
                return path
        return None

    proc = start([str(f)], tmp_path, cifar_dir)
    try:
        finished = wait_for(one_complete, proc, what="the first trial to finish")
        before = finished.read_bytes()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        proc.kill()
    log = (tmp_path / "cli.log").read_text()
    assert "rerun the same command" in log
    time.sleep(2)
    assert not ray_descendants(proc)  # no stray Ray processes

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
        assert [r["epoch"] for r in rows] == [1, 2], trial_id
    df = results.read_results(folder)
    assert len(df) == 4 and not df.duplicated(["trial_id", "epoch"]).any()
