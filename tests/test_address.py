"""`--address` joins a Ray cluster started apart (`ray start --head`), and the sweep runs there."""
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import write_sweep

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    """A real Ray head node (its own processes, not in-process) with its own auth token, stopped afterwards."""
    port = free_port()
    temp = Path("/tmp") / f"rb-head-{os.getpid()}"  # Ray's socket paths must stay short
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--temp-dir={temp}", "--disable-usage-stats"], env=env, check=True, capture_output=True,
                   timeout=120)
    try:
        yield _gcs_address(temp, port), env
    finally:
        ours = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        for p in ours:  # this head's processes only, not every Ray on the machine as `ray stop` would
            p.kill()
        psutil.wait_procs(ours, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _gcs_address(temp: Path, port: int) -> str:
    current = temp / "ray_current_cluster"
    return current.read_text().strip() if current.exists() else f"127.0.0.1:{port}"


def test_sweep_runs_on_a_cluster_started_with_ray_start(head, cifar_dir, tmp_path):
    """One trial (2 workers, so DDP between two processes of that cluster) of one epoch: joining is
    what is checked, not the grid."""
    address, env = head
    env = env | {"RAYBENCH_DATA": str(cifar_dir)}
    f = write_sweep(tmp_path / "joined.yaml", name="joined", workers=[2], schedule={"epochs": 1},
                    goal={"time_budget_s": None})
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(f), "--smoke", "--address", address,
                           "--results", str(tmp_path / "r")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr  # it joined, it did not start one
    assert "Connecting to existing Ray cluster" in proc.stdout + proc.stderr
    df = pd.read_parquet(tmp_path / "r" / "joined")
    assert sorted(zip(df.workers, df.epoch, strict=True)) == [(2, 1)]
