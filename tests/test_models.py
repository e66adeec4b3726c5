"""CIFAR ResNets: parameter counts as published, shapes, pickling, and errors that name the fix."""
from __future__ import annotations

import importlib

import pytest
import torch

from raybench.models import build
from raybench.models.resnet_cifar import DEPTHS, VERSIONS, resnet20, resnet32, resnet44, resnet56, resnet_cifar

# Exact counts, as in the table of resnet_cifar's docstring.
PARAMS = {
    (20, "v1"): 269_722,
    (32, "v1"): 464_154,
    (44, "v1"): 658_586,
    (56, "v1"): 853_018,
    (20, "v2"): 269_722,
    (32, "v2"): 464_154,
    (44, "v2"): 658_586,
    (56, "v2"): 853_018,
}
# He et al. 2016, table 6.
PAPER_MILLIONS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85}

GRID = [(d, v) for d in DEPTHS for v in VERSIONS]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("depth", DEPTHS)
def test_v1_params_match_paper(depth: int) -> None:
    assert round(n_params(resnet_cifar(depth, "v1")) / 1e6, 2) == PAPER_MILLIONS[depth]


@pytest.mark.parametrize(("depth", "version"), GRID)
def test_params_exact(depth: int, version: str) -> None:
    assert n_params(resnet_cifar(depth, version)) == PARAMS[depth, version]


def test_docstring_table_lists_the_counts() -> None:
    # import_module: the attribute raybench.models.resnet_cifar is the function, not the module.
    doc = importlib.import_module("raybench.models.resnet_cifar").__doc__
    rows = {int(line.split()[0]): line.split() for line in doc.splitlines() if line[:2].isdigit()}
    for depth in DEPTHS:
        _, v1, v1_m, _, v2, v2_m, _ = rows[depth]
        assert (v1, v2) == (f"{PARAMS[depth, 'v1']:,}", f"{PARAMS[depth, 'v2']:,}")
        assert (v1_m, v2_m) == (f"({PARAMS[depth, 'v1'] / 1e6:.2f}", f"({PARAMS[depth, 'v2'] / 1e6:.2f}")


@pytest.mark.parametrize(("depth", "version"), GRID)
def test_forward_shape(depth: int, version: str) -> None:
    model = resnet_cifar(depth, version)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_num_classes() -> None:
    with torch.no_grad():
        assert resnet_cifar(20, "v2", num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_layer_names() -> None:
    v1 = {name for name, _ in resnet20("v1").named_children()}
    v2 = {name for name, _ in resnet20("v2").named_children()}
    assert {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"} <= v1
    assert v2 - v1 == {"bn_final"}


@pytest.mark.parametrize("factory", [resnet20, resnet32, resnet44, resnet56])
def test_factories(factory) -> None:
    depth = int(factory.__name__.removeprefix("resnet"))
    assert n_params(factory("v2")) == PARAMS[depth, "v2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_pickle_round_trip(version: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = resnet_cifar(20, version)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # move BN running stats off their init
    model.eval()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("depth", [18, 110, 0])
def test_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"depth {depth}\b.*20, 32, 44, 56"):
        resnet_cifar(depth, "v1")


@pytest.mark.parametrize("version", ["v3", "V1", ""])
def test_bad_version(version: str) -> None:
    with pytest.raises(ValueError, match=rf"version '{version}'.*v1, v2"):
        resnet_cifar(20, version)


def test_build() -> None:
    assert n_params(build("resnet", 20, "v1")) == PARAMS[20, "v1"]
    with pytest.raises(ValueError, match=r"'vgg'.*'resnet'"):
        build("vgg", 20, "v1")


@pytest.mark.parametrize("version", VERSIONS)
def test_backward(version: str) -> None:
    model = resnet_cifar(20, version)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
