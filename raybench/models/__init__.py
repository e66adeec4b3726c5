"""Model factories by name: what a TrialSpec's (arch, depth, version) builds."""
from __future__ import annotations

from torch import nn

from raybench.models.resnet9 import resnet9 as _resnet9
from raybench.models.resnet_cifar import resnet_cifar as _resnet_cifar


def build(arch: str, depth: int, version: str, num_classes: int = 10) -> nn.Module:
    """The network a trial trains; raises ValueError naming what is allowed."""
    if arch == "resnet":
        return _resnet_cifar(depth, version, num_classes=num_classes)
    if arch == "resnet9":
        return _resnet9(depth, version, num_classes=num_classes)
    raise ValueError(f"model.arch {arch!r} is not known; allowed: 'resnet', 'resnet9'")
