"""The result schema (one row per trial and epoch), atomic Parquet writes, and reading results.

Every column is defined here once, as a field of ``EpochRow``; the training loop builds
``EpochRow``s, and the writer, the report and the tests use the names derived from it.
Accuracies are fractions in [0, 1]; times are seconds of wall clock. Every reader of results
(the sweep's resume, the report, the DAWNBench export) finds and reads trial files here, on a
local path or a URI (``file://``, ``s3://``, ``gs://``: pyarrow filesystems) alike.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import posixpath
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import raybench

if TYPE_CHECKING:
    import pandas as pd


def _col(arrow: pa.DataType, doc: str, *default: Any) -> Any:
    """A column of the schema: its Arrow type, its meaning (the README's schema table), a default."""
    return field(metadata={"arrow": arrow, "doc": doc}, **({"default": default[0]} if default else {}))


SOURCE_MEASURED = "measured"  # trained and timed here
SOURCE_PREDICTED = "predicted"  # re-timed by replaying another trial's trace; accuracy from that trial
SOURCE_EMULATED = "emulated"  # virtual workers: accuracy measured exactly, times replayed from the trial's own trace
SOURCES = (SOURCE_MEASURED, SOURCE_PREDICTED, SOURCE_EMULATED)


@dataclass(frozen=True, kw_only=True)
class EpochRow:
    """One row of the dataset: one epoch of one trial. The field order is the column order of
    every file; the Arrow schema, the column list and ``Column`` all derive from it."""

    sweep: str = _col(pa.string(), "sweep name")
    run_id: str = _col(pa.string(), "id of the sweep invocation that wrote the row")
    trial_id: str = _col(pa.string(), "stable id of the trial (its grid point)")
    source: str = _col(pa.string(), "measured (trained and timed here), predicted (times replayed from the "
                       "trace of the trial in predicted_from, accuracy from that trial) or emulated (virtual "
                       "workers: accuracy measured, times replayed at the trial's workers from its own trace); "
                       "null in files written before the column existed, which hold measured rows", SOURCE_MEASURED)
    predicted_from: str | None = _col(pa.string(), "trial id whose step trace was replayed; null for measured rows",
                                      None)
    model: str = _col(pa.string(), "architecture, e.g. resnet20_v1")
    depth: int = _col(pa.int32(), "number of layers")
    version: str = _col(pa.string(), "v1 or v2")
    algorithm: str = _col(pa.string(), "communication algorithm")
    hardware: str = _col(pa.string(), "cpu or gpu")
    device_name: str = _col(pa.string(), "CPU model or GPU name the worker ran on")
    workers: int = _col(pa.int32(), "number of data-parallel workers")
    cpus_per_worker: int = _col(pa.int32(), "CPU cores (torch threads) per worker")
    precision: str = _col(pa.string(), "fp32, or bf16 (autocast for forward and loss)")
    bandwidth_mbps: float | None = _col(pa.float64(), "simulated link bandwidth in Mbit/s; null = unlimited")
    latency_ms: float = _col(pa.float64(), "simulated one-way link latency in ms")
    batch_per_worker: int = _col(pa.int32(), "images per worker per step")
    global_batch: int = _col(pa.int32(), "images per step over all workers")
    lr: float = _col(pa.float64(), "learning rate at the last step of the epoch")
    seed: int = _col(pa.int64(), "seed of the trial")
    epoch: int = _col(pa.int32(), "epoch number, from 1")
    train_seconds: float = _col(pa.float64(), "cumulative training time up to the end of this epoch; no evaluation")
    epoch_seconds: float = _col(pa.float64(), "this epoch's training time (its share of train_seconds), slowest rank's")
    eval_seconds: float = _col(pa.float64(), "time spent evaluating on the test set after this epoch")
    compute_seconds: float = _col(pa.float64(), "epoch_seconds not spent waiting on communication")
    comm_seconds: float = _col(
        pa.float64(),
        "time the steps waited for gradient communication, simulated delay included")
    simulated_delay_seconds: float = _col(
        pa.float64(),
        "modelled link time of the epoch's all-reduces on the simulated link (the real transfers run inside "
        "it; what the steps waited shows in comm_seconds)")
    simulated_hold_seconds: float | None = _col(
        pa.float64(),
        "time the simulated link held finished collectives back beyond the real transfer, summed over the "
        "epoch's collectives (slowest rank's); null in files written before the column existed", None)
    images_per_second: float = _col(pa.float64(), "training images processed per second of epoch_seconds, all workers")
    train_loss: float = _col(pa.float64(), "mean training loss over the epoch")
    train_top1: float = _col(pa.float64(), "training top-1 accuracy over the epoch (augmented images)")
    test_loss: float = _col(pa.float64(), "mean test loss after the epoch")
    test_top1: float = _col(
        pa.float64(), "test top-1 accuracy after the epoch, of the rank-average model the checkpoint holds")
    budget_cut: bool = _col(pa.bool_(), "true when goal.time_budget_s ran out during this epoch and cut it short")
    timestamp: datetime = _col(pa.timestamp("us", tz="UTC"), "when the epoch's row was reported")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EpochRow))
