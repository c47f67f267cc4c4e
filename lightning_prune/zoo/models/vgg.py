"""CIFAR-style VGG with batch normalization (the VGG-11/13/16/19 used in filter-pruning papers)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG", "VGG_CFGS"]

# fmt: off
#: Layer configurations: an int is a 3x3 conv with that many output channels, ``"M"`` a 2x2 max-pool.
VGG_CFGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# fmt: on


def _scale(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs.

    ``features`` holds ``Conv2d(3x3, bias=False) -> BatchNorm2d -> ReLU`` triples and five max-pools, which
    reduce a 32x32 input to 1x1; ``classifier`` is ``Linear -> ReLU -> Linear``. Inputs must be 32x32.

    Args:
        depth: Number of weight layers; one of 11, 13, 16, 19.
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        width: Channel multiplier; every layer gets ``max(1, round(c * width))`` channels.
    """

    def __init__(self, depth: int = 16, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if depth not in VGG_CFGS:
            valid = ", ".join(str(d) for d in sorted(VGG_CFGS))
            raise ValueError(f"Unsupported VGG depth {depth!r}; valid depths are: {valid}.")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}.")
        self.depth = depth
        layers: list[nn.Module] = []
        channels = in_channels
        for v in VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = _scale(int(v), width)
                layers += [
                    nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        hidden = _scale(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, 32, 32)`` images to ``(B, num_classes)`` logits."""
        return self.classifier(self.flatten(self.features(x)))
