"""Sweep files: validation with messages that name file, field, value and what is allowed; grid expansion."""
import pytest

from raybench.spec import config as cfg
from raybench.spec.config import ConfigError


def err(raw, source="s.yaml") -> str:
    with pytest.raises(ConfigError) as e:
        cfg.parse(raw, source)
    return str(e.value)


@pytest.mark.parametrize("raw, field, value, allowed", [
    ({"name": "x", "workers": [0]}, "workers[0]", "0", "greater than or equal to 1"),
    ({"name": "x", "model": {"depth": [18]}}, "model.depth[0]", "18", "20, 32, 44 or 56"),
    ({"name": "x", "model": {"version": ["v3"]}}, "model.version[0]", "'v3'", "'v1' or 'v2'"),
    ({"name": "x", "wrkers": [1]}, "wrkers", "[1]", "unknown key"),
    ({"name": "x", "schedule": {"lr": 0.1}}, "schedule.lr", "0.1", "unknown key"),
    ({"name": "x", "workers": ["two"]}, "workers[0]", "'two'", "integer"),
    ({"name": "x", "hardware": ["tpu"]}, "hardware[0]", "'tpu'", "'cpu' or 'gpu'"),
    ({"name": "x", "network": {"bandwidth_mbps": [-5]}}, "network.bandwidth_mbps[0]", "-5", "'unlimited'"),
    ({"name": "x", "network": {"bandwidth_mbps": [0]}}, "network.bandwidth_mbps[0]", "0", "greater than 0"),
    ({"name": "x", "network": {"bandwidth_mbps": ["fast"]}}, "network.bandwidth_mbps[0]", "'fast'", "'unlimited'"),
    ({"name": "x", "network": {"latency_ms": [-1]}}, "network.latency_ms[0]", "-1", "greater than or equal to 0"),
    ({"name": "x", "workers": []}, "workers", "[]", "at least 1"),
    ({"name": "x", "workers": [2, 2]}, "workers", "[2, 2]", "more than once"),
    ({"name": "x", "schedule": {"milestones": [10, 5]}}, "schedule.milestones", "[10, 5]", "increasing"),
    ({"name": "x", "schedule": {"epochs": 0}}, "schedule.epochs", "0", "greater than or equal to 1"),
    ({"name": "x", "goal": {"target_top1": 80}}, "goal.target_top1", "80", "less than or equal to 1"),
    ({"name": "x", "cpus_per_worker": 1.5}, "cpus_per_worker", "1.5", "integer"),
    ({"name": "x", "algorithm": ["gossip"]}, "algorithm[0]", "'gossip'", "allreduce"),
    ({"workers": [1]}, "name", "", "missing"),
    ({"name": "x", "gpus_per_worker": 0}, "gpus_per_worker", "0", "greater than 0 and at most 1"),
    ({"name": "x", "gpus_per_worker": -0.5}, "gpus_per_worker", "-0.5", "greater than 0 and at most 1"),
    ({"name": "x", "gpus_per_worker": 1.5}, "gpus_per_worker", "1.5", "a whole number of GPUs"),
    ({"name": "x", "gpus_per_worker": "half"}, "gpus_per_worker", "'half'", "a share of one GPU"),
    ({"name": "x", "gpus_per_worker": [1, 2]}, "gpus_per_worker", "[1, 2]", "a share of one GPU"),
])
def test_bad_field_names_field_value_and_allowed(raw, field, value, allowed):
    msg = err(raw)
    assert msg.startswith("s.yaml: ")
    assert f"'{field}'" in msg
    assert value in msg
    assert allowed in msg


def test_scalars_are_one_point_grids_and_expansion_is_the_product():
    spec = cfg.parse({"name": "g", "workers": [1, 2], "seed": 3, "model": {"depth": [20, 56], "version": "v2"},
                      "network": {"bandwidth_mbps": ["unlimited", 100], "latency_ms": [0, 5]}})
    trials = cfg.expand(spec)
    assert len(trials) == 2 * 2 * 2 * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    t = trials[0]
    assert (t.depth, t.version, t.workers, t.bandwidth_mbps, t.latency_ms, t.seed) == (20, "v2", 1, None, 0.0, 3)
    assert {t.bandwidth_mbps for t in trials} == {None, 100.0}
    assert trials[-1].global_batch == 2 * 128


def test_smoke_keeps_at_most_two_cpu_workers_and_shrinks():
    spec = cfg.load("scalability")
    trials = cfg.smoke(cfg.expand(spec))
    assert [t.workers for t in trials] == [1, 2]  # 4 and 8 workers are clamped to 2 and collapse onto it
    for t in trials:
        assert t.hardware == "cpu" and t.schedule.epochs <= 2
        assert t.data.train_images <= 512 and t.data.test_images <= 512


def test_shipped_sweeps_are_valid():
    for name in ("scalability", "quickstart"):
        assert cfg.expand(cfg.load(name))


def test_scalability_is_mlbench_closed_division_resnet20():
    spec = cfg.load("scalability")
    assert spec.workers == [1, 2, 4, 8] and spec.model.depth == [20] and spec.model.version == ["v1"]
    s = spec.schedule
    assert (s.batch_per_worker, s.lr_per_256, s.warmup_epochs, s.milestones, s.gamma, s.epochs) == \
        (128, 0.1, 5, [82, 109], 0.1, 164)
    assert (s.momentum, s.nesterov, s.weight_decay) == (0.9, True, 1e-4)
    assert spec.goal.target_top1 == 0.80


