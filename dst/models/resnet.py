"""ResNets: ResNet-50 for ImageNet (torchvision layout) and small CIFAR ResNets.

ResNet-50 at 1000 classes has 25,557,032 parameters; its bottleneck convs plus the FC weight
(the DSR reallocation pool) hold 22,724,608 weights. ``width_multiplier`` builds the thin dense
baselines (x0.54, x0.46) with every channel count scaled and torchvision's module names kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from .init import init_weights, scaled_width


class ImageNetResNet(nn.Module):
    """Bottleneck ResNet with every width scaled by ``width_multiplier``.

    Module names match ``torchvision.models.ResNet`` (conv1, bn1, layer1..4 with blocks
    conv1/conv2/conv3 and downsample.0/.1, fc), so state dicts share keys.
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3),
                 num_classes: int = 1000, width_multiplier: float = 1.0):
        super().__init__()
        self.width_multiplier = width_multiplier
        self.inplanes = scaled_width(64, width_multiplier)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes = [scaled_width(p, width_multiplier) for p in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * Bottleneck.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000, width_multiplier: float = 1.0) -> nn.Module:
    """ResNet-50 (v1.5, torchvision) with dst's init; ``width_multiplier`` != 1 gives the
    thin dense baseline with the same module names."""
    if width_multiplier == 1.0:
        model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    else:
        model = ImageNetResNet((3, 4, 6, 3), num_classes, width_multiplier)
    return init_weights(model)


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016, CIFAR): conv-BN-ReLU-conv-BN + shortcut, ReLU.

    ``shortcut`` is a 1x1 conv + BN, present only where the shape changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): 3x3 stem, three stages of n basic blocks (16, 32, 64 channels times
    ``width_multiplier``), global average pool, ``fc``."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width_multiplier: float = 1.0,
                 in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), "
                             f"got {depth}")
        n = (depth - 2) // 6
        widths = [scaled_width(base, width_multiplier) for base in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, width, stride if i == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10, width_multiplier: float = 1.0,
             in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, num_classes, width_multiplier, in_channels)


def resnet32(num_classes: int = 10, width_multiplier: float = 1.0,
             in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, num_classes, width_multiplier, in_channels)


class MLP(nn.Module):
    """Flatten, then Linear+ReLU per hidden width (``hidden``), then the ``fc`` classifier."""

    def __init__(self, input_size: int = 3 * 32 * 32, hidden: tuple[int, ...] = (256,),
                 num_classes: int = 10):
        super().__init__()
        if input_size < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"MLP sizes must be positive, got input_size={input_size}, "
                             f"hidden={tuple(hidden)}")
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = input_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))


def mlp(num_classes: int = 10, input_size: int = 3 * 32 * 32,
        hidden: tuple[int, ...] | list[int] = (256,)) -> MLP:
    return MLP(input_size, tuple(hidden), num_classes)
