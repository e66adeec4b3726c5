"""ResNet-9 (Page's DAWNBench network): shape, parameter count, pickling, registration, the sweep
file's arch/depth/version check, the shipped dawnbench sweep, and one epoch through the real loop."""
from __future__ import annotations

import importlib
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch

from raybench.models import build
from raybench.models.resnet9 import ResNet9, resnet9
from raybench.spec import config as cfg
from raybench.spec.config import ConfigError

from conftest import ROOT, one_rank_gloo, write_sweep

PARAMS = 6_573_120  # as in resnet9's docstring; Page's network is commonly quoted as 6.57 M


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_forward_shape() -> None:
    model = resnet9()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert ResNet9(num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_logits_are_scaled_by_one_eighth() -> None:
    model = resnet9().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.pool(model.layer3(model.layer2(model.layer1(model.prep(x))))).flatten(1)
        assert torch.allclose(model(x), 0.125 * model.fc(features))


def test_parameter_count_exact_and_in_docstring() -> None:
    assert n_params(resnet9()) == PARAMS
    doc = importlib.import_module("raybench.models.resnet9").__doc__
    assert f"{PARAMS:,}" in doc and f"({PARAMS / 1e6:.2f} M)" in doc


def test_nine_weight_layers() -> None:
    model = resnet9()
    weighted = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == 9


def test_pickles_whole() -> None:
    model = resnet9().eval()
    x = torch.randn(1, 3, 32, 32)
    again = pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(x), model(x)) and torch.equal(loaded(x), model(x))


def test_build_registers_it_and_names_what_is_allowed() -> None:
    assert isinstance(build("resnet9", 9, "v1"), ResNet9)
    with pytest.raises(ValueError, match="resnet9 depth 20 .* allowed: 9"):
        build("resnet9", 20, "v1")
    with pytest.raises(ValueError, match="resnet9 version 'v2' .* allowed: v1"):
        build("resnet9", 9, "v2")
    with pytest.raises(ValueError, match="allowed: 'resnet', 'resnet9'"):
        build("vgg", 11, "v1")


def test_a_resnet9_sweep_file_validates(tmp_path) -> None:
    path = write_sweep(tmp_path / "r9.yaml", name="r9", model={"arch": "resnet9", "depth": [9], "version": ["v1"]},
                       workers=[1, 2])
    trials = cfg.expand(cfg.load(str(path)))
    assert [(t.arch, t.depth, t.version, t.workers) for t in trials] == [
        ("resnet9", 9, "v1", 1), ("resnet9", 9, "v1", 2)]
    assert {t.model_name for t in trials} == {"resnet9"}
    assert [t.trial_id for t in trials] == ["resnet9_w1_cpu_bwinf_lat0_allreduce_s0",
                                            "resnet9_w2_cpu_bwinf_lat0_allreduce_s0"]


def test_resnet9_depth_and_version_default_to_its_own() -> None:
    spec = cfg.parse({"name": "x", "model": {"arch": "resnet9"}})
    assert (spec.model.depth, spec.model.version) == ([9], ["v1"])
    assert (cfg.parse({"name": "x"}).model.depth, cfg.parse({"name": "x"}).model.version) == ([20], ["v1"])


def test_resnet_names_and_trial_ids_are_unchanged() -> None:
    (t,) = cfg.expand(cfg.parse({"name": "x", "model": {"arch": "resnet", "depth": 56, "version": "v2"}}))
    assert t.model_name == "resnet56_v2"
    assert t.trial_id == "resnet56v2_w1_cpu_bwinf_lat0_allreduce_s0"


