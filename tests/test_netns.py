"""raybench.netem: the shaping is real, and a 2-worker trial runs across a two-namespace Ray cluster.

Linux and root only (network namespaces, tc / TUN): skipped elsewhere with the reason
``raybench.netem.available()`` gives. The cluster test also needs the offline CIFAR-10 copy
(``RAYBENCH_DATA``). Every test checks that nothing is left behind: namespaces, processes, files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raybench import netem

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(netem.available() is not None, reason=str(netem.available()))

# One TCP connection from the head namespace to the worker namespace: small-message round trips,
# then a bulk transfer whose steady rate (from a quarter of the way in to the end, so TCP's slow
# start is left out) the receiver measures.
SERVER = textwrap.dedent("""
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
    c.sendall(json.dumps({"rate_mbit": (got - mark[1]) * 8 / (time.monotonic() - mark[0]) / 1e6}).encode())
""")
CLIENT = textwrap.dedent("""
    import json, socket, statistics, sys, time
    pings, n = int(sys.argv[1]), int(sys.argv[2])
    c = socket.create_connection((sys.argv[3], 5001), timeout=60)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(pings):
        t = time.monotonic(); c.sendall(b"x" * 32); c.recv(64); rtts.append(time.monotonic() - t)
    c.sendall(bytes(n))
    out = json.loads(c.recv(1000))
    print(json.dumps({"rtt_ms": statistics.median(rtts) * 1e3, "rate_mbit": out["rate_mbit"]}))
""")


def measure(pair: netem.ShapedPair, pings: int = 5, nbytes: int = 0) -> dict:
    server = pair.popen_in(pair.work_ns, [sys.executable, "-c", SERVER, str(pings), str(max(nbytes, 1)), pair.work_ip],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        client = pair.run_in_head([sys.executable, "-c", CLIENT, str(pings), str(max(nbytes, 1)), pair.work_ip],
                                  timeout=120)
        assert client.returncode == 0, client.stderr
        server.wait(30)
    finally:
        server.kill()
        server.stdout.close()
    return json.loads(client.stdout)


def left_behind(pair: netem.ShapedPair) -> list[str]:
    """What of ``pair`` still exists: namespaces, processes running from its folder, the folder."""
    left = [ns for ns in pair.namespaces if ns in netem.our_namespaces()]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(ns in cmdline for ns in pair.namespaces) or (pair.tmp and str(pair.tmp) in cmdline):
            left.append(f"process {pid}: {cmdline[:200]}")
    if pair.tmp and pair.tmp.exists():
        left.append(str(pair.tmp))
    if pair._marker is not None and pair._marker.exists():
        left.append(str(pair._marker))
    return left


def test_shaping_is_real():
    """20 ms one way: a round trip takes 40 ms; the bulk rate is the shaped rate; reshaping applies."""
    rate, delay = 40.0, 20.0
    with netem.ShapedPair(rate, delay, start_ray=False) as pair:
        got = measure(pair, pings=5, nbytes=4_000_000)
        assert got["rtt_ms"] == pytest.approx(2 * delay, rel=0.15), got
        assert got["rate_mbit"] == pytest.approx(rate, rel=0.15), got
        pair.shape(None, 5.0)
        assert measure(pair, pings=5)["rtt_ms"] == pytest.approx(10.0, rel=0.15)
        assert all(ns in netem.our_namespaces() for ns in pair.namespaces)
    assert left_behind(pair) == []


def test_cleanup_after_an_error_inside_the_block():
    with pytest.raises(RuntimeError, match="boom"):
        with netem.ShapedPair(None, 1.0, start_ray=False) as pair:
            sleeper = pair.popen_in(pair.head_ns, ["sleep", "600"])
            raise RuntimeError("boom")
    assert sleeper.poll() is not None  # killed with its namespace
    assert left_behind(pair) == []


SWEEP = """\
name: netns_smoke
model: {arch: resnet, depth: [20], version: [v1]}
workers: [2]
hardware: [cpu]
cpus_per_worker: 1
network: {bandwidth_mbps: [unlimited], latency_ms: [0]}
algorithm: [allreduce]
schedule: {batch_per_worker: 64, lr_per_256: 0.1, warmup_epochs: 1, milestones: [10], epochs: 2}
goal: {target_top1: 0.5, time_budget_s: 600, stop_at_target: false}
data: {train_images: 512, test_images: 256}
seed: 0
"""


def test_two_worker_trial_across_the_shaped_link(tmp_path):
    data = os.environ.get("RAYBENCH_DATA")
    if not data:
        pytest.skip("RAYBENCH_DATA is not set (the offline CIFAR-10 copy)")
    from raybench.results import read_results

    sweep = tmp_path / "netns_smoke.yaml"
    sweep.write_text(SWEEP)
    results = tmp_path / "results"
    with netem.ShapedPair(100, 1) as pair:
        # two nodes, one per namespace, 1 CPU each: the 2 workers must sit one per node
        assert sorted(n["ip"] for n in pair.nodes) == [pair.head_ip, pair.work_ip]
        assert all(n["resources"]["CPU"] == 1 for n in pair.nodes)
        assert all(n["gloo_ifname"] == pair.ifname for n in pair.nodes), pair.nodes  # workers inherit it
        before = pair.link_bytes()
        run = pair.run_in_head([sys.executable, "-m", "raybench.sweep", str(sweep), "--smoke", "--data", data,
                                "--results", str(results), "--address", pair.address], timeout=1200, cwd=REPO)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
        after = pair.link_bytes()
    assert left_behind(pair) == []

    rows = read_results(results / "netns_smoke")
    trial = "resnet20v1_w2_cpu_bwinf_lat0_allreduce_s0"
    assert sorted(rows.loc[rows.trial_id == trial, "epoch"]) == [1, 2]
    assert (rows.workers == 2).all()
    # gloo's gradients went over the link, both ways: 8 steps x ~1.1 MB of ResNet-20 gradients each
    for ns in pair.namespaces:
        assert after[ns]["tx_bytes"] - before[ns]["tx_bytes"] > 5e6, (before, after)
        assert after[ns]["rx_bytes"] - before[ns]["rx_bytes"] > 5e6, (before, after)
