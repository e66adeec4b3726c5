"""Starting or joining Ray, what the cluster holds, and how to watch it (dashboard and token)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import ray

# Set in every Ray worker process of the job (the runtime environment). Train's worker-group start
# timeout keeps its default (60 s): a worker group that cannot start in time is rescheduled, without
# limit, by Train V2's failure policy (a retryable controller error), so a trial that waits for busy
# resources still queues, and the wait shows in the log every minute instead of being hidden. A
# bundle that fits no node is rejected before the sweep starts (sweep.check_fits).
JOB_ENV: dict[str, str] = {}
VERBOSE_ENV = "RAYBENCH_RAY_LOGS"  # "1" in the job's processes under --verbose: Train's routine lines stay
# Ray Train 2.60's routine INFO lines, one per attempt, rank or epoch, kept off the console unless --verbose.
# Its other INFO lines stay: "[FailurePolicy] RETRY/RAISE" with the error (a worker failed, a worker group
# could not be placed in time), preemption. Train's LoggingConfig cannot tell these apart (one level for all
# of "ray.train"), and its dictConfig resets the levels of "ray.train.*" loggers, so each gets a filter.
ROUTINE_TRAIN_LOGGERS = (
    "ray.train.v2._internal.execution.scaling_policy.scaling_policy",  # Requesting resources: ...
    "ray.train.v2._internal.execution.worker_group.worker_group",  # Attempting to start / Started ... worker group
    "ray.train.torch.config",  # Setting up process group for: env:// [rank=..., world_size=...]
    "ray.train.v2._internal.execution.storage",  # Checkpoint successfully created at: ...
)
# "Reporting training result N: TrainingReport(... metrics={'raybench_row': '...the whole row...'})", once per
# report and rank, goes through a logger named by its file's path (logging.getLogger(__file__)), under ray/.
TRAIN_REPORT_LOGGER = ("train", "v2", "_internal", "execution", "context.py")


def _warnings_and_errors(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def worker_setup() -> None:
    """Runs first in every Ray worker process of the sweep's job (runtime_env's worker_process_setup_hook).

    Pins RAY_ADDRESS to this cluster (Train's PlacementGroupCleaner looks the cluster up by address and,
    where several Ray clusters run on one machine, otherwise dies with a traceback on the console) and,
    unless --verbose, lets only warnings and errors through Train's routine loggers (ROUTINE_TRAIN_LOGGERS,
    TRAIN_REPORT_LOGGER; Train's own log files lose those lines too). Never raises: a failing hook would
    make Ray end the worker.
    """
    try:
        if not os.environ.get("RAY_ADDRESS"):
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        if os.environ.get(VERBOSE_ENV) != "1":
            report = str(Path(ray.__file__).parent.joinpath(*TRAIN_REPORT_LOGGER))
            for name in (*ROUTINE_TRAIN_LOGGERS, report):
                logging.getLogger(name).addFilter(_warnings_and_errors)
    except Exception:  # noqa: BLE001 - only the console's tidiness is at stake
        pass


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = True) -> bool:
    """Join ``address`` or start a local Ray in-process, its dashboard and ports on 127.0.0.1.

    Returns whether this call started (and so should shut down) the Ray session; an already
    initialised session (a notebook, a test module) is used as it is. Ray's own start-up lines
    (started or joined, and where) are always logged; with ``verbose`` false the driver's ``ray``
    loggers then keep only warnings and errors (Tune's INFO lines, for one).
    """
    if ray.is_initialized():
        return False
    env = JOB_ENV | {VERBOSE_ENV: "1" if verbose else "0"}
    if not address:
        from raybench.driver import lean  # Ray Train (and so torch): only when a local Ray starts

        env |= lean.LOCAL_JOB_ENV
    runtime_env = {"env_vars": env, "worker_process_setup_hook": f"{__name__}.{worker_setup.__name__}"}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Ray's gRPC ports listen on every interface (Ray 2.60 cannot keep them on loopback); a new
        # local cluster has token authentication on by default, so they refuse callers without
        # this machine's token (~/.ray/auth_token). tests/test_e2e.py checks both. The control plane
        # is lean (driver.lean): no usage stats (unless the user set RAY_USAGE_STATS_ENABLED), no metrics.
        os.environ.setdefault(lean.USAGE_STATS_ENV, "0")
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", include_dashboard=None, _system_config=lean.LOCAL_SYSTEM_CONFIG)
    if not verbose:
        logging.getLogger("ray").setLevel(logging.WARNING)
    return True


def cluster_capacity() -> list[dict[str, float]]:
    """CPUs and GPUs of every node that is up, one dict per node (a worker's bundle must fit one)."""
    return [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes() if n.get("Alive")]


def dashboard_url() -> str | None:
    """The dashboard of the Ray this process is connected to, as http://HOST:PORT; None without one."""
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()  # what ray.init's own message shows
    except Exception:  # noqa: BLE001 - not connected, or an internal API that moved
        return None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def token_auth_enabled() -> bool:
    """Whether this Ray asks for a token (token authentication, the default of a new local Ray in 2.60)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # noqa: BLE001 - an internal API that moved: say how to get a token anyway
        return True


def ray_cli() -> str:
    """The ``ray`` command of this environment (beside this Python when it is not on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    return "ray" if shutil.which("ray") or not beside.is_file() else str(beside)


TOKEN_COMMAND = "get-auth-token"  # `ray get-auth-token`: prints the token this machine's Ray uses


def dashboard_lines(address: str | None) -> list[str]:
    """How to open the dashboard: its address and, where Ray wants one, how to get the token."""
    url = dashboard_url()
    if url is None:
        return ["dashboard: not running (it needs ray[default])"]
    port = url.rsplit(":", 1)[-1]
    where = f" (on this machine; from another: ssh -L {port}:127.0.0.1:{port} THIS_HOST)" if not address else ""
    lines = [f"dashboard: {url}{where}"]
    if token_auth_enabled():
        on = "here" if not address else "here (the token this sweep joined with) or on the head node"
        lines.append(f"  it asks for a token: run `{ray_cli()} {TOKEN_COMMAND}` {on} and paste what it prints "
                     "(API clients: header 'Authorization: Bearer TOKEN')")
    return lines
