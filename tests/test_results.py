"""The Parquet schema, atomic trial files, and reading a results folder."""
import json
import os
import subprocess
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pytest

from raybench import results


def row(epoch: int, trial: str = "t1", **over):
    r = {name: None for name in results.COLUMNS}
    r.update(sweep="s", run_id="r", trial_id=trial, model="resnet20_v1", depth=20, version="v1",
             algorithm="allreduce", hardware="cpu", device_name="cpu", workers=1, cpus_per_worker=1,
             bandwidth_mbps=None, latency_ms=0.0, batch_per_worker=128, global_batch=128, lr=0.1, seed=0,
             epoch=epoch, train_seconds=10.0 * epoch, epoch_seconds=10.0, eval_seconds=1.0, compute_seconds=9.0,
             comm_seconds=1.0, simulated_delay_seconds=0.0, images_per_second=100.0, train_loss=1.0,
             train_top1=0.5, test_loss=1.0, test_top1=0.5, timestamp=datetime.now(UTC))
    r.update(over)
    return r


META = {results.META_CONFIG: json.dumps({"trial_id": "t1"}), results.META_STATUS: results.STATUS_COMPLETE,
        results.META_DATASET: "cifar10-local", results.META_VERSIONS: "{}", results.META_GIT: ""}


def test_round_trip_keeps_columns_types_and_metadata(tmp_path):
    path = results.trial_path(tmp_path, "t1")
    results.write_trial(path, results.to_table([row(1), row(2)], META))
    rows, meta = results.read_trial(path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["bandwidth_mbps"] is None
    assert meta["raybench.status"] == "complete" and json.loads(meta["raybench.config"]) == {"trial_id": "t1"}
    df = pd.read_parquet(tmp_path)
    assert list(df.columns) == list(results.COLUMNS)
    assert str(df["timestamp"].dtype).startswith("datetime64")


def test_rows_must_have_exactly_the_schema_columns():
    bad = row(1)
    del bad["lr"]
    bad["extra"] = 1
    with pytest.raises(ValueError, match="missing columns \\['lr'\\], unknown columns \\['extra'\\]"):
        results.to_table([bad], META)


def test_rewrite_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = results.trial_path(tmp_path, "t1")
    results.write_trial(path, results.to_table([row(1)], META))
    results.write_trial(path, results.to_table([row(1), row(2)], META))
    assert sorted(os.listdir(tmp_path)) == ["t1.parquet"]
    assert len(pd.read_parquet(path)) == 2


def test_failed_write_keeps_the_earlier_file(tmp_path):
    path = results.trial_path(tmp_path, "t1")
    results.write_trial(path, results.to_table([row(1)], META))
    before = path.read_bytes()
    os.chmod(tmp_path, 0o500)  # the folder refuses new files: the temporary file cannot be created
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores modes; use a real unwritable target instead
            os.chmod(tmp_path, 0o700)
            (tmp_path / f".t1.parquet.{os.getpid()}.tmp").mkdir()  # the temp name is taken by a folder
        with pytest.raises(OSError):
            results.write_trial(path, results.to_table([row(1), row(2)], META))
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == before
    assert len(pd.read_parquet(path)) == 1


def test_read_results_skips_ray_state_and_temporary_files(tmp_path):
    results.write_trial(results.trial_path(tmp_path, "t1"), results.to_table([row(1), row(2)], META))
    results.write_trial(results.trial_path(tmp_path, "t2"), results.to_table([row(1, "t2")], META))
    (tmp_path / "_ray" / "x").mkdir(parents=True)
    (tmp_path / "_ray" / "x" / "junk.parquet").write_bytes(b"not parquet")
    (tmp_path / ".t3.parquet.1.tmp").write_bytes(b"half a file")
    df = results.read_results(tmp_path)
    assert len(df) == 3 and set(df["trial_id"]) == {"t1", "t2"}
    assert len(pd.read_parquet(tmp_path)) == 3  # what users type gives the same rows


def test_metrics_round_trip_through_one_json_field():
    metrics = results.to_metrics(results.EpochRow(**row(3, bandwidth_mbps=100.0)))
    assert metrics["rb_epoch"] == 3
    back = results.from_metrics(metrics | {"trial_id": "tune-id", "timestamp": 123})
    assert back["trial_id"] == "t1" and back["bandwidth_mbps"] == 100.0
    assert isinstance(back["timestamp"], datetime)
    assert results.from_metrics({"other": 1}) is None


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), so that a write fails with ENOSPC midway."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("form", ["path", "file:// URI"])
def test_a_full_disk_midway_leaves_earlier_files_readable_and_unchanged(tiny_disk, form):
    where = tiny_disk if form == "path" else f"file://{tiny_disk}"
    first, second = results.trial_path(where, "t1"), results.trial_path(where, "t2")
    results.write_trial(first, results.to_table([row(1), row(2)], META))
    results.write_trial(second, results.to_table([row(1, "t2")], META))
    files = [tiny_disk / "t1.parquet", tiny_disk / "t2.parquet"]
    before = {p: p.read_bytes() for p in files}
    big = [row(e, "t2", device_name=os.urandom(4000).hex()) for e in range(1, 200)]  # ~1.6 MB: cannot fit
    with pytest.raises(OSError):
        results.write_trial(second, results.to_table(big, META))
    assert {p: p.read_bytes() for p in files} == before
    assert sorted(os.listdir(tiny_disk)) == ["t1.parquet", "t2.parquet"]  # no temporary file left behind
    assert len(results.read_results(where)) == 3


