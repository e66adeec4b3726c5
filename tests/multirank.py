"""Several real ranks without Ray: processes started with torch.multiprocessing (spawn), joined by
a gloo process group over 127.0.0.1, for the loop's multi-rank behaviour (one clock, one model,
exact restarts). Each rank's result comes back through a JSON file; a rank that hangs fails the
test at ``timeout`` instead of hanging the suite."""
from __future__ import annotations

import json
import os
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple, out: str, pg_timeout: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=pg_timeout))
    try:
        result: Any = fn(rank, world, *args)
    except BaseException:
        result = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, default=str))
    # Leave without C++ static destructors: a gloo thread still joinable at interpreter exit aborts
    # the process ("terminate called without an active exception") after its result is written,
    # seen once in 8 runs under load; the result, not the teardown, is what the tests check.
    os._exit(0)


def run_ranks(fn: Callable, world: int, *args: Any, out: Path, timeout: float = 180.0) -> list[Any]:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks; returns each rank's JSON-able result.

    Raises AssertionError when a rank raised, died, or did not finish within ``timeout`` seconds
    (the process group's own timeout is set to the same bound, so a hung collective ends too).
    """
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_rank_main, args=(world, _free_port(), fn, args, str(out), timeout), nprocs=world,
                             join=False, start_method="spawn")
    import time

    deadline = time.monotonic() + timeout + 30
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"ranks did not finish within {timeout:.0f} s (a hang)")
    results = []
    for r in range(world):
        f = out / f"rank{r}.json"
        assert f.is_file(), f"rank {r} wrote no result"
        res = json.loads(f.read_text())
        assert not (isinstance(res, dict) and "error" in res), f"rank {r} failed:\n{res['error']}"
        results.append(res)
    return results


# ---------------------------------------------------------------- rank functions (importable by spawn)

def train_rows(rank: int, world: int, trial_json: str, data: str, keep: str | None = None,
               restore: str | None = None, clock_rate: float = 1.0) -> list[dict[str, Any]]:
    """Run a trial with ``worker.loop.run`` on this rank; rank 0 keeps each epoch's checkpoint in
    ``keep/epoch_N``. ``clock_rate`` != 1 makes this rank's clock run fast or slow (a skew)."""
    import shutil
    import time

    import torch

    from raybench.spec.config import TrialSpec
    from raybench.worker import data as cifar
    from raybench.worker.loop import run
    from raybench.worker.setup import Worker

    trial = TrialSpec.model_validate_json(trial_json)
    rows: list[dict[str, Any]] = []

    def report(row, ckpt, trace) -> None:
        rows.append(row.to_dict() | {"timestamp": row.timestamp.isoformat()})
        if trace is not None and keep is not None:  # rank 0: the epoch's step trace, as replay reads it
            from raybench import traces
            traces.write(Path(keep) / f"trace_{row.epoch}.parquet", trace)
        if ckpt is not None and keep is not None:
            shutil.copytree(ckpt, Path(keep) / f"epoch_{row.epoch}")

    start = time.perf_counter()
    clock = (lambda: start + (time.perf_counter() - start) * clock_rate) if clock_rate != 1.0 else time.perf_counter
    run(trial, Worker(rank, world, torch.device("cpu")), cifar.load(data), "run", report,
        Path(restore) if restore else None, clock=clock)
    return rows


def train_each(rank: int, world: int, trials_json: list[str], data: str) -> list[list[dict[str, Any]]]:
    """``train_rows`` for each trial in turn, on the same ranks and process group (one DDP model
    and one communication hook per trial, as a fresh worker would build them)."""
    return [train_rows(rank, world, t, data) for t in trials_json]
