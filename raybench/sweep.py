"""``python -m raybench.sweep NAME_OR_PATH``: validate a sweep, then run every trial on Ray.

Everything that can be wrong with the input is checked before Ray starts (exit code 2, one
message naming the file or flag, the value and what is allowed), and without importing torch or
ray, so ``--dry-run`` and every bad-input error answer at once; results go to
``<results>/<sweep name>/``, one Parquet file per trial.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from raybench.machine import local_capacity, local_cpus, local_gpus  # noqa: F401 - local_gpus: API
from raybench.spec import config as cfg
from raybench.spec import virtual
from raybench.worker import data as cifar

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEFAULT_MAX_TRIALS = 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.sweep", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="a sweep name (a file in sweeps/) or a path to a sweep YAML file")
    p.add_argument("--smoke", action="store_true",
                   help="shrink every trial: a few hundred images, at most 2 epochs, at most 2 CPU workers")
    p.add_argument("--data", help=f"folder holding {cifar.BATCHES}/ (default: ${cifar.ENV_VAR}, else the official "
                                  "download into ~/.cache/raybench)")
    p.add_argument("--results", default="results", help="results folder (default: results/)")
    p.add_argument("--address", help="join this Ray cluster ('auto' after `ray up`); default: a local Ray")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep in the same results folder (re-running does the same; "
                        "--resume also fails when there is nothing to continue)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the trial table; start nothing")
    p.add_argument("--max-failures", type=int, default=0,
                   help="worker failures a trial survives by restarting from its last checkpoint (default 0)")
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help=f"refuse grids with more trials than this unless --yes (default {DEFAULT_MAX_TRIALS})")
    p.add_argument("--yes", action="store_true", help="run a grid larger than --max-trials")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="run at most N trials at once (default 1: timings never share hardware; above 1 the "
                        "sweep warns that they do)")
    p.add_argument("--replay", action="store_true",
                   help="train each configuration once, at the first link of the network grid, and fill the "
                        "grid's other links by replaying its step trace (rows marked source=predicted)")
    p.add_argument("--num-cpus", type=int, metavar="N",
                   help="start the local Ray with N logical CPUs (more than the machine has runs more workers at "
                        "once, for functional checks; timings are then not meaningful); not with --address")
    p.add_argument("--reserve-cpus", type=int, default=0, metavar="N",
                   help="a local sweep leaves N of this machine's CPUs to Ray's own processes: the trials see N "
                        "fewer (default 0; on a small machine 1 keeps Ray's control plane off the workers' cores)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's logs (Ray Train's per-report lines, Tune's INFO lines); by default the "
                        "console shows one line per epoch per trial")
    return p.parse_args(argv)


@dataclass
class Plan:
    """A validated sweep: what to run, what is already done, where results go."""

    spec: cfg.SweepSpec
    trials: list[cfg.TrialSpec]
    done: list[str]  # trial ids whose results are complete
    sweep_dir: str | Path  # a local folder or a URI (s3://, gs://)
    data_root: Path
    local_data: bool
    replayed: dict[str, list[cfg.TrialSpec]] = field(default_factory=dict)  # --replay: trained id -> grid points


def _check_results(results_dir: Path) -> None:
    for parent in (results_dir, *results_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise cfg.ConfigError(f"--results {results_dir}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise cfg.ConfigError(f"--results {results_dir}: {parent} is not writable")
            return


def _earlier_results(trials: list[cfg.TrialSpec], sweep_dir: str | Path) -> list[str]:
    """Trial ids already complete in ``sweep_dir``; a file written by another configuration of the
    same trial id is an error (its rows would mix with the new ones). A complete trial that ran on
    another number of processes counts as complete (virtual workers compute the same weights); an
    unfinished one is an error (its checkpoint is per process)."""
    from raybench import results

    done = []
    for t in trials:
        path = results.trial_path(sweep_dir, t.trial_id)
        if not results.exists(path):
            continue
        try:
            _, meta = results.read_trial(path)
            before = results.trial_config(meta)
        except Exception as e:  # not Parquet, or no raybench metadata
            raise cfg.ConfigError(f"{path}: not a raybench trial file ({type(e).__name__}: {e}); move it away "
                                  f"or use another --results folder") from None
        now = t.model_dump(mode="json")
        before = _with_new_defaults(before, now)
        complete = meta.get(results.META_STATUS.decode()) == results.STATUS_COMPLETE
        diff = sorted(k for k in now if before.get(k) != now[k])
        if diff == ["processes"] and not complete:  # [virtual] its checkpoint holds that many processes' state
            ran, runs = (f"{n or t.workers} process(es)" for n in (before.get("processes"), t.processes))
            raise cfg.ConfigError(f"{path}: trial {t.trial_id} started on {ran}, and this sweep would continue "
                                  f"it on {runs} (max_processes, or the machine's size, differs); its checkpoint "
                                  f"holds each process's state: continue it where it started, or move the file "
                                  f"away to start it over")
        if diff and diff != ["processes"]:  # a complete trial ran as virtual workers or not: same weights
            raise cfg.ConfigError(f"{path}: written by another configuration of trial {t.trial_id} (differs in "
                                  f"{', '.join(diff)}); use another --results folder or move the file away")
        if complete:
            done.append(t.trial_id)
    return done


def _with_new_defaults(before: dict, now: dict) -> dict:
    """An earlier trial's config with the fields added to TrialSpec since it was written, where
    ``now`` holds their defaults (a file written before ``gpus_per_worker`` existed is the same trial)."""
    fields = cfg.TrialSpec.model_fields
    added = {}
    for k, v in now.items():
        if k in before or k not in fields or fields[k].is_required():
            continue
        default = fields[k].get_default(call_default_factory=True)
        if (default.model_dump(mode="json") if hasattr(default, "model_dump") else default) == v:
            added[k] = v
    return before | added


def _check_address(address: str) -> None:
    """Fail fast when nothing answers at --address (Ray would otherwise retry for a minute)."""
    if address == "auto":
        if os.environ.get("RAY_ADDRESS") or Path("/tmp/ray/ray_current_cluster").exists():
            return
        raise cfg.ConfigError("--address auto: no running Ray cluster found on this machine; start one with "
                              "`ray start --head` or `ray up`, or leave --address out for a local Ray")
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise cfg.ConfigError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise cfg.ConfigError(f"--address {address}: nothing answers there ({e.strerror or e}); start a cluster "
                              "with `ray start --head` or `ray up`, or leave --address out for a local Ray") from None


def plan(args: argparse.Namespace) -> Plan:
    """Every check of the input, before Ray starts; raises ConfigError or DataError, writes nothing."""
    spec = cfg.load(args.sweep)
    trials = cfg.expand(spec)
    if args.smoke:
        trials = cfg.smoke(trials)
    replayed = {}
    if args.replay:
        from raybench.analysis import prediction  # numpy and pyarrow, no torch

        trials, replayed = prediction.replay_plan(trials)
    if args.max_failures < 0:
        raise cfg.ConfigError(f"--max-failures {args.max_failures}: must be 0 or more")
    if args.max_trials < 1:
        raise cfg.ConfigError(f"--max-trials {args.max_trials}: must be 1 or more")
    if args.concurrency < 1:
        raise cfg.ConfigError(f"--concurrency {args.concurrency}: must be 1 or more (1, the default, runs one "
                              "trial at a time)")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise cfg.ConfigError(f"--num-cpus {args.num_cpus}: must be 1 or more")
    if args.num_cpus is not None and args.address:
        raise cfg.ConfigError(f"--num-cpus {args.num_cpus} with --address {args.address}: --num-cpus sizes the "
                              "local Ray this command starts; a cluster has its own CPUs (leave one of them out)")
    if args.reserve_cpus < 0:
        raise cfg.ConfigError(f"--reserve-cpus {args.reserve_cpus}: must be 0 or more")
    if args.reserve_cpus and args.address:
        raise cfg.ConfigError(f"--reserve-cpus {args.reserve_cpus}: only for a local sweep; with --address the "
                              "cluster's nodes say how many CPUs they give (`ray start --num-cpus N`)")
    if args.reserve_cpus and local_cpus(args.num_cpus, args.reserve_cpus) < 1:
        raise cfg.ConfigError(f"--reserve-cpus {args.reserve_cpus}: leaves no CPU for a worker (the local Ray has "
                              f"{local_cpus(args.num_cpus)}); reserve fewer")
    if len(trials) > args.max_trials and not args.yes:
        raise cfg.ConfigError(f"{args.sweep}: the grid has {len(trials)} trials, more than --max-trials "
                              f"{args.max_trials}; pass --yes to run them all, or make the grid smaller")
    from raybench import results

    if results.is_uri(args.results):
        try:
            results.exists(args.results)
        except Exception as e:  # unknown scheme, no credentials, unreachable store
            raise cfg.ConfigError(f"--results {args.results}: cannot be reached ({type(e).__name__}: {e})") from None
    else:
        _check_results(Path(args.results))
    sweep_dir = results.join(args.results, spec.name)
    done = _earlier_results(trials, sweep_dir)
    if args.resume and not results.trial_files(sweep_dir):
        raise cfg.ConfigError(f"--resume: nothing to resume in {sweep_dir} (no trial files there)")
    root, local = cifar.data_root(args.data)
    if local:
        cifar.verify(root)  # checks files, shapes and labels now rather than in every worker
    elif not args.dry_run:
        cifar.download_official(root)  # md5-checked; before Ray, so a bad download starts nothing
    if args.address:
        _check_address(args.address)
        virtual.check_trials(trials, str(args.sweep))
    else:
        where = f"this machine less --reserve-cpus {args.reserve_cpus}" if args.reserve_cpus else "this machine"
        trials = fit_processes(trials, local_capacity(args.num_cpus, args.reserve_cpus))
        virtual.check_trials(trials, str(args.sweep))
        check_fits(trials, local_capacity(args.num_cpus, args.reserve_cpus), where)
    return Plan(spec, trials, done, sweep_dir, root, local, replayed)


def fit_processes(trials: list[cfg.TrialSpec], nodes: list[dict[str, float]]) -> list[cfg.TrialSpec]:
    """[virtual] Each trial whose sweep sets ``max_processes`` on at most as many processes as
    ``nodes`` hold of its worker's bundle (the largest divisor of its workers that fits)."""
    out = []
    for t in trials:
        share = t.gpus_per_worker if t.hardware == "gpu" else 0.0
        bundle = {"CPU": float(t.cpus_per_worker)} | ({"GPU": share} if share else {})
        out.append(virtual.with_processes(t, max(1, sum(_bundles_on(n, bundle) for n in nodes))))
    return out


