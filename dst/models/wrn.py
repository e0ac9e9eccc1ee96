"""Pre-activation Wide ResNet for CIFAR, as used by Mostafa & Wang (DSR, ICML 2019).

WRN-28-2 with 10 classes has 1,467,610 parameters; its 24 3x3 convs inside residual blocks
(the DSR reallocation pool) hold 1,451,520 weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights, scaled_width


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with an identity or 1x1-conv shortcut.

    When the shape changes, the shortcut conv (``shortcut``) reads the pre-activated input,
    as in Zagoruyko & Komodakis' reference code.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem (3->16), three groups of (depth-4)/6 pre-activation blocks with
    widths round(16k), round(32k), round(64k), then BN-ReLU-global-avgpool-``fc``.

    ``widen_factor`` may be a float (thin dense baselines, e.g. 0.75 or 1.47).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: float = 2,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), "
                             f"got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [scaled_width(base, widen_factor) for base in (16, 32, 64)]
        self.depth = depth
        self.widen_factor = widen_factor
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        groups = []
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_planes, width, stride if i == 0 else 1, dropout))
                in_planes = width
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wrn(num_classes: int = 10, depth: int = 28, widen_factor: float = 2,
        dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """Generic WRN builder (registry name ``wrn``)."""
    return WideResNet(depth, widen_factor, num_classes, dropout, in_channels)


def wrn28_2(num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-28-2, the DSR CIFAR-10 model (registry name ``wrn28_2``)."""
    return WideResNet(28, 2, num_classes, dropout, in_channels)
