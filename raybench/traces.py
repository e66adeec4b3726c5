"""The step-trace format, in one place: what a trace holds, where it lives, how it travels.

Every trial records, per rank and per step, what replay needs to re-time the step under another
link (see ``worker.comm.hook.StepRecord``): per gradient bucket its hand-over, when every rank had
handed it over (where the live link measured it), the end of its real collective, its release to
DDP and what it puts on the link; when backward returned, when the step ended, local SGD's
parameter averaging, and (for a process running several virtual workers, on a CPU) when each
micro-batch but the last had finished its backward. Times are seconds from the step's start on that
rank's clock. One file per trial, ``results/<sweep>/_traces/<trial_id>.parquet`` (the leading
``_`` keeps it out of the epoch dataset), rewritten atomically after every epoch like the trial file.

A rank sends its epoch's records to rank 0, which sends the epoch's table to the driver as one
base64 Arrow IPC string in the reported metrics (``TRACE_KEY``). No torch, no ray here.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raybench import results

TRACE_DIR = "_traces"
TRACE_KEY = "raybench_trace"  # the epoch's trace in the reported metrics (see module docstring)

SCHEMA = pa.schema([
    pa.field("epoch", pa.int32()),
    pa.field("step", pa.int32()),  # from 0 within the epoch
    pa.field("rank", pa.int32()),
    pa.field("backward", pa.float64()),  # backward() returned
    pa.field("end", pa.float64()),  # the next step began (or the epoch's timed part ended)
    pa.field("handover", pa.list_(pa.float64())),  # per bucket, in hand-over order
    pa.field("ready", pa.list_(pa.float64())),  # every rank had handed it over; NaN: not measured
    pa.field("real_done", pa.list_(pa.float64())),
    pa.field("release", pa.list_(pa.float64())),
    pa.field("collectives", pa.list_(pa.int32())),
    pa.field("nbytes", pa.list_(pa.int64())),
    pa.field("avg_collectives", pa.int32()),  # local SGD's parameter averaging after the step
    pa.field("avg_nbytes", pa.int64()),
    pa.field("avg_real", pa.float64()),
    # [virtual] when each virtual worker's micro-batch but the last finished its backward; empty: one
    # worker per process, a GPU (the host does not see the device finish), or a trace written before
    pa.field("micro", pa.list_(pa.float64())),
])
RECORD_FIELDS = tuple(n for n in SCHEMA.names if n not in ("epoch", "step", "rank"))


def to_table(epoch: int, ranks: Sequence[Sequence[Any]]) -> pa.Table:
    """One epoch's trace: ``ranks[r]`` is rank r's list of step records (``StepRecord`` or dicts)."""
    rows = []
    for rank, steps in enumerate(ranks):
        for step, rec in enumerate(steps):
            d = rec if isinstance(rec, Mapping) else asdict(rec)
            d = {"ready": [float("nan")] * len(d["handover"]), "micro": []} | dict(d)
            rows.append({"epoch": epoch, "step": step, "rank": rank} | {k: d[k] for k in RECORD_FIELDS})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _conform(table: pa.Table) -> pa.Table:
    """A trace in today's schema; a trace written before ``ready`` existed gets NaN (not measured),
    one written before ``micro`` empty lists (not measured)."""
    if "ready" not in table.column_names:
        nan = [[float("nan")] * len(h) for h in table["handover"].to_pylist()]
        table = table.append_column("ready", pa.array(nan, pa.list_(pa.float64())))
    if "micro" not in table.column_names:
        table = table.append_column("micro", pa.array([[]] * table.num_rows, pa.list_(pa.float64())))
    return table.select(SCHEMA.names).cast(SCHEMA)


def encode(table: pa.Table) -> str:
    """A trace table as text that travels in a metrics dict."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def decode(text: str) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text))) as r:
        return _conform(r.read_all())


def path(sweep_dir: str | os.PathLike, trial_id: str) -> str | os.PathLike:
    """Where a trial's trace lives: ``<sweep_dir>/_traces/<trial_id>.parquet``."""
    return results.join(results.join(sweep_dir, TRACE_DIR), f"{trial_id}.parquet")


def beside(trial_file: str | os.PathLike, trial_id: str) -> str | os.PathLike:
    """The trace of the trial whose file is ``trial_file``: in that folder's ``_traces``."""
    p = trial_file
    folder = str(p).rstrip("/").rsplit("/", 1)[0] if results.is_uri(p) else os.path.dirname(os.fspath(p)) or "."
    return path(folder, trial_id)


def read(where: str | os.PathLike) -> pa.Table | None:
    """A trace file's table, or None when there is none."""
    if not results.exists(where):
        return None
    fs, p = results._fs(where)
    return _conform(results._read_table(fs, p))


def merged(before: pa.Table | None, epoch_table: pa.Table) -> pa.Table:
    """``before`` with the epochs from ``epoch_table``'s on replaced by it (a restarted attempt's
    epochs replace those of the attempt that died, as rows do)."""
    if before is None or before.num_rows == 0:
        return epoch_table
    first = pc.min(epoch_table["epoch"]).as_py() if epoch_table.num_rows else None
    kept = before if first is None else before.filter(pc.less(before["epoch"], first))
    return pa.concat_tables([kept, epoch_table])


def write(where: str | os.PathLike, table: pa.Table) -> None:
    """Write a whole trace atomically (see ``results.write_trial``)."""
    results.write_trial(where, table)
