"""The Ray cluster in a shaped pair: the ``ray start`` commands, its environment, and the probe that
checks it is what was meant.

The Ray nodes use their own ``--temp-dir`` under a private temporary folder, their own
authentication token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``, shared by both nodes and
the driver: ``pair.env``), and ``GLOO_SOCKET_IFNAME=rb0`` in their environment, which their worker
processes inherit (``ShapedPair.probe_cluster`` checks this), so gloo talks over the shaped link.
Ports live in the namespaces' own network stacks and cannot collide with a Ray on the host.

Ray is never imported here: the nodes are ``ray start`` processes inside the namespaces, and the
probe is a driver script run in the head namespace.
"""
from __future__ import annotations

import json
import os
import secrets
import textwrap
from pathlib import Path


def cluster_env(ifname: str, token_path: Path | None) -> dict[str, str]:
    """Environment for anything that joins the cluster (the nodes, the driver, ``ray`` commands)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({
        "RAY_AUTH_MODE": "token", "GLOO_SOCKET_IFNAME": ifname,
        "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
    })
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env.pop("RAY_AUTH_TOKEN", None)  # would win over the token file
    return env


def write_token(path: Path) -> None:
    """A fresh authentication token at ``path``, readable by its owner only (created, never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)


def ray_start_commands(python: str, *, head_ip: str, work_ip: str, port: int, tmp: Path, cpus: int,
                       object_store_mb: int) -> tuple[list[str], list[str]]:
    """``ray start`` for the head node (GCS at ``head_ip:port``) and for the worker node that joins it."""
    common = [f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats",
              f"--object-store-memory={object_store_mb * 2**20}"]
    ray = [python, "-m", "ray.scripts.scripts", "start"]
    head = ray + ["--head", f"--node-ip-address={head_ip}", f"--port={port}", "--include-dashboard=false",
                  f"--temp-dir={tmp / 'h'}"] + common
    work = ray + [f"--address={head_ip}:{port}", f"--node-ip-address={work_ip}", f"--temp-dir={tmp / 'w'}"] + common
    return head, work


def probe_script(address: str, timeout_s: float) -> str:
    """A driver script: wait (up to ``timeout_s``) for 2 live nodes, run one task pinned to each, and
    print ``PROBE [...]``: per node its IP, GLOO_SOCKET_IFNAME in the worker process, interfaces, resources."""
    return textwrap.dedent(f"""
        import json, os, socket, time, ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray.init(address={address!r}, log_to_driver=False)
        deadline = time.monotonic() + {timeout_s}
        while True:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            if len(nodes) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        @ray.remote(num_cpus=0)
        def look():
            return {{"ip": ray.util.get_node_ip_address(), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
                    "ifaces": sorted(n for _, n in socket.if_nameindex())}}
        out = ray.get([look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote() for n in nodes])
        for n, o in zip(nodes, out):
            o["node_id"], o["resources"] = n["NodeID"], n["Resources"]
        print("PROBE " + json.dumps(out))
    """)


def parse_probe(stdout: str) -> list[dict] | None:
    """What ``probe_script`` printed; None when it printed nothing (it failed)."""
    for line in stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return None
