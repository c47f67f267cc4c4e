"""Checkpoints written by an earlier version of the package (committed under `fixtures/`: a tiny VGG-11 pruned by
`RLPruneCallback`, and one by `DistributionPruneCallback`, each saved after its cut) still load into a freshly
built module with identical outputs, are read by `report`, and resume a fit whose callback takes their state
without pruning again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import fast_callback, fast_trainer, steps, tiny_data

from lightning_prune import DistributionPruneCallback, ImageClassifier, load_module
from lightning_prune.io.report import build_report

FIXTURES = Path(__file__).with_name("fixtures")
KINDS = ["rl", "distribution"]


def _callback(kind: str):
    if kind == "rl":
        return fast_callback(b=50.0)
    return DistributionPruneCallback(target=0.3, step_size=0.3, layers=["features.4", "features.8"], start_epoch=1)


@pytest.mark.parametrize("kind", KINDS)
def test_old_checkpoint_loads_with_identical_outputs(kind):
    module = load_module(ImageClassifier, FIXTURES / f"{kind}_pruned.ckpt").eval()
    expected = torch.load(FIXTURES / f"{kind}_pruned_output.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(module(expected["input"]), expected["output"])
    assert [s[0] for s in steps(module)] == ["features.4", "features.8"]


@pytest.mark.parametrize("kind", KINDS)
def test_old_checkpoint_is_reported(kind):
    report = build_report(FIXTURES / f"{kind}_pruned.ckpt")
    assert {layer["name"] for layer in report["layers"] if layer["after"] < layer["before"]} == {
        "features.4",
        "features.8",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_old_checkpoint_resumes_without_pruning_again(kind, tmp_path):
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.0625})
    callback = _callback(kind)
    trainer = fast_trainer(tmp_path, [callback], limit_train_batches=2, max_epochs=3)
    trainer.fit(module, datamodule=tiny_data(), ckpt_path=str(FIXTURES / f"{kind}_pruned.ckpt"))
    saved = torch.load(FIXTURES / f"{kind}_pruned.ckpt", weights_only=True)
    assert steps(module) == saved["state_dict"]["_extra_state"]["steps"]
    assert trainer.current_epoch == 3
