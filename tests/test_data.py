"""CIFAR-10 loading and checks, per-epoch shards, augmentation."""
import hashlib
import pickle

import numpy as np
import pytest
import torch

from raybench.worker import data as cifar


def test_shards_are_disjoint_cover_and_reshuffle():
    n, world = 1003, 4
    shards = [cifar.shard_indices(n, r, world, seed=0, epoch=1) for r in range(world)]
    together = torch.cat(shards)
    assert all(len(s) == n // world for s in shards)
    assert len(set(together.tolist())) == len(together)  # disjoint
    again = [cifar.shard_indices(n, r, world, seed=0, epoch=1) for r in range(world)]
    assert all(torch.equal(a, b) for a, b in zip(shards, again, strict=True))  # reproducible from the seed
    nxt = cifar.shard_indices(n, 0, world, seed=0, epoch=2)
    assert not torch.equal(nxt, shards[0])  # reshuffled each epoch
    assert not torch.equal(cifar.shard_indices(n, 0, world, seed=1, epoch=1), shards[0])


def test_augment_crops_and_flips_within_the_padded_image():
    x = torch.arange(32, dtype=torch.uint8).repeat(64, 3, 32, 1)  # pixel value = column index
    out = cifar.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    rows = out[:, 0, 16].to(torch.int16)  # one row: shifted (zeros from padding) and maybe reversed
    steps = rows[:, 1:] - rows[:, :-1]
    inc = ((steps == 1) | (steps == -31) | (rows[:, 1:] == 0) | (rows[:, :-1] == 0)).all(1)
    dec = ((steps == -1) | (rows[:, 1:] == 0) | (rows[:, :-1] == 0)).all(1)
    assert (inc | dec).all()
    assert inc.any() and dec.any()  # some flipped, some not
    assert not torch.equal(out, x)


def test_normalize_uses_cifar_statistics():
    x = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    y = cifar.normalize(x)
    expect = (128 / 255 - torch.tensor(cifar.MEAN)) / torch.tensor(cifar.STD)
    assert torch.allclose(y[0, :, 0, 0], expect, atol=1e-5)


def _batch_file(path, n=cifar.IMAGES_PER_FILE, labels=None, dtype=np.uint8, cols=3072):
    entry = {"data": np.zeros((n, cols), dtype=dtype), "labels": labels if labels is not None else [0] * n}
    path.write_bytes(pickle.dumps(entry))


def _fake_copy(root):
    folder = root / cifar.BATCHES
    folder.mkdir(parents=True)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        _batch_file(folder / name, labels=list(np.arange(cifar.IMAGES_PER_FILE) % 10))
    return folder


def test_local_copy_loads(tmp_path):
    _fake_copy(tmp_path)
    ds = cifar.load(tmp_path)
    assert ds.train_x.shape == (50_000, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (10_000, 3, 32, 32) and ds.source == cifar.DATASET_LOCAL
    sub = ds.subset(100, 10)
    assert len(sub.train_y) == 100 and len(sub.test_y) == 10


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(cifar.DataError, match="no such folder"):
        cifar.load(tmp_path / "nope")


def test_missing_batch_file_is_named(tmp_path):
    folder = _fake_copy(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(cifar.DataError, match="data_batch_3"):
        cifar.load(tmp_path)


@pytest.mark.parametrize("kind", ["truncated", "shape", "labels", "dtype"])
def test_malformed_batch_is_rejected(tmp_path, kind):
    folder = _fake_copy(tmp_path)
    target = folder / "data_batch_2"
    if kind == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    elif kind == "shape":
        _batch_file(target, cols=1024)
    elif kind == "labels":
        _batch_file(target, labels=[11] * cifar.IMAGES_PER_FILE)
    else:
        _batch_file(target, dtype=np.float32)
    with pytest.raises(cifar.DataError, match="data_batch_2"):
        cifar.load(tmp_path)


def test_batch_files_cannot_run_code(tmp_path):
    folder = _fake_copy(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(cifar.DataError, match="not allowed"):
        cifar.load(tmp_path)


def test_offline_copy_has_the_cifar_layout(cifar_dir):
    ds = cifar.load(cifar_dir)
    assert len(ds.train_y) == 50_000 and len(ds.test_y) == 10_000
    assert set(ds.train_y.unique().tolist()) == set(range(10))


# ---------------------------------------------------------------- what a copy is: official or not

def _md5(path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_official_md5_table_is_torchvisions():
    from torchvision.datasets import CIFAR10

    assert cifar.OFFICIAL_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list)


def test_a_copy_is_official_only_if_every_file_has_its_md5(tmp_path):
    folder = tmp_path / cifar.BATCHES
    folder.mkdir()
    for i, name in enumerate(("a", "b")):
        (folder / name).write_bytes(bytes([i]) * 1000)
    md5s = {name: _md5(folder / name) for name in ("a", "b")}
    assert cifar.dataset_label(tmp_path, True, md5s) == cifar.DATASET_OFFICIAL
    assert cifar.dataset_label(tmp_path, False) == cifar.DATASET_OFFICIAL  # the md5-checked download
    (folder / "b").write_bytes(bytes([1]) * 999 + b"\x02")  # one byte differs
    assert cifar.dataset_label(tmp_path, True, md5s) == cifar.DATASET_LOCAL
    (folder / "b").unlink()
    assert cifar.dataset_label(tmp_path, True, md5s) == cifar.DATASET_LOCAL  # a missing file is not the release
    assert cifar.dataset_label(tmp_path, True) == cifar.DATASET_LOCAL  # default: the official md5 sums


def test_the_offline_jpeg_copy_is_labelled_a_local_copy(cifar_dir):
    test_batch = cifar_dir / cifar.BATCHES / "test_batch"
    if _md5(test_batch) == cifar.OFFICIAL_MD5["test_batch"]:
        pytest.skip(f"{cifar_dir} holds the official release, not the JPEG copy")
    assert cifar.dataset_label(cifar_dir, True) == cifar.DATASET_LOCAL
