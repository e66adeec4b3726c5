"""What step traces cost to record, and how fast replay is (run by hand).

1. Recording: ResNet-20 v1 on one CPU rank (a one-rank gloo group, the real DDP hook), epochs with
   the step trace on and off alternately in one process (``LinkHook.recording``); prints the
   images/s of each side and their ratio (goal: recording costs under 1%).
2. Replay: a full-length ResNet-20 trace (164 epochs of 195 steps, 2 ranks, as a 2-worker run of
   the MLBench schedule on 50,000 images records; built by repeating the steps recorded in part 1)
   re-timed under 100 links; prints the seconds (goal: under 10 s).

    python bench/replay_speed.py --data /work/data [--images 4096] [--pairs 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from raybench import replay, traces  # noqa: E402
from raybench.spec import config as cfg  # noqa: E402
from raybench.worker import data as cifar  # noqa: E402
from raybench.worker.comm.link import Link  # noqa: E402
from raybench.worker.loop import train_epoch  # noqa: E402
from raybench.worker.setup import Worker, prepare  # noqa: E402


def recording_cost(args) -> pa.Table:
    trial = cfg.expand(cfg.parse({"name": "speed", "workers": [1], "schedule": {
        "epochs": 100, "warmup_epochs": 0, "milestones": [], "batch_per_worker": 128},
        "data": {"train_images": args.images, "test_images": 128}}))[0]
    s = prepare(trial, Worker(0, 1, torch.device("cpu")), cifar.load(args.data))
    train_epoch(s, 1)  # warm-up: allocator, DDP's bucket rebuild
    seconds = {True: 0.0, False: 0.0}
    images = {True: 0, False: 0}
    kept = None
    for i in range(2 * args.pairs):
        on = (i % 2 == 0) == (i // 2 % 2 == 0)  # on, off, off, on, on, off...: neither side always first
        s.comm.hook.recording = on
        tr = train_epoch(s, i + 2)
        seconds[on] += tr["seconds"]
        images[on] += tr["images"]
        if on:
            kept = traces.to_table(i + 2, [tr["trace"]])
    on, off = images[True] / seconds[True], images[False] / seconds[False]
    print(f"recording: on {on:.1f} images/s, off {off:.1f} images/s over {args.pairs} epoch(s) each of "
          f"{args.images} images; on/off = {on / off:.4f} (cost {1 - on / off:+.2%})", flush=True)
    # The same bookkeeping alone, without the noise of whole epochs: what recording adds per step
    # (two buckets, as ResNet-20's), against the step time just measured.
    hook, n = s.comm.hook, 20_000
    hook.recording = True
    t0 = time.perf_counter()
    for _ in range(n):
        hook.begin_step()
        hook._buckets += [[0.1, 0.2, 0.2, 1, 1_049_000], [0.2, 0.3, 0.3, 1, 29_888]]
        hook.end_backward()
    hook.take_trace(time.perf_counter())
    per_step = (time.perf_counter() - t0) / n
    step = trial.schedule.batch_per_worker / off
    print(f"recording: {per_step * 1e6:.1f} us of bookkeeping per step, {per_step / step:.4%} of a "
          f"{step * 1e3:.0f} ms step", flush=True)
    return kept


def replay_speed(epoch: pa.Table, links: int) -> None:
    one = epoch.filter(pc.equal(epoch["rank"], 0))
    steps = one.num_rows
    reps = -(-195 // steps)
    base = pa.concat_tables([one.set_column(one.schema.get_field_index("step"), "step",
                                            pa.array([s + k * steps for s in range(steps)], pa.int32()))
                             for k in range(reps)]).slice(0, 195)
    epochs = []
    for e in range(1, 165):
        for r in (0, 1):
            t = base.set_column(0, "epoch", pa.array([e] * base.num_rows, pa.int32()))
            rank = pa.array([r] * t.num_rows, pa.int32())
            epochs.append(t.set_column(t.schema.get_field_index("rank"), "rank", rank))
    table = pa.concat_tables(epochs)
    t0 = time.perf_counter()
    s = replay.steps(table)
    t_load = time.perf_counter() - t0
    grid = [Link(b, lat) for b in (None, 10_000, 1000, 100, 20) for lat in (0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200)]
    grid = (grid * (links // len(grid) + 1))[:links]
    measured = {e: 10.0 for e in range(1, 165)}
    t0 = time.perf_counter()
    for link in grid:
        replay.epoch_times(s, link, 2, Link(), 2, measured)
    t_replay = time.perf_counter() - t0
    print(f"replay: {len(s.epoch)} steps x {s.ranks} ranks ({table.num_rows} records); arrays built in "
          f"{t_load:.2f} s; {links} links replayed in {t_replay:.2f} s ({t_replay / links * 1e3:.1f} ms per link)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("RAYBENCH_DATA"))
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--pairs", type=int, default=3, help="epochs on each side")
    p.add_argument("--links", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        epoch = recording_cost(args)
    finally:
        dist.destroy_process_group()
    replay_speed(epoch, args.links)
    return 0


if __name__ == "__main__":
    sys.exit(main())
