"""ResNet-9 for CIFAR-10: the network of David Page's DAWNBench entry ("How to train your ResNet",
myrtle.ai, 2018), which trains to 94% test top-1 in 24 epochs.

Layout (every conv 3x3, stride 1, padding 1, no bias; each ``conv_bn`` is conv-BN-ReLU)::

    prep     conv_bn(3, 64)                                  32x32
    layer1   conv_bn(64, 128), max-pool 2, + residual         16x16
    layer2   conv_bn(128, 256), max-pool 2                     8x8
    layer3   conv_bn(256, 512), max-pool 2, + residual         4x4
    pool     max-pool 4, flatten                               1x1
    linear   512 -> 10, no bias, logits x 0.125

where ``residual`` adds ``conv_bn(c, c)`` twice to its input (x + f(x), no activation after the
sum). Nine weight layers: 8 convolutions and the linear classifier. The 0.125 scale on the logits
is Page's: it keeps the softmax from saturating early at the high learning rates the schedule uses.
Initialisation is PyTorch's default, as in Page's code.

Trainable parameters (exact, num_classes=10): 6,573,120 (6.57 M): 6,568,640 convolution and
linear weights, 4,480 batch-norm weights and biases.
"""
from __future__ import annotations

from torch import Tensor, nn

from raybench.models import ARCHS, check

DEPTH = ARCHS["resnet9"].depths[0]
LOGIT_SCALE = 0.125


class ConvBN(nn.Sequential):
    """3x3 conv (no bias) - BN - ReLU, optionally followed by a 2x2 max-pool."""

    def __init__(self, in_planes: int, planes: int, pool: bool = False) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_planes, planes, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class Residual(nn.Module):
    """x + conv_bn(conv_bn(x)), channels unchanged; nothing after the sum."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.res1 = ConvBN(planes, planes)
        self.res2 = ConvBN(planes, planes)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res2(self.res1(x))


class Scale(nn.Module):
    """Multiplies its input by a constant. A module, not a lambda, so that whole models pickle."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class ResNet9(nn.Module):
    """prep, layer1 (+ residual), layer2, layer3 (+ residual), max-pool, linear, logit scale."""

    def __init__(self, num_classes: int = 10, logit_scale: float = LOGIT_SCALE) -> None:
        super().__init__()
        self.prep = ConvBN(3, 64)
        self.layer1 = nn.Sequential(ConvBN(64, 128, pool=True), Residual(128))
        self.layer2 = ConvBN(128, 256, pool=True)
        self.layer3 = nn.Sequential(ConvBN(256, 512, pool=True), Residual(512))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes, bias=False)
        self.scale = Scale(logit_scale)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = self.pool(x).flatten(1)
        return self.scale(self.fc(x))


def resnet9(depth: int = DEPTH, version: str = "v1", num_classes: int = 10) -> nn.Module:
    """Page's ResNet-9; ``depth`` and ``version`` exist so that ``build`` treats every arch alike."""
    check("resnet9", depth, version)
    return ResNet9(num_classes=num_classes)
