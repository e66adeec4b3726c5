"""Bad input, fed to the real CLI as a user types it, is refused before Ray starts.

Every case runs ``python -m raybench.sweep ...`` (no --dry-run) in a fresh folder and checks:

1. exit code 2 (ours, or argparse's usage error);
2. stderr names the offending field / flag / file and the value, with no traceback;
3. nothing of Ray started: ``RAY_TMPDIR`` (Ray's temp root, read by
   ``ray._common.utils.get_default_system_temp_dir``) points at an empty folder that must stay
   empty, and ``ray`` was never imported (an atexit hook in the launcher records ``sys.modules``);
4. the results folder, which already holds a real trial file from an earlier run, is unchanged
   (names, bytes, mtimes) and nothing new appeared in the working folder.

The subprocesses run a few at a time (each imports torch, ~1.5 s); every case is still its own test.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raybench.spec import config as cfg
from raybench.worker import data as cifar

import rows
from conftest import write_sweep

TIMEOUT_S = 120  # per subprocess; the slowest cases (import Ray, then refuse) take ~10 s on idle cores
PARALLEL = 2
DROP = object()  # in a Case's sweep overrides: remove this key

# A valid, tiny sweep: every case breaks one thing of it (or of the command line, or of the data).
VALID: dict[str, Any] = {"name": "bad", "workers": [1], "schedule": {"epochs": 1},
                         "data": {"train_images": 128, "test_images": 32}}
VALID_TRIAL = cfg.expand(cfg.parse(VALID))[0].trial_id  # resnet20v1_w1_cpu_bwinf_lat0_allreduce_s0
BIG = max(64, 2 * (os.cpu_count() or 1))  # workers no machine running these tests has CPUs for

# The launcher: `python -m raybench.sweep ARGS` (runpy is what -m uses), plus an atexit hook that
# records whether `ray` was ever imported, however the CLI exits.
LAUNCHER = (
    "import atexit, os, runpy, sys\n"
    "def _record():\n"
    "    with open(os.environ['RAYBENCH_TEST_RAY_MARKER'], 'w') as f:\n"
    "        f.write(str('ray' in sys.modules))\n"
    "atexit.register(_record)\n"
    "runpy.run_module('raybench.sweep', run_name='__main__', alter_sys=True)\n"
)


# --- data: one valid fake CIFAR-10 copy per module; each data case breaks one file of a symlinked copy

def _entry(n=cifar.IMAGES_PER_FILE, cols=3072, dtype=np.uint8, labels=None) -> bytes:
    labels = list(np.arange(n) % 10) if labels is None else labels
    return pickle.dumps({"data": np.zeros((n, cols), dtype=dtype), "labels": labels})


class _RunsCode:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


BREAKERS: dict[str, tuple[str, Callable[[Path, dict], bytes | None]]] = {
    # name -> (file it breaks, its new content from (valid file, ctx); None = file missing)
    "missing": ("data_batch_3", lambda valid, c: None),
    "truncated": ("data_batch_2", lambda valid, c: valid.read_bytes()[:1000]),
    "shape": ("data_batch_4", lambda valid, c: _entry(cols=1024)),
    "dtype": ("data_batch_5", lambda valid, c: _entry(dtype=np.float16)),
    "labels": ("test_batch", lambda valid, c: _entry(labels=[11] * cifar.IMAGES_PER_FILE)),
    "not_dict": ("data_batch_1", lambda valid, c: pickle.dumps([1, 2, 3])),
    "runs_code": ("data_batch_1", lambda valid, c: pickle.dumps({"data": _RunsCode(c["work"] + "/pwned"),
                                                                 "labels": []})),
}


@pytest.fixture(scope="module")
def valid_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar").resolve()
    folder = root / cifar.BATCHES
    folder.mkdir()
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        (folder / name).write_bytes(_entry())
    return root


def _broken_copy(valid: Path, dest: Path, breaker: str, ctx: dict) -> None:
    target, content = BREAKERS[breaker]
    folder = dest / cifar.BATCHES
    folder.mkdir(parents=True)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        if name != target:
            (folder / name).symlink_to(valid / cifar.BATCHES / name)
            continue
        new = content(valid / cifar.BATCHES / name, ctx)
        if new is not None:
            (folder / name).write_bytes(new)


# --- results: a real trial file from an earlier run of the same sweep (another seed)

def _write_trial(folder: Path, **overrides: Any) -> Path:
    spec = cfg.expand(cfg.parse(VALID | overrides))[0]
    return rows.write(folder, spec, rows.epoch_rows(spec, [0.5]))


def _setup_junk_at_trial_path(c: dict) -> None:
    (Path(c["results"]) / "bad" / f"{VALID_TRIAL}.parquet").write_bytes(b"not parquet at all")


def _setup_other_configuration(c: dict) -> None:
    _write_trial(Path(c["results"]) / "bad", schedule={"epochs": 2})  # same trial id, other schedule


def _setup_blocker(c: dict) -> None:
    (Path(c["work"]) / "blocker").write_bytes(b"a regular file")


def _setup_empty_data(c: dict) -> None:
    Path(c["tmp"], "empty").mkdir()


def _setup_corrupt_official_cache(c: dict) -> None:
    folder = Path(c["home"]) / ".cache" / "raybench" / cifar.BATCHES
    folder.mkdir(parents=True)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES + ("batches.meta",):
        (folder / name).write_bytes(b"wrong content, wrong md5 " + name.encode())


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # all on stderr; {work} {sweep} {results} {data} {tmp} {home} {big} filled in
    sweep: dict[str, Any] | str | None = None  # overrides of VALID, or the file's whole text
    args: tuple[str, ...] = ("{sweep}", "--results", "{results}", "--data", "{data}")
    extra: tuple[str, ...] = ()
    breaker: str | None = None  # a data case: --data is a copy with this file broken
    setup: Callable[[dict], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


def _field(loc: str, value: str) -> tuple[str, ...]:
    return ("{sweep}", f"field '{loc}': value {value} is not allowed")


NO_DATA = ("{sweep}", "--results", "{results}")
SMALL_BATCH = {"epochs": 1, "batch_per_worker": 8}


CASES = [
    # sweep files
    Case("sweep-unknown-top-level-key", ("{sweep}", "field 'wrkers': unknown key (value [1])"), {"wrkers": [1]}),
    Case("sweep-unknown-nested-key", ("{sweep}", "field 'schedule.lr': unknown key (value 0.1)"),
         {"schedule": {"epochs": 1, "lr": 0.1}}),
    Case("sweep-workers-wrong-type", _field("workers[0]", "'two'"), {"workers": "two"}),
    Case("sweep-depth-18", _field("model.depth[0]", "18") + ("20, 32, 44 or 56",), {"model": {"depth": [18]}}),
    Case("sweep-version-v3", _field("model.version[0]", "'v3'"), {"model": {"version": "v3"}}),
    Case("sweep-workers-0", _field("workers[0]", "0"), {"workers": 0}),
    Case("sweep-workers-empty", _field("workers", "[]"), {"workers": []}),
    Case("sweep-workers-duplicate", _field("workers", "[2, 2]") + ("more than once",), {"workers": [2, 2]}),
    Case("sweep-bandwidth-negative", _field("network.bandwidth_mbps[0]", "-5"),
         {"network": {"bandwidth_mbps": [-5]}}),
    Case("sweep-bandwidth-zero", _field("network.bandwidth_mbps[0]", "0"), {"network": {"bandwidth_mbps": 0}}),
    Case("sweep-bandwidth-fast", _field("network.bandwidth_mbps[0]", "'fast'") + ("'unlimited'",),
         {"network": {"bandwidth_mbps": ["fast"]}}),
    Case("sweep-latency-negative", _field("network.latency_ms[0]", "-1"), {"network": {"latency_ms": [-1]}}),
    Case("sweep-epochs-0", _field("schedule.epochs", "0"), {"schedule": {"epochs": 0}}),
    Case("sweep-milestones-not-increasing", _field("schedule.milestones", "[10, 5]") + ("increasing",),
         {"schedule": {"epochs": 1, "milestones": [10, 5]}}),
    Case("sweep-target-top1-percent", _field("goal.target_top1", "80"), {"goal": {"target_top1": 80}}),
    Case("sweep-hardware-tpu", _field("hardware[0]", "'tpu'"), {"hardware": ["tpu"]}),
    Case("sweep-algorithm-gossip", _field("algorithm[0]", "'gossip'") + ("allreduce",), {"algorithm": ["gossip"]}),
    Case("sweep-cpus-per-worker-0", _field("cpus_per_worker", "0"), {"cpus_per_worker": 0}),
    Case("sweep-seed-negative", _field("seed[0]", "-1"), {"seed": -1}),
    Case("sweep-name-with-slash", _field("name", "'a/b'"), {"name": "a/b"}),
    Case("sweep-name-empty", _field("name", "''"), {"name": ""}),
    Case("sweep-name-missing", ("{sweep}", "field 'name': required but missing"), {"name": DROP}),
    Case("sweep-invalid-yaml", ("{sweep}", "not valid YAML", "line 2"), "name: bad\nworkers: [1, 2\n"),
    Case("sweep-unsafe-yaml-tag", ("{sweep}", "not valid YAML", "python/object/apply:os.system"),
         "name: !!python/object/apply:os.system ['touch pwned']\n"),
    Case("sweep-top-level-list", ("{sweep}", "the top level must be a mapping", "list"), "- name: bad\n"),
    Case("sweep-empty-file", ("{sweep}", "the top level must be a mapping", "empty"), ""),
    Case("sweep-file-missing", ("sweep file '{work}/nope.yaml' not found",),
         args=("{work}/nope.yaml", "--results", "{results}", "--data", "{data}")),
    Case("sweep-grid-over-max-trials", ("{sweep}", "4 trials", "--max-trials 2", "--yes"),
         {"workers": [1, 2], "seed": [0, 1]}, extra=("--max-trials", "2")),
    Case("sweep-more-cpus-than-machine", ("workers {big} x cpus_per_worker 1 needs {big} CPUs", "this machine"),
         {"workers": [BIG], "schedule": {"epochs": 1, "batch_per_worker": 1}, "data": {"train_images": BIG}}),
    Case("sweep-step-over-the-training-set",
         ("{sweep}", "workers 4 x schedule.batch_per_worker 64 = 256 images per step, more than data.train_images 128",
          "allowed: workers x batch_per_worker <= 128"),
         {"workers": [4], "schedule": {"epochs": 1, "batch_per_worker": 64}}),
    Case("sweep-step-over-cifar10", ("workers 1024 x schedule.batch_per_worker 128 = 131,072 images per step",
                                     "CIFAR-10's 50,000 training images", "<= 50,000"),
         {"workers": [1024], "max_processes": 1, "data": {}}),
    Case("sweep-emulated-powersgd", ("{sweep}", "algorithm 'powersgd' with workers 4 on 1 process(es)",
                                     "virtual workers, which emulate allreduce only", "max_processes null"),
         {"workers": [4], "max_processes": 1, "algorithm": ["powersgd"], "schedule": SMALL_BATCH}),
    Case("sweep-emulated-localsgd", ("algorithm 'localsgd' with workers 8", "emulate allreduce only"),
         {"workers": [8], "max_processes": 2, "algorithm": ["localsgd"], "schedule": SMALL_BATCH}),
    Case("sweep-max-processes-0", _field("max_processes", "0"), {"max_processes": 0}),
    Case("sweep-gpu-on-cpu-machine", ("hardware 'gpu'", "needs 1 GPU(s)", "this machine has 0"),
         {"hardware": ["gpu"]},
         skip="this machine has a GPU" if torch.cuda.device_count() else None),
    # command line
    Case("cli-no-sweep-argument", ("usage:", "the following arguments are required: sweep"),
         args=("--results", "{results}", "--data", "{data}")),
    Case("cli-unknown-sweep-name", ("sweep 'no-such-sweep' not found", "quickstart"),
         args=("no-such-sweep", "--results", "{results}", "--data", "{data}")),
    Case("cli-unknown-flag", ("usage:", "unrecognized arguments: --wrokers 2"), extra=("--wrokers", "2")),
    Case("cli-results-under-a-file", ("--results {work}/blocker/results", "{work}/blocker is a file"),
         args=("{sweep}", "--results", "{work}/blocker/results", "--data", "{data}"), setup=_setup_blocker),
    Case("cli-results-junk-at-trial-path", ("{results}/bad/" + VALID_TRIAL + ".parquet", "not a raybench trial file"),
         setup=_setup_junk_at_trial_path),
    Case("cli-results-other-configuration",
         ("{results}/bad/" + VALID_TRIAL + ".parquet", "written by another configuration", "differs in schedule"),
         setup=_setup_other_configuration),
    Case("cli-address-nothing-answers", ("--address 127.0.0.1:1", "nothing answers"),
         extra=("--address", "127.0.0.1:1")),
    Case("cli-address-malformed", ("--address 'notanaddress'", "HOST:PORT"), extra=("--address", "notanaddress")),
    Case("cli-reserve-cpus-negative", ("--reserve-cpus -1", "0 or more"), extra=("--reserve-cpus", "-1")),
    Case("cli-reserve-cpus-leaves-none", (f"--reserve-cpus {os.cpu_count() or 1}", "leaves no CPU for a worker"),
         extra=("--reserve-cpus", str(os.cpu_count() or 1))),
    Case("cli-reserve-cpus-with-address", ("--reserve-cpus 1", "only for a local sweep", "--address"),
         extra=("--reserve-cpus", "1", "--address", "127.0.0.1:1")),
    Case("cli-max-failures-negative", ("--max-failures -1", "0 or more"), extra=("--max-failures", "-1")),
    Case("cli-max-failures-not-a-number", ("usage:", "argument --max-failures: invalid int value: 'lots'"),
         extra=("--max-failures", "lots")),
    Case("cli-max-trials-0", ("--max-trials 0", "1 or more"), extra=("--max-trials", "0")),
    Case("cli-num-cpus-0", ("--num-cpus 0", "must be 1 or more"), extra=("--num-cpus", "0")),
    Case("cli-num-cpus-with-address", ("--num-cpus 4 with --address 127.0.0.1:1", "leave one of them out"),
         extra=("--num-cpus", "4", "--address", "127.0.0.1:1")),
    Case("cli-resume-nothing-to-resume", ("--resume", "nothing to resume in {results}/fresh"), {"name": "fresh"},
         extra=("--resume",)),
    # data
    Case("data-missing-folder", ("--data {tmp}/nope", "no such folder"),
         args=NO_DATA + ("--data", "{tmp}/nope")),
    Case("data-env-var-missing-folder", ("RAYBENCH_DATA={tmp}/nope", "no such folder"), args=NO_DATA,
         env={"RAYBENCH_DATA": "{tmp}/nope"}),
    Case("data-folder-without-batches", ("--data {tmp}/empty", "cifar-10-batches-py/ lacks data_batch_1"),
         args=NO_DATA + ("--data", "{tmp}/empty"), setup=_setup_empty_data),
    Case("data-missing-batch-file", ("--data {data}", "lacks data_batch_3"), breaker="missing"),
    Case("data-truncated-batch-file", ("{data}/cifar-10-batches-py/data_batch_2", "not a readable"),
         breaker="truncated"),
    Case("data-wrong-shape", ("{data}/cifar-10-batches-py/data_batch_4", "(10000, 1024)", "(10000, 3072)"),
         breaker="shape"),
    Case("data-wrong-dtype", ("{data}/cifar-10-batches-py/data_batch_5", "float16", "uint8"), breaker="dtype"),
    Case("data-labels-out-of-range", ("{data}/cifar-10-batches-py/test_batch", "0..9", "range 11..11"),
         breaker="labels"),
    Case("data-not-a-dict", ("{data}/cifar-10-batches-py/data_batch_1", "expected a dict"), breaker="not_dict"),
    Case("data-pickle-runs-code", ("{data}/cifar-10-batches-py/data_batch_1", "posix.system is not allowed"),
         breaker="runs_code"),
    Case("data-official-cache-fails-md5",
         ("{home}/.cache/raybench/cifar-10-batches-py", "data_batch_1", "failed the official md5 check", "--data DIR"),
         args=NO_DATA, setup=_setup_corrupt_official_cache),
]


# --- running a case

def _tree(root: Path) -> dict[str, Any]:
    """Every name under root with its bytes and mtime (files), its target (links) or 'dir'."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def _write_sweep(case: Case, path: Path) -> None:
    if isinstance(case.sweep, str):
        path.write_text(case.sweep)
        return
    fields = {k: v for k, v in (VALID | (case.sweep or {})).items() if v is not DROP}
    write_sweep(path, **fields)


