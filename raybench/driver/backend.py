"""Ray Train's torch set-up without torch where nothing trains: the Tune trainable and the Train controller.

Ray's ``TorchTrainer`` and ``TorchConfig`` import torch (about 2 s of CPU per process on a small
machine) in every process that holds them, and the trainable and the controller both do, per trial.
Here the trainer is Train's ``DataParallelTrainer`` with ``TorchBackendConfig``, whose backend runs Ray's
own torch set-up (``ray.train.torch.config``: the same process group, environment, device and shutdown
as ``TorchConfig``'s) on the workers only, importing it there; and the workers' entry point is
``train_worker``, which imports the training code (and torch) when a worker calls it.
``bench/startup.py`` measures the start-up this saves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig

# Start-up timestamps (time.time()) that travel with an attempt's first report, for bench/startup.py: the
# trainable's (``tune.run_trial`` entered) and rank 0's (its process started, the train function entered
# after Ray Train set up the process group, the data in hand, the first collective done). Tune keeps them in
# the trial's result.json; the Parquet writer ignores them.
STARTUP_KEY = "raybench_startup"
DATA_REF_KEY = "data_ref"  # train_loop_config: [the object store reference of the data set's arrays]
SHUTDOWN_TIMEOUT_S = 30


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point: ``driver.train.train_worker``, imported on the worker."""
    from raybench.driver import train

    train.train_worker(config)


@dataclass
class TorchBackendConfig(BackendConfig):
    """What ``TorchConfig`` sets up (``env://`` rendezvous), for ``backend`` gloo or nccl."""

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _LazyTorchBackend

    @property
    def train_func_context(self):
        return _TorchContext

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class _LazyTorchBackend(Backend):
    """``ray.train.torch.config._TorchBackend``'s start and shutdown, with every torch call on the workers."""

    def on_start(self, worker_group, backend_config: TorchBackendConfig) -> None:
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env, addr=addr, port=port)
        ray.get([worker_group.execute_single_async(i, _init_process_group, backend=backend_config.backend,
                                                   world_rank=i, world_size=len(worker_group),
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig) -> None:
        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        try:
            ray.get(futures, timeout=SHUTDOWN_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            pass


def _set_env(addr: str, port: int) -> None:
    import os

    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    _set_torch_distributed_env_vars()  # LOCAL_RANK, RANK, WORLD_SIZE, ... as TorchConfig sets them


def _init_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size,
                               init_method="env://", timeout_s=timeout_s)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class _TorchContext:
    """``TorchConfigContextManager`` (the worker's CUDA device), imported when a worker enters it."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        TorchConfigContextManager().__enter__()

    def __exit__(self, *exc) -> bool:
        return False
