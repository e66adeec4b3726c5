"""CIFAR-10 in memory: the official archive (downloaded, md5-checked) or a local copy; shards; augmentation.

Images stay uint8 (N, 3, 32, 32) in memory, on the device that trains; each batch is augmented
(4-pixel zero pad + random 32x32 crop + horizontal flip) and normalised as one tensor op, so
loading does not limit a step (``bench/overhead.py`` measures it).

torch and numpy are imported where an array is made, not at module level: the sweep CLI checks a
local copy (``verify``) and labels it without torch, so ``--dry-run`` and bad-input errors answer fast.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

BATCHES = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
IMAGES_PER_FILE = 10_000
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
DEFAULT_CACHE = Path.home() / ".cache" / "raybench"
ENV_VAR = "RAYBENCH_DATA"

DATASET_OFFICIAL = "cifar10-official"  # the official release: downloaded, or a copy md5-identical to it
DATASET_LOCAL = "cifar10-local"  # any other copy (re-encoded, subset, altered): it differs from the release
# md5 of each file of the official python archive: torchvision's CIFAR10.train_list + test_list
# (tests/test_data.py checks that they agree), kept here so that labelling a copy needs no torchvision.
OFFICIAL_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}


class DataError(ValueError):
    """The dataset is missing or malformed: the message says which file and what is wrong."""


@dataclass(frozen=True)
class Cifar10:
    train_x: torch.Tensor  # uint8 (N, 3, 32, 32)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # DATASET_OFFICIAL (downloaded) or DATASET_LOCAL (read from a local copy; see dataset_label)

    def subset(self, train_images: int | None, test_images: int | None) -> Cifar10:
        """The first images of each split (the files are already in random order)."""
        return Cifar10(self.train_x[:train_images], self.train_y[:train_images],
                       self.test_x[:test_images], self.test_y[:test_images], self.source)

    def to(self, device: torch.device) -> Cifar10:
        return Cifar10(self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                       self.test_y.to(device), self.source)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batch files but refuses any global other than numpy's array rebuilders,
    so a crafted data file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch file")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    if not path.is_file():
        raise DataError(f"{path}: missing (a CIFAR-10 python batch file is expected here)")
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable CIFAR-10 batch file ({type(e).__name__}: {e})") from None
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise DataError(f"{path}: expected a dict with 'data' and 'labels'")
    data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
    if data.dtype != np.uint8 or data.shape != (IMAGES_PER_FILE, 3072):
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}; allowed: uint8 ({IMAGES_PER_FILE}, 3072)")
    if labels.shape != (IMAGES_PER_FILE,) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: 'labels' must be {IMAGES_PER_FILE} integers in 0..9, got shape {labels.shape}"
                        f" and range {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_split(folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    import torch

    parts = [_read_batch(folder / name) for name in files]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return x, y


def data_root(data: str | os.PathLike | None) -> tuple[Path, bool]:
    """The folder holding cifar-10-batches-py/, and whether it is a local copy (no md5 check)."""
    if data is None:
        data = os.environ.get(ENV_VAR) or None
    if data is None:
        return DEFAULT_CACHE, False
    return Path(data).expanduser().resolve(), True


def _source(root: Path) -> str:
    """How the user named a local copy, for messages: --data, or the environment variable."""
    return f"{ENV_VAR}={root}" if os.environ.get(ENV_VAR) and Path(os.environ[ENV_VAR]).expanduser().resolve() == root \
        else f"--data {root}"


def check_local(root: Path) -> None:
    """Fail early, naming the path, when a local copy is not there (cheap: no file is read)."""
    folder = root / BATCHES
    if not root.is_dir():
        raise DataError(f"{_source(root)}: no such folder; it must hold {BATCHES}/")
    missing = [n for n in TRAIN_FILES + TEST_FILES if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{_source(root)}: {BATCHES}/ lacks {', '.join(missing)}")


def verify(root: Path) -> None:
    """Every check ``load`` makes of a local copy (files, shapes, dtypes, labels), one file at a
    time and without torch: what the sweep CLI runs before Ray starts."""
    check_local(root)
    for name in TRAIN_FILES + TEST_FILES:
        _read_batch(root / BATCHES / name)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_label(root: Path, local: bool, md5s: Mapping[str, str] = OFFICIAL_MD5) -> str:
    """What a copy is, for result files: DATASET_OFFICIAL if it is the official download, or a local
    copy whose files in ``cifar-10-batches-py/`` all have the official md5 sums (``md5s``: file name
    -> md5); DATASET_LOCAL for any other copy, or one with a file missing. Reads every file once
    (about 0.3 s for the 163 MB of CIFAR-10): the driver calls it once per sweep."""
    if not local:
        return DATASET_OFFICIAL  # download_official checked the md5 sums
    folder = root / BATCHES
    for name, md5 in md5s.items():
        if not (folder / name).is_file() or _md5(folder / name) != md5:
            return DATASET_LOCAL
    return DATASET_OFFICIAL


DOWNLOAD_TIMEOUT_S = 60  # per network operation; torchvision's urlopen has none of its own


def download_official(root: Path = DEFAULT_CACHE) -> None:
    """The official python archive through torchvision, which checks its md5 sums. A complete cache
    is checked against ``OFFICIAL_MD5`` (torchvision's sums) without importing torchvision."""
    import socket

    from filelock import FileLock, Timeout

    hint = f"with no network, pass --data DIR (or set {ENV_VAR}) to a folder holding {BATCHES}/"
    folder = root / BATCHES
    if all((folder / name).is_file() for name in OFFICIAL_MD5):
        bad = [name for name, md5 in OFFICIAL_MD5.items() if _md5(folder / name) != md5]
        if not bad:
            return
        raise DataError(f"{folder}: {', '.join(bad)} failed the official md5 check; delete {folder} to download "
                        f"it again, or, for a copy that is not the official release, {hint}")
    from torchvision.datasets import CIFAR10

    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with FileLock(str(root / ".download.lock"), timeout=3600):  # workers on one node share the cache
            CIFAR10(str(root), train=True, download=True)
    except Timeout:
        raise DataError(f"{root}: another process has held the download lock for an hour") from None
    except RuntimeError as e:  # torchvision: "File not found or corrupted." on a bad md5
        raise DataError(f"CIFAR-10 downloaded into {root} failed its md5 check ({e}); {hint}") from None
    except OSError as e:
        raise DataError(f"CIFAR-10 could not be downloaded into {root} ({e}); {hint}") from None
    finally:
        socket.setdefaulttimeout(previous)


def load(data: str | os.PathLike | None = None) -> Cifar10:
    """CIFAR-10 from ``--data``/``RAYBENCH_DATA`` (checked for files, shapes and labels, not md5)
    or else the official download into ~/.cache/raybench (md5-checked by torchvision)."""
    root, local = data_root(data)
    if local:
        check_local(root)
    else:
        download_official(root)
    folder = root / BATCHES
    train_x, train_y = _read_split(folder, TRAIN_FILES)
    test_x, test_y = _read_split(folder, TEST_FILES)
    return Cifar10(train_x, train_y, test_x, test_y, DATASET_LOCAL if local else DATASET_OFFICIAL)


ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def to_arrays(ds: Cifar10) -> dict[str, np.ndarray | str]:
    """The data set as numpy arrays (sharing the tensors' memory) and its source: what the driver puts
    into Ray's object store once, for every worker on every node to map without a copy (``from_arrays``)."""
    return {name: getattr(ds, name).numpy() for name in ARRAYS} | {"source": ds.source}


def from_arrays(arrays: Mapping[str, np.ndarray | str]) -> Cifar10:
    """A data set over ``to_arrays``'s arrays, without a copy. They may be read-only (Ray's object
    store maps them so): the images and labels are only ever read, indexed or copied to a device."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = [torch.from_numpy(arrays[name]) for name in ARRAYS]
    return Cifar10(*tensors, str(arrays["source"]))


def shard_indices(n: int, rank: int, world: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's disjoint share of a fresh permutation of range(n) for this epoch.

    Every rank draws the same permutation (seeded by seed and epoch) and takes every world-th
    index; the tail that would leave ranks unequal is dropped, so all ranks take the same number
    of steps, as DDP requires.
    """
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    return perm[rank: per_rank * world: world]


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the 4-pixel zero-padded image and random horizontal flip, for a uint8 batch."""
    import torch

    b = x.shape[0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dev = x.device
    dy = torch.randint(0, 9, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 9, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    ar = torch.arange(32, device=dev)
    rows = (dy[:, None] + ar)[:, None, :, None]
    cols = dx[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                  rows, cols]


def normalize(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 images to float (``dtype``, default float32), standardised with the CIFAR-10 mean and std."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    mean = torch.tensor(MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (x.to(dtype) - mean) / std
