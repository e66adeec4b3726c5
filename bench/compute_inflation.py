"""Compute inflation: does a step compute slower when the link makes it wait? (by hand, 2 cores)

Replay re-times the compute of a run at unlimited bandwidth; if a step's forward and backward ran
slower on a slow link (after the idle wait for the previous step's gradients, or because of the live
hook's own machinery: its wire thread and the one-float "ready" all-reduce), replay would come out
low against both the live hook and a really shaped link. This runs two ranks side by side, as a
2-worker trial does (gloo over loopback, one thread each, ResNet-20 v1, batch 64 of random images,
DDP with ``LinkHook``), in interleaved rounds of five modes:

* ``plain``: an unlimited link (the hook runs the bare collective; no wire, no ready all-reduce);
* ``machinery``: a link so fast that its hold is about 0 (wire thread and ready all-reduce, no wait);
* ``wire``: the same without the ready all-reduce (the wire thread alone);
* ``slow``: a 20 Mbit/s link (machinery and about 0.42 s of waiting per step);
* ``idle``: an unlimited link, then a sleep as long as the slow link's wait after every step
  (the wait without the machinery).

Per mode it prints the median over steps and rounds of each phase on rank 0's clock: ``bucket0``
(data, forward and backward up to the first bucket's hand-over), ``rest`` (backward from there to
the last bucket's hand-over), ``step`` (the whole step, and ``step - wait``: the step less the time
after the last hand-over until backward returned). Compute inflation shows as ``bucket0`` and
``rest`` growing from ``plain`` to ``slow``/``idle``; a cost of the hook's own, from ``plain`` to
``machinery`` (and ``wire``: which part of it).

    python bench/compute_inflation.py --rounds 3 --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from raybench.models import build  # noqa: E402
from raybench.worker.comm.hook import LinkHook, link_hook  # noqa: E402
from raybench.worker.comm.link import Link  # noqa: E402

MODES = {"plain": (Link(), 0.0), "machinery": (Link(1e9), 0.0), "wire": (Link(1e9), 0.0), "slow": (Link(20), 0.0),
         "idle": (Link(), None)}


def rank_main(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    hooks, ddps, opts = {}, {}, {}
    for name, (link, _) in MODES.items():  # one model per mode (DDP registers its autograd hooks on it)
        torch.manual_seed(0)
        hooks[name] = LinkHook(link, 2)
        if name == "wire":
            hooks[name]._ready_op = False  # the wire thread without the one-float ready all-reduce
        ddps[name] = DDP(build("resnet", 20, "v1"))
        ddps[name].register_comm_hook(hooks[name], link_hook)
        opts[name] = torch.optim.SGD(ddps[name].parameters(), lr=0.01, momentum=0.9)
    nbytes = sum(p.numel() * 4 for p in ddps["plain"].parameters())
    slow_wait = 2 * (2 - 1) / 2 * nbytes * 8 / 20e6  # the 20 Mbit/s link's time for the gradients, p = 2
    out = {name: [] for name in MODES}
    for _ in range(args.rounds):
        for name, (_link, sleep) in MODES.items():
            hook, ddp, opt = hooks[name], ddps[name], opts[name]
            slept = []
            hook.take_trace()
            dist.barrier()
            for _step in range(args.steps):
                hook.begin_step()
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(ddp(x), y)
                loss.backward()
                hook.end_backward()
                opt.step()
                hook.end_step()
                if sleep is None:  # the wait, after the step, before the next one's forward
                    t = time.perf_counter()
                    time.sleep(slow_wait)
                    slept.append(time.perf_counter() - t)
            trace = hook.take_trace(time.perf_counter())
            for i, r in enumerate(trace[args.warmup:], args.warmup):
                wait = r.backward - max(r.handover) + (slept[i] if slept else 0.0)
                out[name].append({"bucket0": r.handover[0], "rest": max(r.handover) - r.handover[0],
                                  "step": r.end, "step_less_wait": r.end - wait})
    if rank == 0:
        queue.put(out)
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="per mode and round")
    p.add_argument("--warmup", type=int, default=3, help="steps of each mode's round left out")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = 29600 + os.getpid() % 1000
    t0 = time.monotonic()
    procs = [ctx.Process(target=rank_main, args=(r, args, port, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    got = queue.get()
    for proc in procs:
        proc.join()
    table = {}
    print(f"{'mode':>10} | {'bucket0 ms':>10} {'rest ms':>8} {'step ms':>8} {'step-wait ms':>12} | steps")
    for name, rows in got.items():
        med = {k: statistics.median(r[k] for r in rows) * 1e3 for k in rows[0]}
        table[name] = {k: round(v, 1) for k, v in med.items()} | {"steps": len(rows)}
        print(f"{name:>10} | {med['bucket0']:>10.1f} {med['rest']:>8.1f} {med['step']:>8.1f} "
              f"{med['step_less_wait']:>12.1f} | {len(rows)}")
    print(json.dumps({"bench": "compute_inflation", "rounds": args.rounds, "steps": args.steps,
                      "load": os.getloadavg()[0], "wall_s": round(time.monotonic() - t0), "modes": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
