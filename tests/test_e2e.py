"""End to end on a real local Ray (2 CPUs), real gloo DDP, real Parquet: one Ray session for the module."""
import copy
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import ray.cloudpickle
import ray.train

from raybench import results, sweep

from conftest import write_sweep

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
pytestmark = pytest.mark.usefixtures("ray_session")


def test_smoke_scalability_writes_one_row_per_trial_and_epoch(cifar_dir, tmp_path):
    assert sweep.main(["scalability", "--smoke", "--data", str(cifar_dir), "--results", str(tmp_path)]) == 0
    df = pd.read_parquet(tmp_path / "scalability")
    assert list(df.columns) == list(results.COLUMNS)
    assert sorted(zip(df.workers, df.epoch, strict=True)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert df.notna().drop(columns=["bandwidth_mbps", "predicted_from"]).all().all()
    assert (df.source == "measured").all() and df.predicted_from.isna().all()  # trained here, not replayed
    for col in ("train_top1", "test_top1"):
        assert df[col].between(0, 1).all()
    for _, trial in df.groupby("trial_id"):
        trial = trial.sort_values("epoch")
        assert trial.train_seconds.is_monotonic_increasing and trial.train_seconds.diff().dropna().gt(0).all()
        assert trial.train_seconds.iloc[-1] == pytest.approx(trial.epoch_seconds.sum())
    assert (df.global_batch == df.batch_per_worker * df.workers).all()
    assert (df.comm_seconds + df.compute_seconds - df.epoch_seconds).abs().max() < 1e-6
    assert (df.simulated_delay_seconds == 0.0).all()  # an unlimited link models no delay (2 workers included)
    for path in (tmp_path / "scalability").glob("*.parquet"):
        _, meta = results.read_trial(path)
        assert meta["raybench.status"] == "complete" and meta["raybench.dataset"] == "cifar10-local"
        assert results.trial_config(meta)["trial_id"] == path.stem
        assert set(json.loads(meta["raybench.versions"])) == {"raybench", "torch", "ray"}
    # The lean control plane of a local sweep (driver.lean): none of the per-trial actors it does not use
    # were started, nor Ray Data's autoscaling coordinator; the trainable ran once for both trials.
    from ray.util.state import list_actors

    from raybench.driver import lean
    from raybench.driver.backend import STARTUP_KEY

    actors = [a.class_name for a in list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000)]
    assert "TrainController" in actors and "RayTrainWorker" in actors
    assert not set(actors) & {*lean.DROPPED_ACTORS, "_AutoscalingCoordinatorActor"}, actors
    assert [actors.count(a) for a in lean.SHARED_ACTORS] == [1] * len(lean.SHARED_ACTORS), actors  # not one per trial
    # The start-up timestamps bench/startup.py reads travel with each trial's first result into Tune's files;
    # both trials' results came from one process (Tune's reuse_actors: one trainable for both trials).
    firsts = [json.loads(f.read_text().splitlines()[0])
              for f in (tmp_path / "scalability" / "_ray" / "tune").glob("*/result.json")]
    assert len(firsts) == 2 and len({r["pid"] for r in firsts}) == 1, [r.get("pid") for r in firsts]
    for first in firsts:
        s = json.loads(first[STARTUP_KEY])
        assert s["trainable"] <= s["entry"] <= s["data"] <= s["placed"]


def test_the_data_set_goes_into_the_object_store_once_cut_to_what_the_trials_use(cifar_dir):
    """The driver reads CIFAR-10 once and puts the images the largest trial uses into Ray's object store;
    a worker maps them without a copy (read-only) instead of reading the files."""
    from raybench.driver import tune
    from raybench.spec import config as cfg
    from raybench.worker import data as cifar

    trials = cfg.expand(cfg.parse({"name": "put", "workers": [1, 2],
                                   "data": {"train_images": 300, "test_images": 100}}))
    small = cfg.expand(cfg.parse({"name": "put", "data": {"train_images": 100, "test_images": None}}))
    arrays = ray.get(tune.put_dataset(trials + small, str(cifar_dir)))
    assert not arrays["train_x"].flags.writeable  # mapped from the object store, not a copy
    ds = cifar.from_arrays(arrays)
    full = cifar.load(cifar_dir)
    assert ds.train_x.shape == (300, 3, 32, 32) and len(ds.test_y) == len(full.test_y) == 10_000
    assert ds.source == full.source
    for name in cifar.ARRAYS:
        assert getattr(ds, name).equal(getattr(full.subset(300, None), name))


