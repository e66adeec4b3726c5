"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of 16/32/64 channels.

v1 is the original post-activation network; v2 the pre-activation one of He et al. 2016b
("Identity Mappings in Deep Residual Networks"). Both use the parameter-free option-A shortcut
(subsample, zero-pad channels), so the two versions are compared at equal width and shortcut.

Trainable parameters (exact, num_classes=10):

=====  =======================  =======================
depth  v1                       v2
=====  =======================  =======================
20     269,722 (0.27 M)         269,722 (0.27 M)
32     464,154 (0.46 M)         464,154 (0.46 M)
44     658,586 (0.66 M)         658,586 (0.66 M)
56     853,018 (0.85 M)         853,018 (0.85 M)
=====  =======================  =======================

v2 equals v1 exactly: it adds a final 64-channel BN (+128) but its pre-activation BNs sit on a
block's input, not its output, so the first block of stages 2 and 3 normalise 16 and 32 channels
where v1 normalises 32 and 64 (-32, -64), and the first block of stage 1 has no BN of its own
because the stem's BN-ReLU serves it (-32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raybench.models import ARCHS, check

DEPTHS = ARCHS["resnet"].depths
VERSIONS = ARCHS["resnet"].versions


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding; no bias, a BN always follows or precedes it."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option-A shortcut: identity, or subsample and zero-pad channels when the shape changes.

    A module, not a lambda, so that whole models pickle (``torch.save(model)``).
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class BasicBlock(nn.Module):
    """Post-activation block (v1): conv-bn-relu-conv-bn, add the shortcut, relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (v2): bn-relu-conv-bn-relu-conv, add the shortcut; nothing after.

    ``preact=False`` drops the leading bn-relu: the first block of the network takes the stem's
    activation instead, before the split into both paths (He et al. 2016b, appendix).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, preact: bool = True) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes) if preact else None
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        # Not in place: the shortcut still needs x.
        out = x if self.bn1 is None else F.relu(self.bn1(x))
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class ResNetCifar(nn.Module):
    """conv1-bn1-relu, layer1..3 of n blocks (16/32/64 channels), [bn_final-relu], pool, fc."""

    def __init__(self, block: type[BasicBlock | PreActBlock], n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 16, n, stride=1, first=True)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn_final = nn.BatchNorm2d(64) if block is PreActBlock else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock | PreActBlock], planes: int, n: int, stride: int, first: bool = False
    ) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(n):
            s = stride if i == 0 else 1
            if block is PreActBlock and first and i == 0:
                layers.append(PreActBlock(self.in_planes, planes, s, preact=False))
            else:
                layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.bn_final is not None:
            x = F.relu(self.bn_final(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _resnet(block: type[BasicBlock | PreActBlock], depth: int, num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(block, (depth - 2) // 6, num_classes=num_classes)


def resnet_cifar(depth: int, version: str = "v1", num_classes: int = 10) -> nn.Module:
    """The CIFAR ResNet of ``depth`` (20/32/44/56) and ``version`` (v1 post-, v2 pre-activation)."""
    check("resnet", depth, version)
    block = BasicBlock if version == "v1" else PreActBlock
    return _resnet(block, depth, num_classes=num_classes)


def resnet20(version: str = "v1", num_classes: int = 10) -> nn.Module:
    """ResNet-20 for CIFAR (n=3)."""
    return resnet_cifar(20, version, num_classes)


def resnet32(version: str = "v1", num_classes: int = 10) -> nn.Module:
    """ResNet-32 for CIFAR (n=5)."""
    return resnet_cifar(32, version, num_classes)


def resnet44(version: str = "v1", num_classes: int = 10) -> nn.Module:
    """ResNet-44 for CIFAR (n=7)."""
    return resnet_cifar(44, version, num_classes)


def resnet56(version: str = "v1", num_classes: int = 10) -> nn.Module:
    """ResNet-56 for CIFAR (n=9)."""
    return resnet_cifar(56, version, num_classes)
