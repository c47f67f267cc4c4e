"""Tests of `lightning_prune.engine.batchnorm`: re-estimating BatchNorm statistics after a cut."""

from __future__ import annotations

import torch

from lightning_prune.engine.batchnorm import reestimate_batchnorm
from lightning_prune.zoo.models import build_model


def test_reestimate_batchnorm_averages_the_batch_statistics_and_restores_modes() -> None:
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10, width=0.25).train()
    model.features[0].eval()
    inputs = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    conv, norm = model.features[0], model.features[1]
    with torch.no_grad():
        expected = torch.stack([conv(x).mean((0, 2, 3)) for x in inputs]).mean(0)
    modes = [m.training for m in model.modules()]
    reestimate_batchnorm(model, inputs)
    torch.testing.assert_close(norm.running_mean, expected)
    assert int(norm.num_batches_tracked) == 3 and norm.momentum == 0.1
    assert [m.training for m in model.modules()] == modes
