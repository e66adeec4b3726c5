"""raybench.netem: the shaping is real, and a 2-worker trial runs across a two-namespace Ray cluster.

Linux and root only (network namespaces, tc / TUN): skipped elsewhere with the reason
``raybench.netem.available()`` gives. The cluster test also needs the offline CIFAR-10 copy
(``RAYBENCH_DATA``). Every test checks that nothing is left behind: namespaces, processes, files.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from raybench import netem

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(netem.available() is not None, reason=str(netem.available()))

# The link probe (round trips, a bulk transfer) is the network-fidelity benchmark's, which also
# reports the precise figures: how close the round trip and the rate come to the shaping.
_spec = importlib.util.spec_from_file_location("network_fidelity", REPO / "bench" / "network_fidelity.py")
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)
measure = fidelity.measure_link


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
    """20 ms one way at 40 Mbit/s: no round trip beats 40 ms, no bulk transfer beats 40 Mbit/s, and a
    reshape to a longer delay applies at once. These bounds hold on any machine under any load (the
    shaping only ever holds packets back); how close the link comes to them is a measurement, made
    by bench/network_fidelity.py's link section."""
    rate, delay, nbytes = 40.0, 20.0, 4_000_000
    with netem.ShapedPair(rate, delay, start_ray=False) as pair:
        got = measure(pair, pings=5, nbytes=nbytes)
        assert got["rtt_min_ms"] >= 2 * delay, got  # every round trip crossed the delay both ways
        assert got["bulk_s"] >= nbytes * 8 / (rate * 1e6) + 2 * delay / 1e3, got  # the bytes at the rate, the answer
        pair.shape(None, 30.0)
        assert measure(pair, pings=5)["rtt_min_ms"] >= 60.0  # the new delay is in force: 40 ms no longer
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