def test_learning_happens_on_2000_images(cifar_dir, tmp_path):
    """Also: --results takes a URI (pyarrow filesystems, as for s3:// or gs://); file:// here."""
    f = write_sweep(tmp_path / "learn.yaml", name="learn", workers=[2],
                    schedule={"batch_per_worker": 32, "lr_per_256": 0.4, "warmup_epochs": 0, "milestones": [],
                              "epochs": 3},
                    data={"train_images": 2000, "test_images": 1000}, seed=0)
    assert sweep.main([str(f), "--data", str(cifar_dir), "--results", f"file://{tmp_path}/uri"]) == 0
    assert results.trial_files(f"file://{tmp_path}/uri/learn") == [
        f"file://{tmp_path}/uri/learn/resnet20v1_w2_cpu_bwinf_lat0_allreduce_s0.parquet"]
    df = pd.read_parquet(tmp_path / "uri" / "learn").sort_values("epoch")
    assert list(df.epoch) == [1, 2, 3]
    assert df.test_top1.iloc[-1] > 0.2, df[["epoch", "train_top1", "test_top1"]]


def _sync_check(config):
    """Runs on each of 2 Ray Train workers: raybench's DDP set-up against gradients computed by hand."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from raybench.models import build
    from raybench.spec.config import TrialSpec
    from raybench.worker import data as cifar
    from raybench.worker.setup import Worker, make_ddp, make_optimizer

    trial = TrialSpec.model_validate(config["trial"])
    ctx = ray.train.get_context()
    w = Worker(ctx.get_world_rank(), ctx.get_world_size(), torch.device("cpu"))
    torch.manual_seed(trial.seed)
    ds = cifar.load(config["data"]).subset(512, 64)
    ddp, comm = make_ddp(build("resnet", 20, "v1"), trial, w)
    local_model = copy.deepcopy(ddp.module)  # plain copy: this rank's own gradient, by hand
    opt, _ = make_optimizer(ddp, trial, 4)
    idx = cifar.shard_indices(len(ds.train_y), w.rank, w.world, trial.seed, 1)
    bs = trial.schedule.batch_per_worker

    def gather(t):
        out = [torch.empty_like(t) for _ in range(w.world)]
        dist.all_gather(out, t)
        return out

    grad_err, param_diff, local_diff = 0.0, 0.0, float("inf")
    for step in range(3):
        b = idx[step * bs:(step + 1) * bs]
        x, y = cifar.normalize(cifar.augment(ds.train_x[b])), ds.train_y[b]
        local_model.load_state_dict(ddp.module.state_dict())
        local_model.zero_grad()
        F.cross_entropy(local_model(x), y).backward()
        local = torch.cat([p.grad.flatten() for p in local_model.parameters()])
        grads = gather(local)
        expected = torch.stack(grads).mean(0)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        comm.after_step(ddp.module)  # closes the step (no averaging with allreduce)
        applied = torch.cat([p.grad.flatten() for p in ddp.module.parameters()])
        grad_err = max(grad_err, float((applied - expected).abs().max() / expected.abs().max()))
        local_diff = min(local_diff, float((grads[0] - grads[1]).abs().max()))
        opt.step()
        params = gather(torch.cat([p.detach().flatten() for p in ddp.module.parameters()]))
        param_diff = max(param_diff, float((params[0] - params[1]).abs().max()))
    bn = gather(ddp.module.bn1.running_mean.clone())
    found = {"grad_err": grad_err, "param_diff": param_diff, "local_diff": local_diff,
             "bn_diff": float((bn[0] - bn[1]).abs().max()), "steps": comm.take_stats().steps}
    if w.rank == 0:
        with open(config["out"], "w") as f:
            json.dump(found, f)


def test_two_workers_synchronise_every_step(cifar_dir, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raybench.spec import config as cfg

    trial = cfg.expand(cfg.parse({"name": "sync", "workers": [2], "schedule": {"batch_per_worker": 32}}))[0]
    result = TorchTrainer(
        _sync_check, train_loop_config={"trial": trial.model_dump(mode="json"), "data": str(cifar_dir),
                                        "out": str(tmp_path / "sync.json")},
        scaling_config=ScalingConfig(num_workers=2), run_config=RunConfig(storage_path=str(tmp_path), name="sync"),
    ).fit()
    assert result.error is None
    m = json.loads((tmp_path / "sync.json").read_text())
    assert m["steps"] == 3
    assert m["local_diff"] > 1e-4  # the ranks' own gradients differ: their shards are disjoint
    assert m["grad_err"] < 1e-5  # DDP applied the mean of the two local gradients
    assert m["param_diff"] == 0.0  # parameters identical on both ranks after every step
    assert m["bn_diff"] > 0.0  # batch-norm statistics stay per worker, as in MLBench's reference


def test_simulated_link_delays_each_step_as_the_model_says(cifar_dir, tmp_path):
    from raybench.models import build
    from raybench.worker.comm.link import Link, allreduce_seconds

    f = write_sweep(tmp_path / "net.yaml", name="net", workers=[2],
                    network={"bandwidth_mbps": [10], "latency_ms": [0]},  # unlimited: the smoke sweep above
                    schedule={"batch_per_worker": 64, "warmup_epochs": 0, "milestones": [], "epochs": 1},
                    data={"train_images": 512, "test_images": 128})
    assert sweep.main([str(f), "--data", str(cifar_dir), "--results", str(tmp_path)]) == 0
    df = results.read_results(tmp_path / "net")
    steps = 512 // 2 // 64
    grad_bytes = sum(p.numel() * 4 for p in build("resnet", 20, "v1").parameters())
    modelled = allreduce_seconds(grad_bytes, 2, Link(10.0, 0.0))
    (limited,) = [row for _, row in df.iterrows() if row.bandwidth_mbps == 10]
    # The modelled delay is arithmetic on the bytes each step's buckets hold: exact, on any machine.
    assert limited.simulated_delay_seconds / steps == pytest.approx(modelled, rel=1e-9)
    # Bounds the hold guarantees whatever the machine's load: the wire releases a step's last bucket no
    # earlier than the step's first bucket was ready plus the modelled time of them all, so every step
    # lasts at least that long, and waits (comm) after its last bucket was ready. How much of the delay
    # the backward pass hides is a measurement: bench/network_fidelity.py.
    assert limited.epoch_seconds >= steps * modelled
    assert limited.comm_seconds > 0.0


def test_local_ray_listens_on_loopback_or_requires_the_token(tmp_path):
    """The dashboard binds 127.0.0.1 only. Ray 2.60's gRPC servers listen on every interface with no
    option to keep them on loopback, so the local run turns token authentication on: a caller without
    the token is refused (checked over 127.0.0.1 only)."""
    import psutil

    ctx = ray.get_runtime_context()
    dashboard = ray._private.worker._global_node.address_info["webui_url"]
    host, port = dashboard.rsplit(":", 1)
    assert host == "127.0.0.1"
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in ours]
    assert {c.laddr.ip for c in listening if c.laddr.port == int(port)} == {"127.0.0.1"}
    gcs_port = int(ctx.gcs_address.rsplit(":", 1)[1])
    stranger = tmp_path / "wrong_token"
    stranger.write_text("0" * 64)
    probe = ("import ray, sys\n"
             f"try:\n    ray.init(address='127.0.0.1:{gcs_port}', logging_level='ERROR')\n"
             "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(stranger),
                        "RAY_gcs_server_port_wait_time_s": "2"}  # 2 tries to connect, not Ray's 20 (one a second)
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "auth" in (proc.stdout + proc.stderr).lower()