@pytest.mark.parametrize("model, field, value, allowed", [
    ({"arch": "resnet9", "depth": [20]}, "model.depth[0]", "20", "allowed with arch 'resnet9': 9"),
    ({"arch": "resnet", "depth": [9]}, "model.depth[0]", "9", "allowed: 20, 32, 44 or 56"),
    ({"depth": [20, 9]}, "model.depth[1]", "9", "allowed: 20, 32, 44 or 56"),
    ({"arch": "resnet9", "version": ["v2"]}, "model.version[0]", "'v2'", "allowed with arch 'resnet9': 'v1'"),
    ({"arch": "resnet", "version": ["v3"]}, "model.version[0]", "'v3'", "'v1' or 'v2'"),
    ({"arch": "vgg", "depth": [11]}, "model.arch", "'vgg'", "'resnet' or 'resnet9'"),
])
def test_bad_combination_names_field_value_and_allowed(tmp_path, model, field, value, allowed) -> None:
    path = write_sweep(tmp_path / "bad.yaml", name="bad", model=model)
    with pytest.raises(ConfigError) as e:
        cfg.load(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: field '{field}': value {value} is not allowed (")
    assert allowed in msg
    assert msg.count("field '") == 1  # one problem, one message: a bad arch does not also fail the depth


def test_depth_of_the_other_arch_says_which_arch_has_it() -> None:
    with pytest.raises(ConfigError, match="9 is a depth of arch 'resnet9'"):
        cfg.parse({"name": "x", "model": {"depth": [9]}})
    with pytest.raises(ConfigError, match="20 is a depth of arch 'resnet'"):
        cfg.parse({"name": "x", "model": {"arch": "resnet9", "depth": [20]}})


def test_cli_rejects_a_bad_combination_before_ray(tmp_path) -> None:
    path = write_sweep(tmp_path / "bad.yaml", name="bad", model={"arch": "resnet9", "depth": [20]})
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(path), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}: field 'model.depth[0]': value 20 is not allowed "
                                   f"(allowed with arch 'resnet9': 9; 20 is a depth of arch 'resnet')")


def test_shipped_dawnbench_sweep() -> None:
    spec = cfg.load("dawnbench")
    assert (spec.model.arch, spec.model.depth, spec.model.version) == ("resnet9", [9], ["v1"])
    assert spec.workers == [1] and spec.hardware == ["cpu"]  # CI has no GPU; the file says how to switch
    assert (spec.goal.target_top1, spec.goal.stop_at_target, spec.goal.time_budget_s) == (0.94, True, None)
    s = spec.schedule
    assert s.batch_per_worker == 512 and s.epochs <= 30 and s.milestones and s.milestones[-1] < s.epochs
    assert "hardware: [gpu]" in (ROOT / "sweeps" / "dawnbench.yaml").read_text()


def test_dawnbench_smoke_dry_run(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", "dawnbench", "--smoke", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "sweep dawnbench: 1 trial(s)"
    assert lines[2].split()[:3] == ["resnet9_w1_cpu_bwinf_lat0_allreduce_s0", "resnet9", "1"]


@pytest.fixture
def process_group():
    with one_rank_gloo():
        yield


def test_one_epoch_through_the_loop(cifar_dir, process_group) -> None:
    """The shared per-worker loop trains it (in-process, a gloo group of one) and labels the row."""
    from raybench.worker import data as cifar
    from raybench.worker.loop import run
    from raybench.worker.setup import Worker

    (t,) = cfg.expand(cfg.parse({
        "name": "r9", "model": {"arch": "resnet9"},
        "schedule": {"batch_per_worker": 32, "warmup_epochs": 0, "milestones": [], "epochs": 1},
        "goal": {"time_budget_s": None}, "data": {"train_images": 64, "test_images": 32}}))
    rows = []
    run(t, Worker(0, 1, torch.device("cpu")), cifar.load(cifar_dir), "run",
        lambda row, ckpt, trace: rows.append(row.to_dict()))
    (row,) = rows
    assert (row["model"], row["depth"], row["version"]) == ("resnet9", 9, "v1")
    assert row["trial_id"] == "resnet9_w1_cpu_bwinf_lat0_allreduce_s0"
    assert row["images_per_second"] * row["epoch_seconds"] == pytest.approx(64)
    assert 0 <= row["test_top1"] <= 1 and row["train_loss"] > 0


def test_dawnbench_export_names_it_resnet9() -> None:
    from raybench.analysis import dawnbench
    from raybench.models import display_name

    assert display_name("resnet9", 9, "v1") == "ResNet-9"
    assert dawnbench.model_tag("resnet9", 9, "v1", 1) == "resnet9-w1"
    assert dawnbench.model_tag("resnet", 20, "v1", 2) == "resnet20v1-w2"  # unchanged
