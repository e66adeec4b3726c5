"""Shared fixtures: the offline CIFAR-10 copy and one local Ray session per test module."""
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREPARE = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "prepare.py"
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def _prepared(d: Path) -> bool:
    return (d / "cifar-10-batches-py" / "test_batch").is_file()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """A folder holding cifar-10-batches-py/: $RAYBENCH_DATA, else the offline JPEG copy prepared once."""
    env = os.environ.get("RAYBENCH_DATA")
    if env and _prepared(Path(env)):
        return Path(env)
    cache = Path.home() / ".cache" / "raybench-jpeg"
    if not _prepared(cache):
        if not PREPARE.is_file():
            pytest.skip("no CIFAR-10 copy: set RAYBENCH_DATA to a folder holding cifar-10-batches-py/")
        subprocess.run([sys.executable, str(PREPARE), str(cache)], check=True)
    return cache


@contextmanager
def local_ray(num_cpus: int):
    """A real local Ray with ``num_cpus`` logical CPUs, started the way the CLI starts it."""
    import ray

    from raybench.driver import session

    if ray.is_initialized():
        ray.shutdown()
    session.init_ray(None, num_cpus=num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_session():
    """A real local Ray (2 CPUs) for the whole module."""
    with local_ray(2):
        yield


@contextmanager
def one_rank_gloo():
    """A real gloo process group of one rank in this process, for the loop's code outside Ray."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def readme_quick_start() -> list[str]:
    """The two commands of the README's quick start (install and run; the tests), one per line."""
    import re

    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def quickstart_command() -> list[str]:
    """The run half of the README's first command (the install half is what .ci/run does), as argv."""
    cmd = readme_quick_start()[0].split("&&")[-1].split()
    assert cmd[:3] == ["python", "-m", "raybench.sweep"]
    return [sys.executable, *cmd[1:]]


def run_quickstart(flags: list[str], cifar_dir, cwd) -> subprocess.CompletedProcess:
    """The README's quickstart command, exactly, plus ``flags``, in ``cwd``, on the offline copy."""
    env = os.environ | {"RAYBENCH_DATA": str(cifar_dir)}
    proc = subprocess.run([*quickstart_command(), *flags], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def quickstart_smoke(cifar_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The README's quickstart command with --smoke, run once as a user runs it (a subprocess with its
    own local Ray, in a fresh folder): its output, read by the README and console tests, and its
    sweep folder."""
    cwd = tmp_path_factory.mktemp("quickstart")
    return run_quickstart(["--smoke"], cifar_dir, cwd), cwd / "results" / "quickstart"


def write_sweep(path: Path, **fields) -> Path:
    """A sweep YAML file from keyword fields (nested dicts allowed)."""
    import yaml

    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path