SCHEMA = pa.schema([pa.field(f.name, f.metadata["arrow"]) for f in fields(EpochRow)])
DOCS: dict[str, str] = {f.name: f.metadata["doc"] for f in fields(EpochRow)}
Column = StrEnum("Column", {name.upper(): name for name in COLUMNS})  # Column.TEST_TOP1 == "test_top1"

# Key-value metadata keys of every trial file.
META_CONFIG = b"raybench.config"
META_STATUS = b"raybench.status"  # "running" while epochs remain, "complete" when it ended, "failed"
META_DATASET = b"raybench.dataset"  # cifar10-official | cifar10-local
META_VERSIONS = b"raybench.versions"  # JSON: raybench, torch, ray
META_GIT = b"raybench.git_commit"
META_ERROR = b"raybench.error"  # a failed trial's error text (at most ERROR_CHARS characters)
META_CONCURRENCY = b"raybench.concurrency"  # the most trials the sweep ran at once (--concurrency)
META_PLACEMENT = b"raybench.placement"  # JSON: per rank, where it ran (see driver.train.placement)

STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"  # not complete: a rerun or --resume runs the trial again
ERROR_CHARS = 4096


def git_commit() -> str | None:
    """The commit of the raybench checkout in use, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """The versions that wrote a file, read from the installed packages (nothing is imported)."""
    return {"raybench": raybench.__version__, "torch": importlib.metadata.version("torch"),
            "ray": importlib.metadata.version("ray")}


ROW_KEY = "raybench_row"  # the epoch row travels through Train and Tune as one JSON string
PLACEMENT_KEY = "raybench_placement"  # where the ranks run: sent with an attempt's first row
PROGRESS_KEYS = ("epoch", "train_seconds", "test_top1")  # also shown flat in Tune's progress table


def to_metrics(row: EpochRow, placement: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An epoch row (and, with an attempt's first row, its placement: one dict per rank) as the
    metrics dict ray.train.report sends (Tune adds its own trial_id and timestamp to results, so
    the row cannot travel as flat keys)."""
    d = row.to_dict() | {"timestamp": row.timestamp.isoformat()}
    extra = {PLACEMENT_KEY: json.dumps(placement)} if placement is not None else {}
    return {ROW_KEY: json.dumps(d)} | extra | {f"rb_{k}": d[k] for k in PROGRESS_KEYS}


