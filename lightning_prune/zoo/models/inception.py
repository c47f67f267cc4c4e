"""A small GoogLeNet/Inception-style network for 32x32 inputs."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InceptionModule", "InceptionSmall"]


def _scale(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InceptionModule(nn.Module):
    """Four parallel branches concatenated along channels.

    Branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 (a factorized 5x5); 3x3 max-pool (stride 1) -> 1x1.
    Every conv is followed by BN + ReLU. Output channels: ``c1 + c3 + c5 + pool_proj``.
    """

    def __init__(self, in_ch: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = _conv_bn_relu(in_ch, c1, 1)
        self.branch2 = nn.Sequential(_conv_bn_relu(in_ch, c3_reduce, 1), _conv_bn_relu(c3_reduce, c3, 3))
        self.branch3 = nn.Sequential(
            _conv_bn_relu(in_ch, c5_reduce, 1), _conv_bn_relu(c5_reduce, c5, 3), _conv_bn_relu(c5, c5, 3)
        )
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(in_ch, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionSmall(nn.Module):
    """Compact Inception network: stem, three inception modules with max-pools between them, classifier.

    Spatial sizes for a 32x32 input: 32 (stem, module 1) -> 16 (module 2) -> 8 (module 3) -> global pool.

    Args:
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        width: Channel multiplier; every layer gets ``max(1, round(c * width))`` channels.
    """

    #: Per-module ``(c1, c3_reduce, c3, c5_reduce, c5, pool_proj)`` at width 1.
    MODULE_CFGS: tuple[tuple[int, int, int, int, int, int], ...] = (
        (32, 48, 64, 8, 16, 16),
        (64, 64, 96, 16, 32, 32),
        (96, 64, 128, 16, 32, 64),
    )

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}.")
        stem = _scale(64, width)
        self.stem = _conv_bn_relu(in_channels, stem, 3)
        channels = stem
        modules: list[InceptionModule] = []
        for cfg in self.MODULE_CFGS:
            module = InceptionModule(channels, *(_scale(c, width) for c in cfg))
            modules.append(module)
            channels = module.out_channels
        self.inception1, self.inception2, self.inception3 = modules
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)
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
        x = self.inception1(self.stem(x))
        x = self.inception2(self.pool1(x))
        x = self.inception3(self.pool2(x))
        return self.fc(self.flatten(self.avgpool(x)))
