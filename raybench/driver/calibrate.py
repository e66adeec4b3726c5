"""The Ray side of ``python -m raybench.calibrate``: ranks placed on the cluster's nodes, a gloo group
among them, the timings of ``worker.comm.measure`` brought back to the driver.

Each pass starts fresh actors (``num_cpus=0``: they time the network, not the CPUs, and fit beside
anything else), pinned to nodes with a hard node affinity, then joins them in one gloo process
group (``init_method=tcp://RANK0_IP:PORT``; gloo picks its interface from ``GLOO_SOCKET_IFNAME`` as
the trials' workers do) and runs the same measurement on every rank. The actors are killed after
the pass.

* ``network_pass(workers, ...)``: one rank per node where the cluster has that many nodes (every
  hop of the ring crosses the network), otherwise round-robin over the nodes (``shared`` in the
  result says so: hops between ranks on one node do not cross it).
* ``loopback_pass(...)``: two ranks on the driver's node over ``lo``: gloo's own per-collective
  cost without a network, which the calibration takes as the profile's overhead.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _boost() -> None:
    """Run every thread of this process ahead of other work on a shared machine, where allowed (root):
    the timings are then the link's, not a queue for a CPU. Without the permission nothing changes."""
    import contextlib
    import os

    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(tid), -20)  # Linux: a thread's own nice value


@ray.remote(num_cpus=0)
class _Rank:
    """One rank of the calibration's process group."""

    def __init__(self) -> None:
        _boost()

    def where(self) -> dict[str, str]:
        import os

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "host": socket.gethostname(), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME", "")}

    def free_port(self, host: str) -> int:
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]

    def listen(self, host: str) -> int:
        """Open a TCP server on ``host`` for ``echo``; its port."""
        self._server = socket.create_server((host, 0))
        return self._server.getsockname()[1]

    def echo(self) -> None:
        """Answer one client's messages, byte for byte, until it closes."""
        _boost()
        conn, _ = self._server.accept()
        with conn, self._server:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(64):
                conn.sendall(data)

    def ping(self, host: str, port: int, count: int) -> list[float]:
        """Round trips (seconds) of a 1-byte message to ``echo`` at ``host:port``, one after another."""
        _boost()
        times = []
        with socket.create_connection((host, port), timeout=60) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(count):
                t0 = time.perf_counter()
                s.sendall(b"x")
                if not s.recv(64):
                    raise ConnectionError("the echo server closed the connection")
                times.append(time.perf_counter() - t0)
        return times

    def measure(self, rank: int, world: int, master: str, port: int, plan: dict[str, Any]) -> dict[str, Any]:
        import torch.distributed as dist

        from raybench.worker.comm.measure import allreduce_times, bucket_times

        dist.init_process_group("gloo", init_method=f"tcp://{master}:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=plan["timeout_s"]))
        _boost()  # gloo's own threads too
        try:
            out: dict[str, Any] = {"allreduce": allreduce_times(plan["sizes"], plan["repeats"])}
            if plan.get("buckets"):
                out["buckets"] = bucket_times(plan["bucket_bytes"], plan["buckets"], plan["repeats"])
            dist.barrier()
            return out
        finally:
            dist.destroy_process_group()


def nodes_in_order() -> list[dict[str, Any]]:
    """Alive nodes, the driver's own node first (rank 0 and the loopback pass run there)."""
    here = ray.get_runtime_context().get_node_id()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return sorted(alive, key=lambda n: (n["NodeID"] != here, n["NodeManagerAddress"]))


def _run(node_ids: Sequence[str], plan: dict[str, Any], env: dict[str, str] | None,
         master: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    ranks = [_Rank.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False), **opts).remote()
             for n in node_ids]
    try:
        where = ray.get([r.where.remote() for r in ranks], timeout=plan["timeout_s"])
        master = master or where[0]["ip"]
        port = ray.get(ranks[0].free_port.remote(master), timeout=plan["timeout_s"])
        per_rank = ray.get([r.measure.remote(i, len(ranks), master, port, plan) for i, r in enumerate(ranks)],
                           timeout=plan["timeout_s"])
        pings = []
        if plan.get("pings"):  # each hop of the ring, rank i to rank i+1, one hop at a time
            hops = [(i, (i + 1) % len(ranks)) for i in range(len(ranks) if len(ranks) > 2 else 1)]
            for i, j in hops:
                host = "127.0.0.1" if env else where[j]["ip"]
                port_j = ray.get(ranks[j].listen.remote(host), timeout=plan["timeout_s"])
                served = ranks[j].echo.remote()
                pings.append(ray.get(ranks[i].ping.remote(host, port_j, plan["pings"]), timeout=plan["timeout_s"]))
                ray.get(served, timeout=plan["timeout_s"])
    finally:
        for r in ranks:
            ray.kill(r)
    return {"where": where, "per_rank": per_rank, "pings": pings}


def network_pass(workers: int, plan: dict[str, Any]) -> dict[str, Any]:
    """``workers`` ranks, one per node where the cluster has enough nodes (round-robin otherwise)."""
    nodes = nodes_in_order()
    ids = [nodes[i % len(nodes)]["NodeID"] for i in range(workers)]
    out = _run(ids, plan, env=None, master=None)
    out["shared"] = len(set(ids)) < workers
    return out


def loopback_pass(plan: dict[str, Any]) -> dict[str, Any]:
    """Two ranks on the driver's node, talking over ``lo``."""
    here = nodes_in_order()[0]["NodeID"]
    out = _run([here, here], plan, env={"GLOO_SOCKET_IFNAME": "lo"}, master="127.0.0.1")
    out["shared"] = True
    return out


def run(address: str | None, workers: Sequence[int], plan: dict[str, Any], loopback_sizes: Sequence[int]) -> dict:
    """Start or join Ray, run the loopback pass and one network pass per worker count, and say which
    versions measured; Ray is shut down again if this call started it."""
    import platform
    import sys

    import torch

    from raybench.driver.session import init_ray

    started = init_ray(address)
    try:
        print(f"loopback: gloo between two ranks on one node, {len(loopback_sizes)} sizes", flush=True)
        loop = loopback_pass(plan | {"sizes": list(loopback_sizes), "buckets": 0})
        runs = {}
        for p in workers:
            print(f"network: {p} ranks, {len(plan['sizes'])} sizes x {plan['repeats']}, {plan['buckets']} buckets of "
                  f"{plan['bucket_bytes']:,} bytes", flush=True)
            runs[p] = network_pass(p, plan)
            if runs[p]["shared"]:
                print(f"warning: the cluster has fewer than {p} nodes; ranks share nodes, and hops between ranks "
                      "on one node do not cross the network", file=sys.stderr)
    finally:
        if started:
            ray.shutdown()
    versions = {"ray": str(ray.__version__), "torch": str(torch.__version__), "python": platform.python_version()}
    return {"loop": loop, "runs": runs, "versions": versions}