def test_a_failed_write_through_a_file_uri_keeps_the_earlier_file(tmp_path):
    # A file:// URI is a local file: replaced whole (temporary name, rename), never opened in place,
    # so a write that fails (here: a column Parquet cannot store) leaves the earlier version.
    uri = results.trial_path(f"file://{tmp_path}", "t1")
    results.write_trial(uri, results.to_table([row(1), row(2)], META))
    before = (tmp_path / "t1.parquet").read_bytes()
    unwritable = pa.table({"when": pa.array([pa.MonthDayNano([1, 2, 3])])})
    with pytest.raises(pa.ArrowNotImplementedError):
        results.write_trial(uri, unwritable)
    assert (tmp_path / "t1.parquet").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t1.parquet"]
    assert [r["epoch"] for r in results.read_trial(uri)[0]] == [1, 2]


def test_uris_go_through_pyarrow_filesystems(tmp_path):
    uri = f"file://{tmp_path}/bucket/sweep"
    path = results.trial_path(uri, "t1")
    assert path == f"{uri}/t1.parquet" and not results.exists(path)
    results.write_trial(path, results.to_table([row(1), row(2)], META))
    assert results.exists(path) and results.trial_files(uri) == [path]
    rows, meta = results.read_trial(path)
    assert [r["epoch"] for r in rows] == [1, 2] and meta["raybench.status"] == "complete"
    assert len(results.read_results(uri)) == 2 == len(pd.read_parquet(tmp_path / "bucket" / "sweep"))


def test_one_discovery_for_paths_and_uris_in_a_folder_of_sweeps(tmp_path):
    for sweep, trial in (("a", "t1"), ("a", "t2"), ("b", "t1")):
        table = results.to_table([row(1, trial, sweep=sweep)], META)
        results.write_trial(results.trial_path(tmp_path / sweep, trial), table)
    (tmp_path / "a" / "_ray").mkdir()
    (tmp_path / "a" / "_ray" / "state.parquet").write_bytes(b"Ray's, not a trial")
    (tmp_path / "b" / ".t9.parquet.1.tmp").write_bytes(b"half a file")
    (tmp_path / "_report").mkdir()
    (tmp_path / "_report" / "index.html").write_text("<html/>")
    expected = ["a/t1.parquet", "a/t2.parquet", "b/t1.parquet"]
    assert results.trial_files(tmp_path) == [tmp_path / e for e in expected]
    assert results.trial_files(f"file://{tmp_path}") == [f"file://{tmp_path}/{e}" for e in expected]
    assert results.trial_files(tmp_path / "a" / "t2.parquet") == [tmp_path / "a" / "t2.parquet"]
    assert results.trial_files(tmp_path / "missing") == []
    assert len(results.read_results(f"file://{tmp_path}")) == 3 == len(results.read_results(tmp_path))
    loaded = results.load(f"file://{tmp_path}")
    assert list(loaded.by_key) == [("a", "t1"), ("a", "t2"), ("b", "t1")]
    assert loaded.by_key[("b", "t1")].path == f"file://{tmp_path}/b/t1.parquet"
    with pytest.raises(results.ResultsError, match="no such folder"):
        results.load(tmp_path / "missing")
    with pytest.raises(results.ResultsError, match="no trial files"):
        results.read_trials(tmp_path / "_report")


def test_a_file_replaced_while_it_is_read_is_read_whole(tmp_path):
    """The sweep rewrites a trial file (rename over it) while --resume, the report or a test reads
    it. Reading through one open handle sees one version; reading by path twice (footer, then
    pages) tore about one read in ten on this machine (OSError: page smaller than expected)."""
    import threading

    path = results.trial_path(tmp_path, "t1")
    short, long = ([row(e) for e in range(1, n + 1)] for n in (1, 300))
    results.write_trial(path, results.to_table(short, META))
    stop = threading.Event()

    def rewrite():
        i = 0
        while not stop.is_set():
            results.write_trial(path, results.to_table(long if i % 2 else short, META))
            i += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        lengths = {len(results.read_trial(path)[0]) for _ in range(300)}
        lengths |= {len(results.read_results(tmp_path)) for _ in range(100)}
    finally:
        stop.set()
        writer.join()
    assert lengths <= {1, 300}
