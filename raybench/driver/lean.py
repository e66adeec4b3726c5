"""The lean control plane of a local sweep: what Ray runs beside the workers that a sweep on a fixed,
local, in-process Ray does not use, turned off (``bench/startup.py`` and ``bench/overhead.py`` measure it).

Every Ray actor is a Python process of its own (about 1.5 s of CPU to start, and a little CPU while it
lives), so on a small machine each one counts, per trial. On a local Ray (``session.init_ray`` without
``--address``):

- Ray: no usage stats, no metrics collection (nothing scrapes them); the dashboard stays (the sweep
  prints how to open it).
- Ray Train, per trial (``LeanTrainer``): no DatasetManager actor (raybench passes Train no Ray
  Datasets: each worker reads its CIFAR-10 from the object store), no PreemptionWatcher actor (a local
  machine is not preempted), no PlacementGroupCleaner actor (it frees a dead controller's placement
  group; the local Ray ends with the sweep), no requests to Ray Data's AutoscalingCoordinator actor (a
  fixed cluster does not scale), no Train metrics; the controller polls its workers every second.

Joining a cluster (``--address``), Train keeps all of it: there, nodes are preempted and clusters scale.
Ray Train's own names below are internal (pinned Ray, see pyproject.toml); ``tests/test_e2e.py`` checks
which actors a trial starts.
"""
from __future__ import annotations

import os

from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

LOCAL_ENV_VAR = "RAYBENCH_LOCAL_RAY"  # "1" in the job's processes when the sweep started its own Ray
# Set in every process of a local sweep's job; Ray Train reads them in the trainable and passes them on.
LOCAL_JOB_ENV = {
    LOCAL_ENV_VAR: "1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one PreemptionWatcher actor per trial
    "RAY_TRAIN_METRICS_ENABLED": "0",  # Train's controller and worker metrics callbacks
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",  # the controller polls its workers every second, not 2: a trial's
    # end is seen sooner (one small call per worker per poll)
}
LOCAL_SYSTEM_CONFIG = {"enable_metrics_collection": False}  # every Ray process's metrics export
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
# Per-trial actors that a lean trial does not start (what tests/test_e2e.py looks for).
DROPPED_ACTORS = ("DatasetManager", "PreemptionWatcher", "PlacementGroupCleaner")


def is_local() -> bool:
    """Whether this process belongs to a sweep that started its own local Ray."""
    return os.environ.get(LOCAL_ENV_VAR) == "1"


class FixedLocalScalingPolicy(FixedScalingPolicy):
    """Train's fixed scaling policy without the AutoscalingCoordinator: on a fixed cluster there is
    nothing to ask for (Train would create the coordinator actor and call it every poll)."""

    def after_controller_start(self, train_run_context) -> None:
        self._requester_id = f"train-{train_run_context.run_id}"

    def _maybe_send_resource_request(self) -> None:
        pass

    def _send_resource_request(self) -> None:
        pass


class LeanTrainer(DataParallelTrainer):
    """A trainer whose controller starts no DatasetManager or PlacementGroupCleaner actor and asks
    no AutoscalingCoordinator (for a local sweep only; see the module's docstring)."""

    def _initialize_and_run_controller(self, **kwargs):
        kwargs["callbacks"] = [c for c in kwargs["callbacks"]
                               if not isinstance(c, DatasetsCallback | PlacementGroupCleanerCallback)]
        policy = kwargs.get("scaling_policy")
        if type(policy) is FixedScalingPolicy:
            kwargs["scaling_policy"] = FixedLocalScalingPolicy(policy.scaling_config)
        return super()._initialize_and_run_controller(**kwargs)
