"""Pruning under the Trainer's precision settings on CPU: bf16 autocast, fp16 autocast (which Lightning turns
into bf16 on CPU) and a model held in bf16 (traced with a bf16 example input)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from helpers import (
    LAYERS,
    AfterPruning,
    check_pruned_and_trained,
    fast_callback,
    fast_trainer,
    tiny_classifier,
    tiny_data,
)


def _prune_with(tmp_path, precision: str):
    pl.seed_everything(0)
    module = tiny_classifier()
    sizes = {n: module.model.get_submodule(n).out_channels for n in LAYERS["vgg11"]}
    snapshot = AfterPruning(LAYERS["vgg11"], epoch=1)
    trainer = fast_trainer(tmp_path, [fast_callback(), snapshot], precision=precision, limit_train_batches=2)
    trainer.fit(module, datamodule=tiny_data())
    check_pruned_and_trained(trainer, module, sizes, snapshot)
    return module


def test_bf16_mixed_prunes_and_trains(tmp_path):
    module = _prune_with(tmp_path, "bf16-mixed")
    assert next(module.parameters()).dtype == torch.float32


def test_16_mixed_falls_back_to_bf16_on_cpu(tmp_path):
    with pytest.warns(UserWarning, match="Using `precision='bf16-mixed'` instead"):
        _prune_with(tmp_path, "16-mixed")


def test_bf16_true_prunes_trains_and_reloads_in_float32(tmp_path):
    module = _prune_with(tmp_path, "bf16-true")
    assert next(module.parameters()).dtype == torch.bfloat16
    fresh = tiny_classifier()
    fresh.load_state_dict(module.state_dict())
    assert fresh.plan.steps == module.plan.steps
    x = torch.randn(4, 1, 32, 32)
    module.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), module(x.bfloat16()).float(), atol=0.05, rtol=0.05)
