"""Starting or joining Ray, and what the cluster holds."""
from __future__ import annotations

import ray

# Set in every Ray worker process of the job (the runtime environment).
JOB_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(7 * 24 * 3600),  # queue, do not fail, while CPUs are busy
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
}


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


def cluster_capacity() -> dict[str, float]:
    res = ray.cluster_resources()
    return {"CPU": res.get("CPU", 0.0), "GPU": res.get("GPU", 0.0)}