def test_unknown_sweep_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="quickstart"):
        cfg.resolve("no-such-sweep")


def test_yaml_is_loaded_safely(tmp_path):
    # The command names its marker by absolute path: it would land there whatever the working folder.
    p = tmp_path / "evil.yaml"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.load(str(p))
    assert not (tmp_path / "pwned").exists()


def test_precision_and_accelerator_type_reach_every_trial():
    trials = cfg.expand(cfg.parse({"name": "p", "precision": ["fp32", "bf16"], "accelerator_type": "A100",
                                   "hardware": ["gpu"]}))
    assert [(t.precision, t.accelerator_type) for t in trials] == [("fp32", "A100"), ("bf16", "A100")]
    assert "_bf16_" in trials[1].trial_id and "_bf16_" not in trials[0].trial_id
    assert cfg.smoke(trials)[1].precision == "bf16"


def test_gpus_per_worker_is_a_share_of_one_gpu_or_whole_gpus():
    for given, share in ((0.5, 0.5), (0.25, 0.25), (1, 1.0), (2, 2.0), (None, 1.0)):
        raw = {"name": "g", "hardware": ["gpu"]} | ({} if given is None else {"gpus_per_worker": given})
        assert {t.gpus_per_worker for t in cfg.expand(cfg.parse(raw))} == {share}


def test_dry_run_of_a_shared_gpu_sweep_on_a_cpu_machine_names_the_gpus_needed(tmp_path):
    import subprocess
    import sys

    import torch

    from conftest import write_sweep

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    f = write_sweep(tmp_path / "half.yaml", name="half", workers=[3], hardware=["gpu"], gpus_per_worker=0.5)
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(f), "--dry-run"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "hardware 'gpu' with 3 workers needs 1.5 GPU(s); this machine has 0" in proc.stderr


def test_max_processes_runs_the_workers_above_it_as_virtual_workers():
    """Issue 13: k processes = the largest divisor of workers <= max_processes (then <= what the
    machine holds); null: one process per worker, as before."""
    from raybench import sweep
    from raybench.spec import virtual

    raw = {"name": "v", "workers": [1, 2, 6, 8, 1024], "max_processes": 4, "schedule": {"batch_per_worker": 16}}
    trials = cfg.expand(cfg.parse(raw))
    assert [(t.workers, t.procs, t.virtual) for t in trials] == [(1, 1, 1), (2, 2, 1), (6, 3, 2), (8, 4, 2),
                                                                 (1024, 4, 256)]
    assert [virtual.largest_divisor(n, lim) for n, lim in ((7, 4), (12, 5), (12, 100), (1, 1))] == [1, 4, 12, 1]
    on_three = sweep.fit_processes(trials, [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 1.0, "GPU": 0.0}])
    assert [t.procs for t in on_three] == [1, 2, 3, 2, 2]
    assert [t.trial_id for t in on_three] == [t.trial_id for t in trials]  # the same grid points
    plain = cfg.expand(cfg.parse(raw | {"max_processes": None}))
    assert {t.processes for t in plain} == {None} and [t.procs for t in plain] == raw["workers"]
    assert sweep.fit_processes(plain, [{"CPU": 2.0}]) == plain  # no max_processes: never emulated


def test_smoke_of_the_scale_sweep_keeps_its_workers_on_two_processes():
    trials = cfg.smoke(cfg.expand(cfg.load("scale")))
    assert len(trials) == 66 and {t.workers for t in trials} == {2**i for i in range(11)}
    for t in trials:
        assert t.procs == min(t.workers, 2) and t.procs * t.virtual == t.workers
        assert t.workers * t.schedule.batch_per_worker <= t.data.train_images <= max(512, t.workers)
        assert t.schedule.epochs == 2 and t.schedule.batch_per_worker == 1  # one batch: 1,024 x 1 fits 1,024


def test_the_scale_sweep_is_resnet20_from_1_to_1024_workers_over_six_links():
    spec = cfg.load("scale")
    assert spec.workers == [2**i for i in range(11)] and spec.schedule.batch_per_worker == 32
    assert (spec.model.depth, spec.model.version, spec.goal.target_top1) == ([20], ["v1"], 0.80)
    assert spec.network.bandwidth_mbps == [1000, 10000, 100000] and spec.network.latency_ms == [0.005, 0.05]
    assert spec.max_processes == 1024 and max(spec.workers) * 32 <= 50_000


def test_the_reduced_scale_sweep_is_the_scale_sweep_cut_to_fit_two_cores():
    """sweeps/scale-reduced.yaml (issue 13, must-show 4): the scale sweep's grid, 1 to 1,024 workers
    over its six links, with every trial's step fitting its 6,144 images and a target the small
    worker counts reach in its 3 epochs; --replay trains one trial per worker count."""
    from raybench.analysis.prediction import replay_plan

    full, reduced = cfg.load("scale"), cfg.load("scale-reduced")
    assert (reduced.workers, reduced.network, reduced.model) == (full.workers, full.network, full.model)
    assert reduced.max_processes == 1024 and reduced.data.train_images == 6144
    assert max(reduced.workers) * reduced.schedule.batch_per_worker == reduced.data.train_images
    assert reduced.schedule.epochs == 3 and reduced.goal.target_top1 == 0.30 and reduced.goal.stop_at_target
    trials = cfg.expand(reduced)
    trained, fill = replay_plan(trials)
    assert len(trials) == 66 and sorted(t.workers for t in trained) == reduced.workers
    assert sum(len(v) for v in fill.values()) == 55
