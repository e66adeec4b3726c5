"""The model registry: which networks a trial can train, with their depths, versions and names.

This module is the one owner of the architecture table. It imports no torch: the sweep file is
validated against ``ARCHS`` before anything heavy is loaded, and ``build`` imports an arch's
module only when a network is built. Every name a model goes by (the ``model`` column, the part
of a trial id, the DAWNBench name) comes from ``model_name`` / ``display_name`` here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Arch:
    """One architecture: allowed depths and versions (the first of each is the default), the
    factory that builds it (``module:function``, imported on first use) and its display name."""

    depths: tuple[int, ...]
    versions: tuple[str, ...]
    builder: str
    title: str  # "ResNet" -> "ResNet-20 v1"

    @property
    def fixed(self) -> bool:
        """One depth and one version only: the arch's name says it all (resnet9)."""
        return len(self.depths) == 1 and len(self.versions) == 1


ARCHS: dict[str, Arch] = {
    # He et al.'s CIFAR ResNets, v1 post-activation and v2 pre-activation (resnet_cifar.py)
    "resnet": Arch((20, 32, 44, 56), ("v1", "v2"), "raybench.models.resnet_cifar:resnet_cifar", "ResNet"),
    # Page's DAWNBench ResNet-9 (resnet9.py)
    "resnet9": Arch((9,), ("v1",), "raybench.models.resnet9:resnet9", "ResNet-9"),
}


def arch(name: str) -> Arch:
    """The registry entry of ``name``; raises ValueError naming what is allowed."""
    if name not in ARCHS:
        raise ValueError(f"model.arch {name!r} is not known; allowed: {', '.join(map(repr, ARCHS))}")
    return ARCHS[name]


def check(name: str, depth: int, version: str) -> Arch:
    """The entry of ``name`` after checking that it has ``depth`` and ``version``."""
    a = arch(name)
    if depth not in a.depths:
        raise ValueError(f"{name} depth {depth!r} is not supported; allowed: {', '.join(map(str, a.depths))}")
    if version not in a.versions:
        raise ValueError(f"{name} version {version!r} is not supported; allowed: {', '.join(a.versions)}")
    return a


def model_name(name: str, depth: int, version: str, sep: str = "_") -> str:
    """``resnet20_v1`` (the ``model`` column; ``sep=""`` gives ``resnet20v1`` for trial ids);
    an arch with one depth and one version is its own name (``resnet9``)."""
    return name if ARCHS[name].fixed else f"{name}{depth}{sep}{version}"


def display_name(name: str, depth: int, version: str) -> str:
    """The name a person reads (DAWNBench's ``model`` field): ``ResNet-20 v1``, ``ResNet-9``."""
    a = ARCHS[name]
    return a.title if a.fixed else f"{a.title}-{depth} {version}"


def build(name: str, depth: int, version: str, num_classes: int = 10) -> nn.Module:
    """The network a trial trains; raises ValueError naming what is allowed."""
    module, function = check(name, depth, version).builder.split(":")
    return getattr(importlib.import_module(module), function)(depth, version, num_classes=num_classes)