def placement_from_metrics(metrics: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The placement sent with a reported result (one dict per rank), or None if there is none."""
    return json.loads(metrics[PLACEMENT_KEY]) if metrics.get(PLACEMENT_KEY) else None


def from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The epoch row in a reported result, with its timestamp parsed; None if there is none."""
    if ROW_KEY not in metrics:
        return None
    row = json.loads(metrics[ROW_KEY])
    row["timestamp"] = datetime.fromisoformat(row["timestamp"])
    return row


def is_uri(path: str | os.PathLike) -> bool:
    """A results location on a pyarrow filesystem (s3://, gs://, file://...) rather than a local path."""
    return "://" in str(path)


def _fs(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(str(path)) if is_uri(path) else (pafs.LocalFileSystem(), str(path))


def join(folder: str | os.PathLike, name: str) -> str | Path:
    """``folder/name`` for a local path or a URI."""
    return f"{str(folder).rstrip('/')}/{name}" if is_uri(folder) else Path(folder) / name


def trial_path(sweep_dir: str | os.PathLike, trial_id: str) -> str | Path:
    return join(sweep_dir, f"{trial_id}.parquet")


def exists(path: str | os.PathLike) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def to_table(rows: Iterable[EpochRow | Mapping[str, Any]], metadata: Mapping[bytes, str]) -> pa.Table:
    """Rows (``EpochRow``s, or dicts with exactly the schema's columns) as an Arrow table with the
    file metadata."""
    rows = [r.to_dict() if isinstance(r, EpochRow) else r for r in rows]
    for i, row in enumerate(rows):
        missing, extra = set(COLUMNS) - set(row), set(row) - set(COLUMNS)
        if missing or extra:
            raise ValueError(f"row {i}: missing columns {sorted(missing)}, unknown columns {sorted(extra)}")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.replace_schema_metadata({k: v.encode() for k, v in metadata.items()})


def write_trial(path: str | os.PathLike, table: pa.Table) -> None:
    """Write a trial's whole file atomically: a temporary name in the same folder, fsync, rename.

    A reader sees the old file or the new one, never half of one; a failed write leaves the old file and
    no temporary one. ``file://`` is a local path; an object store (s3://, gs://) replaces one object atomically.
    """
    fs, p = _fs(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as out:
            pq.write_table(table, out)
        return
    _replace_local(Path(p), table)


def _replace_local(path: Path, table: pa.Table) -> None:
    """write_trial on the local filesystem: a temporary name beside ``path``, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------- reading: local paths and URIs alike

TRIAL_KEY = ("sweep", "trial_id")  # one trial: a trial id can appear in several sweeps


class ResultsError(ValueError):
    """A results location is missing, holds no trial files, or a file cannot be read: the message says which."""


def _trial_names(fs: pafs.FileSystem, p: str) -> list[str]:
    """The trial files under ``p`` on ``fs``, relative to it ("" when ``p`` is one), in path order."""
    if fs.get_file_info(p).type == pafs.FileType.File:
        return [""] if p.endswith(".parquet") else []

    def walk(folder: str, parts: tuple[str, ...]):
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if info.base_name.startswith((".", "_")):  # Ray's run state, temporary files, the report
                continue
            if info.type == pafs.FileType.Directory:
                yield from walk(info.path, parts + (info.base_name,))
            elif info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                yield parts + (info.base_name,)

    return ["/".join(parts) for parts in sorted(walk(p, ()))]


def trial_files(path: str | os.PathLike) -> list[str | Path]:
    """The trial files under ``path`` (a sweep folder, a folder of sweeps, or one trial file; a local
    path or a URI), as ``pd.read_parquet`` sees them: files and folders whose names start with ``_``
    or ``.`` are left out. [] when there are none, or no ``path``."""
    fs, p = _fs(path)
    itself = path if is_uri(path) else Path(path)
    return [join(path, rel) if rel else itself for rel in _trial_names(fs, p)]


def folder(path: str | os.PathLike) -> str | Path:
    """``path`` when it is a folder (or is not there), else the folder that holds it."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return path
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_uri(path) else Path(path).parent


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a local path or a URI, creating its folder (the report, beside the results)."""
    fs, p = _fs(path)
    if posixpath.dirname(p):
        fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as out:
        out.write(data)


def _read_table(fs: pafs.FileSystem, p: str) -> pa.Table:
    """One file through one open handle. The writer renames a new file over the old; a reader that opens
    the path twice (pyarrow's by path: footer, then pages) can mix two versions."""
    with fs.open_input_file(p) as f:
        return pq.read_table(f)


def _conform(table: pa.Table) -> pa.Table:
    """``table`` in the schema of today: columns a file written before they existed read as nulls,
    except ``source``: such a file holds measured rows."""
    def column(name: str, f: pa.Field) -> pa.Array | pa.ChunkedArray:
        if name in table.column_names:
            return table.column(name).cast(f.type)
        if name == "source":
            return pa.array([SOURCE_MEASURED] * len(table), f.type)
        return pa.nulls(len(table), f.type)

    return pa.table([column(n, f) for n, f in zip(SCHEMA.names, SCHEMA, strict=True)], schema=SCHEMA)


def _read_file(path: str | os.PathLike) -> TrialFile:
    """A trial file, read once: its metadata and its rows in today's schema."""
    fs, p = _fs(path)
    table = _read_table(fs, p)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"raybench.")}
    return TrialFile(path, meta, _conform(table))


def read_trial(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A trial file's rows and its metadata (keys and values as text)."""
    t = _read_file(path)
    return t.rows, t.meta


def trial_config(meta: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(meta[META_CONFIG.decode()])


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Every row of every trial file under ``path`` (see ``trial_files``) as pandas.

    Same result as ``pd.read_parquet(path)`` on a sweep folder; files and folders whose names start
    with ``_`` or ``.`` (Ray's run state, temporary files) are not part of the dataset.
    """
    if not exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    tables = [_read_file(f).table for f in trial_files(path)]
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()).to_pandas()


@dataclass(frozen=True)
class TrialFile:
    """One trial file as read: where it is, its metadata (keys and values as text) and its rows."""

    path: str | Path
    meta: dict[str, str]
    table: pa.Table = field(repr=False, compare=False)  # the rows, in today's schema

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


def read_trials(path: str | os.PathLike) -> list[TrialFile]:
    """Every trial file under ``path``, read; raises ResultsError naming ``path`` when it is not there
    or holds no trial files, or naming the file that cannot be read."""
    where = f"RESULTS_DIR {str(path)!r}"
    try:
        files = trial_files(path)
        if not files and not exists(path):
            raise ResultsError(f"{where}: no such folder (give results/<sweep> as written by python -m raybench.sweep)")
    except (pa.ArrowInvalid, OSError) as e:  # an unknown scheme, an unreachable store
        raise ResultsError(f"{where}: cannot be listed ({e})") from None
    if not files:
        raise ResultsError(f"{where}: no trial files (*.parquet) in it; run python -m raybench.sweep first, or "
                           f"give the sweep's folder")
    trials = []
    for f in files:
        try:
            trials.append(_read_file(f))
        except (pa.ArrowInvalid, OSError) as e:
            raise ResultsError(f"{f}: not a readable trial file ({e})") from None
    return trials


@dataclass(frozen=True)
class Results:
    """Every epoch row and every trial file as read (the rows' only source), by trial (``TRIAL_KEY``)."""

    rows: pd.DataFrame
    trials: list[TrialFile]

    @cached_property
    def by_key(self) -> dict[tuple[str, str], TrialFile]:  # a file without rows says nothing of its trial
        return {tuple(t.table[k][0].as_py() for k in TRIAL_KEY): t for t in self.trials if t.table.num_rows}

    def config(self, key: tuple[str, str]) -> dict[str, Any]:
        """The trial's resolved config (TrialSpec JSON), or {} when the file has none."""
        try:
            return trial_config(self.by_key[key].meta if key in self.by_key else {})
        except (KeyError, json.JSONDecodeError):
            return {}


def load(path: str | os.PathLike) -> Results:
    """The rows (as ``read_results``) and trial files under ``path``, each file read once (one view
    while a sweep rewrites them); ResultsError as ``read_trials``, or when there are no rows."""
    trials = read_trials(path)
    rows = pa.concat_tables([t.table for t in trials]).to_pandas()
    if rows.empty:
        raise ResultsError(f"RESULTS_DIR {str(path)!r}: the trial files hold no epoch rows yet")
    return Results(rows, trials)
