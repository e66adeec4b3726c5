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


def write_sweep(path: Path, **fields) -> Path:
    """A sweep YAML file from keyword fields (nested dicts allowed)."""
    import yaml

    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path
