"""Starting or joining Ray, and what the cluster holds."""
from __future__ import annotations

import ray

# Set in every Ray worker process of the job (the runtime environment). Train's worker-group start
# timeout keeps its default (60 s): a worker group that cannot start in time is rescheduled, without
# limit, by Train V2's failure policy (a retryable controller error), so a trial that waits for busy
# resources still queues, and the wait shows in the log every minute instead of being hidden. A
# bundle that fits no node is rejected before the sweep starts (sweep.check_fits).
JOB_ENV: dict[str, str] = {}


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join ``address`` or start a local Ray in-process, its dashboard and ports on 127.0.0.1.

    Returns whether this call started (and so should shut down) the Ray session; an already
    initialised session (a notebook, a test module) is used as it is.
    """
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": JOB_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Ray's gRPC ports listen on every interface (Ray 2.60 cannot keep them on loopback); a new
        # local cluster has token authentication on by default, so they refuse callers without
        # this machine's token (~/.ray/auth_token). tests/test_e2e.py checks both.
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", include_dashboard=None)
    return True


def cluster_capacity() -> list[dict[str, float]]:
    """CPUs and GPUs of every node that is up, one dict per node (a worker's bundle must fit one)."""
    return [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes() if n.get("Alive")]

