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
  fixed cluster does not scale), no Train metrics; the controller polls its workers every 0.25 s.
- Ray Tune, per trial (``share_report_queue``): no new queue actor (``TuneReportCallback``'s channel from
  the Train controller to the trainable); the trainable process, reused from trial to trial, keeps one.

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
    # The controller polls its workers every 0.25 s, not 2: it sees a worker group start and a trial end
    # sooner (bench/startup.py: from one trial's last report to the next trial's trainable 1.3 s instead of
    # 2.2-2.8 s); it costs one small call per worker per poll, about 0.6% of a core more while training.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
LOCAL_SYSTEM_CONFIG = {"enable_metrics_collection": False}  # every Ray process's metrics export
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
# Per-trial actors that a lean trial does not start (what tests/test_e2e.py looks for).
DROPPED_ACTORS = ("DatasetManager", "PreemptionWatcher", "PlacementGroupCleaner")
SHARED_ACTORS = ("_QueueActor",)  # per-trial actors a lean sweep starts once per trainable process instead
_report_queue = None  # this trainable process's queue actor (share_report_queue)


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


class ReportQueue:
    """The channel from a trial's Train controller (``TuneReportCallback`` puts each report) to its
    trainable (Tune's session gets them), as Ray's ``util.queue.Queue`` with one difference: Tune's
    session asks for the next report every 0.2 s, and each ask was a call to the queue actor (about 2%
    of a core while training). Here one ask waits in the actor until a report comes, and the session's
    0.2 s polls wait on that ask locally, without a call. One consumer, so nothing is reordered."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self._queue = Queue(1, actor_options={"num_cpus": 0})  # as Tune makes it
        self._asked = None  # the outstanding ask (an object ref), answered by the next report

    def __getstate__(self) -> dict:
        return {"_queue": self._queue, "_asked": None}  # the controller's copy only puts

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        self._queue.put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None):
        import ray
        from ray.util.queue import Empty

        if self._asked is None:
            if not block:
                return self._queue.get(block=False)
            self._asked = self._queue.actor.get.remote(None)
        ready, _ = ray.wait([self._asked], timeout=timeout if block else 0)
        if not ready:
            raise Empty
        asked, self._asked = self._asked, None
        return ray.get(asked)

    def drain(self) -> None:
        """Drop what a trial that ended without its trainable reading everything left behind."""
        from ray.util.queue import Empty

        while True:
            try:
                self.get(block=False)
            except Empty:
                return


def share_report_queue() -> None:
    """Give this trial's Tune session the trainable process's one ``ReportQueue`` instead of the queue
    actor ``TuneReportCallback`` would start per trial (a process: about 1 s of CPU while a trial starts).
    Emptied first: a failed trial's last result must not reach the next."""
    global _report_queue
    from ray.train._internal.session import get_session

    if _report_queue is None:
        _report_queue = ReportQueue()
    _report_queue.drain()
    get_session()._inter_actor_queue = _report_queue