def trial_table(trials: list[cfg.TrialSpec]) -> str:
    head = ("trial_id", "model", "workers", "processes x virtual", "hw", "bandwidth", "latency", "algorithm", "seed",
            "epochs", "batch")
    rows = [(t.trial_id, t.model_name, str(t.workers),
             f"{t.procs} x {t.virtual}", t.hardware,
             "unlimited" if t.bandwidth_mbps is None else f"{t.bandwidth_mbps:g} Mbit/s", f"{t.latency_ms:g} ms",
             t.algorithm, str(t.seed), str(t.schedule.epochs), str(t.global_batch)) for t in trials]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def _bundles_on(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of a worker's bundle one node holds (Ray counts resources in 1/10,000ths)."""
    return min(math.floor(node.get(k, 0.0) / v + 1e-6) for k, v in bundle.items() if v > 0)


def _shown(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def check_fits(trials: list[cfg.TrialSpec], nodes: list[dict[str, float]], where: str) -> None:
    """Reject trials that could never be scheduled (Train would wait for them forever): the whole
    trial must fit the CPUs and GPUs of ``nodes`` (one dict of CPU, GPU per node), and each worker's
    bundle (its CPUs and GPUs, which Ray places on one node) must fit some node."""
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    for t in trials:
        n = t.procs  # [virtual] processes: the workers, or fewer running virtual workers
        cpus = n * t.cpus_per_worker
        share = t.gpus_per_worker if t.hardware == "gpu" else 0.0
        gpus = n * share
        if gpus > total["GPU"] + 1e-9:
            raise cfg.ConfigError(
                f"trial {t.trial_id}: hardware 'gpu' with {n} workers needs {gpus:g} GPU(s); {where} has "
                f"{total['GPU']:g}. Use hardware: [cpu], or run on a cluster with GPUs (--address)")
        if cpus > total["CPU"]:
            raise cfg.ConfigError(
                f"trial {t.trial_id}: workers {n} x cpus_per_worker {t.cpus_per_worker} needs {cpus} CPUs; "
                f"{where} has {total['CPU']:g}. Use fewer workers, max_processes, --smoke, or a bigger cluster "
                "(--address)")
        bundle = {"CPU": float(t.cpus_per_worker)} | ({"GPU": share} if share else {})
        largest = max(nodes, key=lambda nd: tuple(nd.get(k, 0.0) for k in reversed(bundle)), default={})
        if not any(_bundles_on(node, bundle) for node in nodes):
            raise cfg.ConfigError(
                f"trial {t.trial_id}: one worker's bundle {_shown(bundle)} fits no single node of {where}; the "
                f"largest has {_shown({k: largest.get(k, 0.0) for k in bundle})}. A worker's CPUs and GPUs must be "
                f"on one node: lower cpus_per_worker or gpus_per_worker, or add bigger nodes")
        held = sum(_bundles_on(node, bundle) for node in nodes)
        if held < n:
            raise cfg.ConfigError(
                f"trial {t.trial_id}: {n} workers of {_shown(bundle)} each; the nodes of {where} hold only "
                f"{held} such bundles at once. Use fewer workers or smaller bundles, or add nodes")


def watch_lines(dashboard: list[str], tensorboard_dir: str) -> list[str]:
    """The three ways to watch a sweep: this console, the dashboard, TensorBoard."""
    return ["watch: one line per epoch per trial below (--verbose adds Ray's logs)", *dashboard,
            f"tensorboard: tensorboard --logdir {tensorboard_dir}  (pip install tensorboard; one run per trial)"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        p = plan(args)
    except (cfg.ConfigError, cifar.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    print(f"sweep {p.spec.name}: {len(p.trials)} trial(s)")
    print(trial_table(p.trials))
    if p.replayed:
        points = [(t.trial_id, trained) for trained, pts in p.replayed.items() for t in pts]
        print(f"--replay: {len(points)} more grid point(s) filled by replaying a trained trial's trace:")
        print("\n".join(f"  {point}  <- replay of {trained}" for point, trained in points))
    if args.num_cpus is not None:
        print(f"warning: --num-cpus {args.num_cpus}: the local Ray counts {args.num_cpus} logical CPUs (this machine "
              f"has {os.cpu_count()}), so workers may share cores: the timings are not meaningful, use it for "
              "functional checks only", file=sys.stderr)
    emulated = [t for t in p.trials if t.virtual > 1]
    if emulated:
        print(f"{len(emulated)} trial(s) run as virtual workers (processes x virtual workers per process above): "
              "their accuracy is measured, their times replayed at their worker count (rows source=emulated)")
    if args.concurrency > 1:
        print(f"warning: --concurrency {args.concurrency}: up to {args.concurrency} trials run at once and share "
              "the hardware (and the cluster's network), so their timings are not isolated; use --concurrency 1 "
              "for numbers you publish", file=sys.stderr)
    todo = [t for t in p.trials if t.trial_id not in p.done]
    if p.done:
        print(f"{len(p.done)} trial(s) already complete in {p.sweep_dir}/, not run again")
    if (args.dry_run and not args.address) or not todo:
        if not args.dry_run:
            _replay(p, datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6])
        return 0

    from raybench.driver import session, tune  # imports Ray: only once the input is known to be good

    if args.dry_run:  # a cluster's resources are known only by asking it
        started = session.init_ray(args.address)
        try:
            nodes = session.cluster_capacity()
            fitted = fit_processes(p.trials, nodes)  # [virtual] what the cluster holds, known now
            virtual.check_trials(fitted, str(args.sweep))
            check_fits(fitted, nodes, f"the cluster at {args.address}")
        except cfg.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        finally:
            if started:
                import ray

                ray.shutdown()
        return 0

    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    local = local_cpus(args.num_cpus, args.reserve_cpus) if args.num_cpus or args.reserve_cpus else None
    started = session.init_ray(args.address, num_cpus=local, verbose=args.verbose)
    grid = None
    try:
        if args.address:
            nodes = session.cluster_capacity()
            todo = fit_processes(todo, nodes)  # [virtual] what the cluster holds, known now
            virtual.check_trials(todo, str(args.sweep))
            check_fits(todo, nodes, f"the cluster at {args.address}")
        print("\n".join(watch_lines(session.dashboard_lines(args.address), tune.tensorboard_dir(p.sweep_dir))),
              flush=True)
        grid = tune.run_sweep(todo, p.sweep_dir, str(p.data_root) if p.local_data else None,
                                cifar.dataset_label(p.data_root, p.local_data), run_id,
                                args.max_failures, args.concurrency)
    except cfg.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        pass
    finally:
        if started:
            import ray

            ray.shutdown()
    _replay(p, run_id)
    failed = [r for r in grid if r.error] if grid is not None else []
    for r in failed:
        print(f"trial {r.config['trial']['trial_id']} failed: {r.error}", file=sys.stderr)
    complete = _earlier_results(p.trials, p.sweep_dir)
    print(f"results: {p.sweep_dir}/ ({len(complete)} of {len(p.trials)} trial(s) complete)")
    if len(complete) < len(p.trials) and not failed:
        print("interrupted: rerun the same command (or add --resume) to continue; finished trials are kept "
              "and unfinished ones continue from their last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if failed else 0


def _replay(p: Plan, run_id: str) -> None:
    """--replay: the grid points of trained trials that completed, written as predicted trials."""
    if not any(p.replayed.values()):
        return
    from raybench.analysis import prediction

    written, notes = prediction.fill_grid(p.sweep_dir, p.replayed, run_id)
    for note in notes:
        print(f"--replay: not replayed: {note}", file=sys.stderr)
    total = sum(len(v) for v in p.replayed.values())
    print(f"--replay: {written} of {total} grid point(s) written as predicted trials (trial id + "
          f"'{prediction.PREDICTED_SUFFIX}', source=predicted)")


if __name__ == "__main__":
    sys.exit(main())