@dataclass
class Run:
    ctx: dict[str, str]
    before: dict[str, Any]  # the working folder (sweep file, results/ with an earlier trial file)
    home_before: dict[str, Any]
    argv: list[str] = field(default_factory=list)
    proc: subprocess.CompletedProcess | None = None
    timed_out: bool = False
    seconds: float = 0.0


def _prepare(case: Case, base: Path, valid: Path, earlier: Path) -> tuple[Run, list[str], dict[str, str]]:
    work, home, raytmp = base / "work", base / "home", base / "raytmp"
    for d in (work, home, raytmp):
        d.mkdir(parents=True)
    ctx = {"tmp": str(base), "work": str(work), "home": str(home), "sweep": str(work / "sweep.yaml"),
           "results": str(work / "results"), "data": str(valid), "big": str(BIG)}
    shutil.copytree(earlier, work / "results")
    _write_sweep(case, work / "sweep.yaml")
    if case.breaker:
        ctx["data"] = str(base / "data")
        _broken_copy(valid, base / "data", case.breaker, ctx)
    if case.setup:
        case.setup(ctx)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "RAYBENCH_")) and k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env |= {"HOME": str(home), "RAY_TMPDIR": str(raytmp), "RAYBENCH_TEST_RAY_MARKER": str(base / "ray_imported"),
            "PYTHONDONTWRITEBYTECODE": "1",
            # no real network either way: a download attempt is refused at once instead of fetching 170 MB
            "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env |= {k: v.format(**ctx) for k, v in case.env.items()}
    argv = [a.format(**ctx) for a in case.args + case.extra]
    return Run(ctx, _tree(work), _tree(home)), argv, env


def _execute(run: Run, argv: list[str], env: dict[str, str]) -> Run:
    run.argv, start = argv, time.monotonic()
    try:
        run.proc = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], cwd=run.ctx["work"], env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run.timed_out = True
    run.seconds = time.monotonic() - start
    return run


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, valid_data) -> dict[str, Future]:
    """Starts the selected cases' subprocesses, PARALLEL at a time; each test waits for its own."""
    selected = {item.callspec.id for item in request.session.items
                if getattr(item, "callspec", None) and item.originalname == "test_bad_input_is_refused_before_ray"}
    earlier = tmp_path_factory.mktemp("earlier").resolve()
    _write_trial(earlier / "bad", seed=99)  # results/bad/<another trial>.parquet from an earlier run
    pool = ThreadPoolExecutor(PARALLEL)
    futures = {}
    for case in CASES:
        if case.id not in selected or case.skip:
            continue
        run, argv, env = _prepare(case, tmp_path_factory.mktemp("case").resolve(), valid_data, earlier)
        futures[case.id] = pool.submit(_execute, run, argv, env)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.skipif(bool(c.skip), reason=str(c.skip)))
                                  for c in CASES])
