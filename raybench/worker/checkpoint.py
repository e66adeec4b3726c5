"""The checkpoint format, in one place: what a checkpoint holds, how it is written and read.

A checkpoint is a folder of two files: ``state.pt`` and ``trial.json`` (the TrialSpec that
trained it). ``state.pt`` holds plain tensors and numbers only (loaded with ``weights_only=True``):

- ``model``: the model the epoch's row was measured on (the rank average, see
  ``worker.evaluation``); what ``dawnbench infer`` loads;
- ``optimizer``, ``scheduler``, ``epoch``, ``train_seconds``, ``torch_rng``: rank 0's;
- ``ranks``: per rank, what that rank alone holds and an exact restart needs: its batch-norm
  buffers (``virtual``: those of each virtual worker it runs), its communication state
  (PowerSGD's error feedback, factors and RNG), its RNG state, and under local SGD its own
  weights and optimizer state.

The training loop writes one after every epoch (rank 0, after gathering every rank's part); a
restart and ``dawnbench infer`` read it. Checkpoints written before ``ranks`` existed still load.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from raybench.spec.config import TrialSpec

STATE_FILE = "state.pt"
TRIAL_FILE = "trial.json"
ROW_FILE = "raybench_row.json"  # written by driver.train beside the two: the row it was reported with
FILES = (STATE_FILE, TRIAL_FILE)


class CheckpointError(ValueError):
    """Not a readable raybench checkpoint: the message says which file and what is wrong."""


def save(folder: Path, *, model: dict, optimizer: dict, scheduler: dict, trial: TrialSpec, epoch: int,
         train_seconds: float, ranks: list[dict]) -> None:
    """Write the checkpoint of ``trial`` after ``epoch`` into ``folder`` (state dicts as given)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": epoch,
                "train_seconds": train_seconds, "torch_rng": torch.get_rng_state(), "ranks": ranks},
               folder / STATE_FILE)
    (folder / TRIAL_FILE).write_text(trial.model_dump_json())


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside it (dicts, lists, tuples) copied to the CPU, for sending."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def load_state(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state a checkpoint holds, tensors on ``device``; nothing in it is executed."""
    return torch.load(folder / STATE_FILE, map_location=device, weights_only=True)


def read(path: Path) -> tuple[dict[str, Any], TrialSpec]:
    """(state, trial) of a checkpoint folder, or of the ``state.pt`` inside one, checked on the
    way; raises CheckpointError naming what is missing or unreadable."""
    folder = path.parent if path.is_file() else path
    if not path.exists():
        raise CheckpointError("no such file or folder")
    for name in FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"no {name} in {folder} (a raybench checkpoint folder holds "
                                  f"{' and '.join(FILES)})")
    try:
        state = load_state(folder)
    except Exception as e:  # a truncated file, or one that is not a plain tensor checkpoint
        raise CheckpointError(f"{STATE_FILE} cannot be loaded with weights_only=True ({e})") from None
    try:
        trial = TrialSpec.model_validate_json((folder / TRIAL_FILE).read_text())
    except Exception as e:
        raise CheckpointError(f"{TRIAL_FILE} is not a raybench TrialSpec ({e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{STATE_FILE} has no 'model' weights")
    return state, trial


def copy(src: Path, dst: Path) -> Path:
    """Copy a checkpoint's files from ``src`` (e.g. a folder Ray lends only for a while) to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(src / name, dst / name)
    return dst


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary folder to write a checkpoint into before it is handed over (removed on exit)."""
    return tempfile.TemporaryDirectory(prefix="raybench-ckpt-")
