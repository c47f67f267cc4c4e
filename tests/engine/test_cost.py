"""Tests of `lightning_prune.engine.cost`: parameter/MAC counts and latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune.engine import surgery
from lightning_prune.engine.cost import ModelCost, latency_ms, model_cost
from lightning_prune.zoo.models import build_model


def _conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers, counted by hand from their output sizes."""
    total = 0

    def hook(module: nn.Module, _: object, out: torch.Tensor) -> None:
        nonlocal total
        total += module.weight.numel() * (out[0, 0].numel() if isinstance(module, nn.Conv2d) else 1)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_vgg16_full_width_cost() -> None:
    model = build_model("vgg16", num_classes=10, in_channels=3)
    x = torch.zeros(4, 3, 32, 32)
    cost = model_cost(model, x)  # counts one example of the batch
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert 14.9e6 < cost.params < 15.1e6
    assert 313e6 < cost.macs < 316e6
    assert cost.macs == pytest.approx(_conv_macs(model, x[:1]), rel=0.01)  # BN/ReLU/pool add well under 1%
    assert cost.as_dict() == {"params": cost.params, "macs": cost.macs}


def test_pruning_reduces_params_and_macs() -> None:
    model = build_model("vgg11", num_classes=10, in_channels=1, width=0.25)
    x = surgery.example_input(model, [1, 1, 32, 32])
    before = model_cost(model, x)
    graph = surgery.build_graph(model, x)
    surgery.prune_step(model, graph, ["features.4", True, list(range(16))])
    after = model_cost(model, x)
    assert isinstance(after, ModelCost)
    assert after.params < before.params and after.macs < before.macs
    assert after.params == sum(p.numel() for p in model.parameters())
    assert before.macs - after.macs == pytest.approx(
        _conv_macs(build_model("vgg11", 10, 1, width=0.25), x) - _conv_macs(model, x), rel=0.02
    )


def test_cost_and_latency_keep_modes() -> None:
    model = build_model("resnet20", num_classes=10, in_channels=3, width=0.25).train()
    model.layer1.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    x = torch.randn(2, 3, 32, 32)
    model_cost(model, x)
    assert {n: m.training for n, m in model.named_modules()} == modes
    ms = latency_ms(model, x, repeats=3, warmup=1)
    assert isinstance(ms, float) and ms > 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(not p.is_inference() for p in model.parameters())