def test_bad_input_is_refused_before_ray(case: Case, runs):
    run: Run = runs[case.id].result()
    ctx = run.ctx
    assert not run.timed_out, f"no answer within {TIMEOUT_S} s"
    proc = run.proc
    out = f"\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    print(f"[{run.seconds:.1f} s] {' '.join(run.argv)}\n{proc.stderr}")  # shown with pytest -rP
    # 1. bad input: exit code 2
    assert proc.returncode == 2, out
    # 2. one message naming what is wrong and the value; no traceback
    assert "Traceback" not in proc.stderr, out
    for want in case.expect:
        assert want.format(**ctx) in proc.stderr, f"{want.format(**ctx)!r} not on stderr{out}"
    # 3. no Ray: its temp root stayed empty, and ray was never imported
    assert os.listdir(Path(ctx["tmp"]) / "raytmp") == [], out
    # 4. the results folder (an earlier trial file in it) and the working folder are as they were
    assert _tree(Path(ctx["work"])) == run.before, out
    home_after = _tree(Path(ctx["home"]))
    assert home_after == run.home_before, out
    marker = Path(ctx["tmp"]) / "ray_imported"
    assert marker.is_file(), "the launcher's atexit hook did not run" + out
    assert marker.read_text() == "False", "ray was imported before the input was refused" + out


def test_cases_are_many_and_distinct():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
