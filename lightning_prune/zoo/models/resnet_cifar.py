"""CIFAR ResNets (depth 6n+2: ResNet-20/32/56/110) with projection shortcuts."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet"]


def _scale(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection.

    The shortcut is the identity when the shape is unchanged, otherwise a 1x1 conv + BN projection
    (zero-padding shortcuts would break torch-pruning's residual channel coupling).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al., 2016, Sec. 4.2).

    Stem conv3x3+BN+ReLU, three stages of ``n = (depth - 2) / 6`` basic blocks with 16/32/64 channels
    (times ``width``), stride 2 at stages 2 and 3, global average pooling and a linear classifier.

    Args:
        depth: Total depth, ``6n + 2`` (20, 32, 56, 110, ...).
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        width: Channel multiplier; every layer gets ``max(1, round(c * width))`` channels.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"Unsupported CIFAR ResNet depth {depth!r}; depth must be 6n+2 with n >= 1 (e.g. 20, 32, 56, 110)."
            )
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}.")
        self.depth = depth
        n = (depth - 2) // 6
        widths = [_scale(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))
