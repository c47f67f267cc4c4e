"""Tests of `lightning_prune.zoo.module.ImageClassifier`: metrics in points and checkpoints of pruned models."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.zoo.module import ImageClassifier

KWARGS = {"num_classes": 10, "in_channels": 1, "model_kwargs": {"width": 0.125}}


def _module(**overrides) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("vgg11", **{**KWARGS, **overrides})


def _loader(n: int = 48, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=16)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _outputs(module: ImageClassifier, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(x)


def _pruned() -> ImageClassifier:
    module = _module()
    module.prune("features.0", [0, 3])
    module.prune("features.11", [1, 2, 7])
    module.prune("features.25", [5])
    return module


def test_val_acc_is_logged_in_points(tmp_path) -> None:
    module, loader = _module(), _loader()
    (metrics,) = _trainer(tmp_path).validate(module, dataloaders=loader, verbose=False)
    module.eval()
    with torch.no_grad():
        correct = sum(int((module(x).argmax(-1) == y).sum()) for x, y in loader)
    assert correct > 0  # a fraction (correct / 48) would then differ from points
    assert metrics["val_acc"] == pytest.approx(100.0 * correct / 48, abs=1e-4)


def test_prune_records_plan_and_shrinks_model() -> None:
    module = _pruned()
    assert module.model.features[0].out_channels == 6 and module.model.features[4].in_channels == 6
    assert module.plan.steps == [
        ["features.0", True, [0, 3]],
        ["features.11", True, [1, 2, 7]],
        ["features.25", True, [5]],
    ]
    assert module.state_dict()["_extra_state"] == module.plan.state()


def test_pruned_state_dict_loads_into_fresh_module() -> None:
    pruned, fresh = _pruned(), _module()
    assert fresh.model.features[0].out_channels == 8
    fresh.load_state_dict(pruned.state_dict())
    assert fresh.plan == pruned.plan
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(_outputs(fresh, x), _outputs(pruned, x))
    fresh.load_state_dict(pruned.state_dict())  # loading the same plan again is a no-op replay
    assert torch.equal(_outputs(fresh, x), _outputs(pruned, x))


def test_plan_naming_a_missing_layer_raises_and_names_it() -> None:
    state = _pruned().state_dict()
    state["_extra_state"]["steps"].append(["features.77", True, [0]])
    fresh = _module()
    with pytest.raises(ValueError, match="'features.77'"):
        fresh.load_state_dict(state)
    assert fresh.plan.steps == [] and fresh.model.features[0].out_channels == 8  # left untouched


@pytest.mark.parametrize("overrides", [{"in_channels": 3}, {"image_size": 64}])
def test_wrong_input_shape_raises(overrides: dict) -> None:
    state = _pruned().state_dict()
    other = _module(**overrides)
    with pytest.raises(ValueError, match="in_channels and image_size"):
        other.load_state_dict(state)


def test_pruned_module_refuses_a_different_plan() -> None:
    module = _module()
    module.prune("features.0", [1])
    with pytest.raises(ValueError, match="freshly built, unpruned model"):
        module.load_state_dict(_pruned().state_dict())


def test_checkpoint_round_trip_of_pruned_module(tmp_path) -> None:
    module = _pruned()
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader(16, seed=1))
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    assert raw["state_dict"]["_extra_state"] == module.plan.state()
    loaded = ImageClassifier.load_from_checkpoint(path)
    assert loaded.plan == module.plan
    assert loaded.model.features[0].out_channels == 6
    x = torch.randn(5, 1, 32, 32)
    assert torch.equal(_outputs(loaded, x), _outputs(module, x))


def test_channels_last_trains_prunes_and_reloads_in_that_layout(tmp_path) -> None:
    module, dense = _module(channels_last=True), _module()
    x = torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(_outputs(module, x), _outputs(dense, x), rtol=1e-4, atol=1e-5)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader(16, seed=1))
    module.prune("features.0", [0, 3])
    trainer.save_checkpoint(tmp_path / "cl.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "cl.ckpt")
    for m in (module, loaded):
        convs = [p for p in m.model.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert not any(p.is_contiguous() for p in convs[1:])  # the first conv has one input channel
    assert loaded.model.features[0].out_channels == 6
    torch.testing.assert_close(_outputs(loaded, x), _outputs(module, x))
