"""The checkpoint format, in one place: what a checkpoint holds, how it is written and read.

A checkpoint is a folder of two files: ``state.pt`` (model weights, optimizer and scheduler
state, the epoch, the training time so far, the torch RNG state; plain tensors and numbers,
loaded with ``weights_only=True``) and ``trial.json`` (the TrialSpec that trained it). The
training loop writes one after every epoch (rank 0), a restart and ``dawnbench infer`` read it.
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
FILES = (STATE_FILE, TRIAL_FILE)


class CheckpointError(ValueError):
    """Not a readable raybench checkpoint: the message says which file and what is wrong."""


def save(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, trial: TrialSpec, epoch: int,
         train_seconds: float) -> None:
    """Write the checkpoint of ``trial`` after ``epoch`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "train_seconds": train_seconds, "torch_rng": torch.get_rng_state()},
               folder / STATE_FILE)
    (folder / TRIAL_FILE).write_text(trial.model_dump_json())


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
