"""A small MobileNetV2-style network for 32x32 inputs."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileNetV2Small"]

#: Inverted residual settings ``(expand_ratio t, out_channels c, repeats n, first_stride s)``.
DEFAULT_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
)


def _scale(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_bn(
    in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection (+ residual if shapes match).

    The expansion layer is omitted when ``expand_ratio == 1``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn(in_ch, hidden, 1))
        layers.append(_conv_bn(hidden, hidden, 3, stride=stride, groups=hidden))
        layers.append(_conv_bn(hidden, out_ch, 1, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``use_residual`` is fixed at construction time, so this branch is static for tracing.
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Small(nn.Module):
    """Compact MobileNetV2 for 32x32 inputs (well under 1M parameters at width 1).

    Stem conv3x3 (stride 1) + BN + ReLU6, inverted residual blocks per ``DEFAULT_SETTINGS``, a 1x1 conv to
    ``320 * width`` channels + BN + ReLU6, global average pooling and a linear classifier.

    Args:
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        width: Channel multiplier; every layer gets ``max(1, round(c * width))`` channels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}.")
        stem = _scale(32, width)
        layers: list[nn.Module] = [_conv_bn(in_channels, stem, 3)]
        channels = stem
        for t, c, n, s in DEFAULT_SETTINGS:
            out = _scale(c, width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        last = _scale(320, width)
        layers.append(_conv_bn(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(last, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))
