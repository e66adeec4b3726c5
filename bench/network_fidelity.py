"""Network fidelity: is the simulated link as slow as a really shaped one? (run by hand; Linux, root)

The same 2-worker ResNet-20 v1 trial (a fixed CIFAR-10 subset, batch 64 per worker) runs twice at
every (bandwidth, latency) point:

* sim:  a local 2-CPU Ray (its own temp dir), gloo over loopback, the link simulated by the hook in
        raybench.worker.comm.hook (sweep ``network: {bandwidth_mbps: [B], latency_ms: [L]}``);
* real: a ``raybench.netem.ShapedPair`` (two namespaces, a Ray node with 1 CPU in each, so one
        worker per node), gloo over a link shaped to rate B and one-way delay L in each direction,
        the sweep's network unlimited (the hook adds nothing). One pair serves every point; it is
        reshaped in between.

The settings that correspond: the model's latency is one-way. Its 2-rank ring all-reduce of n bytes
costs 2·L + n/B: reduce-scatter, then all-gather, each one trip of n/2 bytes with both ranks
sending at once. On the shaped link each of those trips costs delay L plus n/2 at rate B each way,
so the real link is ``delay L rate B`` on *both* ends (netem's syntax; RTT = 2·L), not delay L/2.
Two things the model leaves out, which the "collective" section (one step's two DDP buckets
all-reduced alone on the shaped link, against the model) shows apart from the training noise:
gloo's TCP transport only sends a message once the receiver has announced its buffer
(NOTIFY_RECV_READY), so a lone 2-rank all-reduce costs about 4·L + n/B, not 2·L + n/B; and gloo
runs the two buckets' all-reduces at once (two worker threads), while the hook queues both
latency terms one after the other. For ResNet-20's two buckets the two errors about cancel.

Before any of that, the "link" section checks the shaping itself: one TCP connection across the
shaped link, its median round trip against 2·L and its steady bulk rate against B (the goal: both
within 15 %; ``tests/test_netns.py`` only checks the bounds the shaping guarantees, which no machine
load can break).

The sim and real runs of a point go back to back, in alternating order, so that on a shared
machine both see about the same load; ``--repeat`` runs every point again (interleaved rounds).
Prints a table, then one JSON line: per point the mean epoch time of the epochs after the first
(and of all epochs; and the fastest epoch, which other people's load disturbs least) on both
sides, and real/sim. The goal is every ratio within 5 %.

    python bench/network_fidelity.py --data /work/data       # ~15 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from raybench import netem  # noqa: E402
from raybench.results import read_results  # noqa: E402
from raybench.worker.comm.link import Link, allreduce_seconds  # noqa: E402


def sweep_yaml(name: str, bandwidths: list, latencies: list[float], args: argparse.Namespace) -> str:
    return json.dumps({  # JSON is YAML
        "name": name, "model": {"arch": "resnet", "depth": [20], "version": ["v1"]}, "workers": [2],
        "hardware": ["cpu"], "cpus_per_worker": 1,
        "network": {"bandwidth_mbps": bandwidths, "latency_ms": latencies},
        "algorithm": [getattr(args, "algorithm", "allreduce")], "powersgd": {"start_iter": 10},
        "schedule": {"batch_per_worker": args.batch, "lr_per_256": 0.1, "warmup_epochs": 1, "milestones": [100],
                     "epochs": args.epochs},
        "goal": {"target_top1": 0.5, "time_budget_s": 3600, "stop_at_target": False},
        "data": {"train_images": args.train_images, "test_images": args.test_images}, "seed": [0],
    }, indent=1)


# One DDP step's communication for ResNet-20 v1, alone: its two gradient buckets (DDP's 1 MB first
# bucket, then the rest), all-reduced asynchronously as DDP issues them, across the shaped link.
BUCKETS = (1_049_000, 29_888)
COLLECTIVE = """
import json, statistics, sys, time
import torch, torch.distributed as dist
rank, addr, iters = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sizes = [int(x) for x in sys.argv[4].split(",")]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://{addr}:29517", rank=rank, world_size=2)
bufs = [torch.ones(n // 4) for n in sizes]
times = []
for i in range(iters + 2):
    dist.barrier()
    time.sleep(0.2)  # the idle gap of a backward pass
    dist.barrier()
    t0 = time.perf_counter()
    for w in [dist.all_reduce(b, async_op=True) for b in bufs]:
        w.wait()
    times.append(time.perf_counter() - t0)
if rank == 0:
    print(json.dumps({"median_s": statistics.median(times[2:]), "min_s": min(times[2:])}))
dist.destroy_process_group()
"""


# The link alone (tests/test_netns.py uses these too): one TCP connection from the head namespace to
# the worker namespace, small-message round trips, then a bulk transfer whose steady rate (from a
# quarter of the way in to the end, so TCP's slow start is left out) the receiver measures; the
# client also times the whole transfer (first byte sent to the receiver's answer).
LINK_SERVER = """
import json, socket, sys, time
pings, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[3], 5001)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(pings):
    c.sendall(c.recv(64))
got, mark = 0, None
while got < n:
    got += len(c.recv(1 << 20))
    if mark is None and got >= n // 4:
        mark = (time.monotonic(), got)
c.sendall(json.dumps({"rate_mbit": (got - mark[1]) * 8 / max(time.monotonic() - mark[0], 1e-9) / 1e6}).encode())
"""
LINK_CLIENT = """
import json, socket, statistics, sys, time
pings, n = int(sys.argv[1]), int(sys.argv[2])
c = socket.create_connection((sys.argv[3], 5001), timeout=60)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(pings):
    t = time.monotonic(); c.sendall(b"x" * 32); c.recv(64); rtts.append(time.monotonic() - t)
t = time.monotonic()
c.sendall(bytes(n))
out = json.loads(c.recv(1000))
bulk_s = time.monotonic() - t
print(json.dumps({"rtt_ms": statistics.median(rtts) * 1e3, "rtt_min_ms": min(rtts) * 1e3,
                  "rate_mbit": out["rate_mbit"], "bulk_s": bulk_s}))
"""


def measure_link(pair: netem.ShapedPair, pings: int = 5, nbytes: int = 0) -> dict[str, float]:
    """Round trips (median and fastest, ms) and a bulk transfer of ``nbytes`` (receiver's steady rate in
    Mbit/s, client's whole-transfer seconds) on the pair's link as shaped now."""
    n = str(max(nbytes, 1))
    server = pair.popen_in(pair.work_ns, [sys.executable, "-c", LINK_SERVER, str(pings), n, pair.work_ip],
                           stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "listening":
            raise RuntimeError("the link probe's server did not start")
        client = pair.run_in_head([sys.executable, "-c", LINK_CLIENT, str(pings), n, pair.work_ip], timeout=120)
        if client.returncode != 0:
            raise RuntimeError(f"the link probe failed: {client.stderr[-2000:]}")
        server.wait(30)
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
    return json.loads(client.stdout)


def link_probe(pair: netem.ShapedPair, b: float, lat: float) -> dict[str, float | None]:
    """The shaping at one point against what it was set to: round trip vs 2·L, bulk rate vs B."""
    got = measure_link(pair, pings=5, nbytes=int(max(4e6, b * 1e6 / 8)))  # at least 1 s at rate B
    return {"rtt_ms": round(got["rtt_ms"], 2), "rtt_ratio": round(got["rtt_ms"] / (2 * lat), 4) if lat else None,
            "rate_mbit": round(got["rate_mbit"], 2), "rate_ratio": round(got["rate_mbit"] / b, 4)}


def collective(pair: netem.ShapedPair, iters: int = 10) -> dict[str, float]:
    """Median time of one step's all-reduces (BUCKETS) on the pair's link as shaped now."""
    args = [pair.head_ip, str(iters), ",".join(map(str, BUCKETS))]
    peer = pair.popen_in(pair.work_ns, [sys.executable, "-c", COLLECTIVE, "1", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p = pair.run_in_head([sys.executable, "-c", COLLECTIVE, "0", *args], timeout=300)
        peer.wait(60)
    finally:
        peer.kill()
        peer.wait()
    if p.returncode != 0:
        raise RuntimeError(f"collective benchmark failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarize(runs: list[pd.DataFrame]) -> dict[str, float] | None:
    """One side of one point, over its repeats."""
    if not runs:
        return None
    every = pd.concat(runs)
    later = every[every.epoch > 1]
    later = later if len(later) else every
    return {"epoch_s": float(later.epoch_seconds.mean()), "epoch_s_min": float(later.epoch_seconds.min()),
            "epoch_s_all": float(every.epoch_seconds.mean()), "comm_s": float(later.comm_seconds.mean()),
            "compute_s": float(later.compute_seconds.mean()),
            "simulated_s": float(later.simulated_delay_seconds.mean()), "epochs": int(len(every))}


def run(label: str, cmd: list[str], log: Path, env: dict[str, str], runner=None, timeout: float = 3600) -> float:
    """Run one sweep CLI; returns the 1-minute load average when it ended (other people's work shows there)."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        if runner is None:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout)
        else:
            p = runner(cmd, env=env, timeout=timeout, cwd=REPO, capture_output=False, stdout=f,
                       stderr=subprocess.STDOUT)
    load = os.getloadavg()[0]
    print(f"  {label}: rc {p.returncode}, {time.monotonic() - t0:.0f} s, load {load:.1f} ({log.name})", flush=True)
    if p.returncode != 0:
        raise RuntimeError(f"failed ({p.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return load


def retried(fn, *args, tries: int = 2) -> None:
    """On a shared machine a run can die of other people's doings (a raylet killed under it): once more."""
    for attempt in range(tries):
        try:
            return fn(*args)
        except RuntimeError as e:
            if attempt == tries - 1:
                raise SystemExit(str(e)) from None
            print(f"  retrying: {str(e).splitlines()[0]}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("RAYBENCH_DATA"), help="offline CIFAR-10 (default $RAYBENCH_DATA)")
    p.add_argument("--out", help="keep sweeps, results and logs here (default: a new temporary folder)")
    p.add_argument("--bandwidths", type=float, nargs="+", default=[1000, 100, 20], help="Mbit/s")
    p.add_argument("--latencies", type=float, nargs="+", default=[0, 5], help="one-way, ms")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--test-images", type=int, default=512)
    p.add_argument("--batch", type=int, default=64, help="per worker")
    p.add_argument("--algorithm", default="allreduce", help="the trials' algorithm (allreduce, fp16, powersgd, ...)")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all points (interleaved)")
    p.add_argument("--backend", default="auto", choices=netem.BACKENDS, help="how the real link is shaped")
    p.add_argument("--only", choices=["sim", "real"], help="run one side only (no ratios)")
    p.add_argument("--no-link", action="store_true", help="skip the round-trip and bulk-rate probe of the link")
    p.add_argument("--no-collective", action="store_true", help="skip the all-reduce-only measurement")
    p.add_argument("--no-training", action="store_true", help="only the all-reduce-only measurement")
    args = p.parse_args()
    if not args.data:
        p.error("--data or RAYBENCH_DATA is required (the offline CIFAR-10 copy)")
    why = netem.available()
    if why and args.only != "sim":
        raise SystemExit(f"cannot shape a real link here: {why}")
    out = Path(args.out or tempfile.mkdtemp(prefix="rb-fidelity-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    points = [(b, lat) for b in args.bandwidths for lat in args.latencies]
    print(f"network fidelity: {len(points)} points x {args.repeat} round(s), {args.epochs} epochs of "
          f"{args.train_images} images, batch {args.batch}/worker, 2 workers; work in {out}", flush=True)
    runs: dict[tuple[float, float], dict[str, list]] = {pt: {"sim": [], "real": [], "link": [], "load": []}
                                                       for pt in points}
    t_start = time.monotonic()
    attempts = itertools.count()

    def sim(b: float, lat: float, k: int) -> None:
        name = f"fidelity_sim_bw{b:g}_lat{lat:g}_r{k}_{next(attempts)}"
        (out / f"{name}.yaml").write_text(sweep_yaml(name, [b], [lat], args))
        ray_tmp = tempfile.mkdtemp(prefix="rbf-", dir="/tmp")  # short: Ray's socket paths must fit
        env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
        for key in ("RAY_ADDRESS", "GLOO_SOCKET_IFNAME"):
            env.pop(key, None)
        try:
            load = run("sim ", [sys.executable, "-m", "raybench.sweep", str(out / f"{name}.yaml"), "--data", args.data,
                                "--results", str(out / "results")], out / f"{name}.log", env)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        runs[(b, lat)]["sim"].append(read_results(out / "results" / name))
        runs[(b, lat)]["load"].append(load)

    def real(pair: netem.ShapedPair, b: float, lat: float, k: int) -> None:
        pair.shape(b, lat)
        name = f"fidelity_real_bw{b:g}_lat{lat:g}_r{k}_{next(attempts)}"
        (out / f"{name}.yaml").write_text(sweep_yaml(name, ["unlimited"], [0], args))
        before = pair.link_bytes()
        load = run("real", [sys.executable, "-m", "raybench.sweep", str(out / f"{name}.yaml"), "--data", args.data,
                            "--results", str(out / "results"), "--address", pair.address], out / f"{name}.log",
                   pair.env, runner=pair.run_in_head)
        after = pair.link_bytes()
        runs[(b, lat)]["real"].append(read_results(out / "results" / name))
        runs[(b, lat)]["load"].append(load)
        runs[(b, lat)]["link"].append({
            "mb_sent": {ns.split("-")[1]: round((after[ns]["tx_bytes"] - before[ns]["tx_bytes"]) / 1e6, 1)
                        for ns in pair.namespaces},
            "dropped": sum(after[ns][key] - before[ns][key] for ns in pair.namespaces
                           for key in ("tx_dropped", "rx_dropped"))})

    backend = None
    coll: dict[tuple[float, float], dict] = {}
    link: dict[tuple[float, float], dict] = {}
    with (netem.ShapedPair(*points[0], backend=args.backend, start_ray=not args.no_training)
          if args.only != "sim" else contextlib.nullcontext()) as pair:
        if pair is not None:
            backend = pair.backend
            print(f"real link: ShapedPair, backend {pair.backend}"
                  + ("" if args.no_training else f", Ray at {pair.address} ({len(pair.nodes)} nodes, 1 CPU each)"),
                  flush=True)
            if not args.no_link:
                print("link: one TCP connection's round trip (vs 2 x one-way delay) and steady bulk rate "
                      "(vs the shaped rate)", flush=True)
                for b, lat in points:
                    pair.shape(b, lat)
                    link[(b, lat)] = got = link_probe(pair, b, lat)
                    print(f"  {b:>6g} Mbit/s {lat:>3g} ms: round trip {got['rtt_ms']:7.2f} ms "
                          f"(x{got['rtt_ratio'] if got['rtt_ratio'] is not None else '-'}), "
                          f"rate {got['rate_mbit']:8.2f} Mbit/s (x{got['rate_ratio']})", flush=True)
            if not args.no_collective:
                print("collective: one step's all-reduces (ResNet-20 buckets "
                      f"{', '.join(f'{n / 1e6:.3f}' for n in BUCKETS)} MB) across the shaped link", flush=True)
                for b, lat in points:
                    pair.shape(b, lat)
                    got = collective(pair)
                    model = sum(allreduce_seconds(n, 2, Link(b, lat)) for n in BUCKETS)
                    coll[(b, lat)] = {"model_ms": round(model * 1e3, 2), "real_ms": round(got["median_s"] * 1e3, 2),
                                      "ratio": round(got["median_s"] / model, 4)}
                    print(f"  {b:>6g} Mbit/s {lat:>3g} ms: model {model * 1e3:7.2f} ms, "
                          f"real {got['median_s'] * 1e3:7.2f} ms"
                          f" (real - model {(got['median_s'] - model) * 1e3:+.2f} ms)", flush=True)
        i = 0
        for k in range(0 if args.no_training else args.repeat):
            for b, lat in points:
                print(f"round {k + 1}: {b:g} Mbit/s, {lat:g} ms one way", flush=True)
                for side in (["sim", "real"] if i % 2 == 0 else ["real", "sim"]):
                    if side == "sim" and args.only != "real":
                        retried(sim, b, lat, k)
                    elif side == "real" and pair is not None:
                        retried(real, pair, b, lat, k)
                i += 1

    def ratio(sm, rl, key):
        return round(rl[key] / sm[key], 4) if sm and rl else None

    def fmt(d, key, spec=".2f"):
        return "-" if d is None else format(d[key], spec)

    head = (f"{'Mbit/s':>6} {'lat ms':>6} | {'sim s':>6} {'(delay)':>7} | {'real s':>6} {'(comm)':>6} | "
            f"{'real/sim':>8} | {'all epochs':>10} | {'fastest':>7} | {'load':>4} || {'step comm: model':>16} "
            f"{'real ms':>8} {'ratio':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    summary = []
    for (b, lat), r in runs.items():
        sm, rl = summarize(r["sim"]), summarize(r["real"])
        x, x_all, x_min = ratio(sm, rl, "epoch_s"), ratio(sm, rl, "epoch_s_all"), ratio(sm, rl, "epoch_s_min")
        load = max(r["load"]) if r["load"] else float("nan")
        cl = coll.get((b, lat))
        print(f"{b:>6g} {lat:>6g} | {fmt(sm, 'epoch_s'):>6} {fmt(sm, 'simulated_s'):>7} | {fmt(rl, 'epoch_s'):>6} "
              f"{fmt(rl, 'comm_s'):>6} | {'-' if x is None else f'{x:.3f}':>8} | "
              f"{'-' if x_all is None else f'{x_all:.3f}':>10} | {'-' if x_min is None else f'{x_min:.3f}':>7} | "
              f"{load:>4.1f} || {cl['model_ms'] if cl else '-':>16} {cl['real_ms'] if cl else '-':>8} "
              f"{cl['ratio'] if cl else '-':>6}")
        summary.append({
            "bandwidth_mbps": b, "latency_ms": lat,
            "sim_epoch_s": sm and round(sm["epoch_s"], 3), "real_epoch_s": rl and round(rl["epoch_s"], 3),
            "ratio": x,
            "sim_epoch_s_all": sm and round(sm["epoch_s_all"], 3),
            "real_epoch_s_all": rl and round(rl["epoch_s_all"], 3),
            "ratio_all": x_all,
            "sim_epoch_s_min": sm and round(sm["epoch_s_min"], 3),
            "real_epoch_s_min": rl and round(rl["epoch_s_min"], 3),
            "ratio_min": x_min,
            "sim_compute_s": sm and round(sm["compute_s"], 3), "real_compute_s": rl and round(rl["compute_s"], 3),
            "sim_comm_s": sm and round(sm["comm_s"], 3), "sim_simulated_delay_s": sm and round(sm["simulated_s"], 3),
            "real_comm_s": rl and round(rl["comm_s"], 3), "real_link": r["link"],
            "collective": coll.get((b, lat)), "link_probe": link.get((b, lat)),
            "max_load": round(load, 1)})
    ratios = [s["ratio"] for s in summary if s["ratio"] is not None]
    print("(sim s, real s: mean epoch_seconds of epochs after the first; (delay): the simulated part; (comm): wait "
          "for gradients after the last bucket; fastest: ratio of the fastest epochs; load: the highest 1-min "
          "load average seen at the end of the point's runs, 2 cores; step comm: one step's all-reduces alone, "
          "the model's time vs the median on the shaped link)")
    print(json.dumps({"bench": "network_fidelity", "backend": backend, "epochs": args.epochs, "repeat": args.repeat,
                      "train_images": args.train_images, "test_images": args.test_images,
                      "batch_per_worker": args.batch, "epoch_s": "mean epoch_seconds over the epochs after the first",
                      "points": summary, "all_within_5pct": bool(ratios) and all(abs(x - 1) <= 0.05 for x in ratios),
                      "link_within_15pct": None if not link else all(
                          abs(v - 1) <= 0.15 for got in link.values() for v in (got["rtt_ratio"], got["rate_ratio"])
                          if v is not None),
                      "wall_s": round(time.monotonic() - t_start)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
