"""A pruned network whose outputs are not finite is never kept: the RL callback's cut is verified on the held-out
batches and undone (to a lower finite level, else dense) with a warning."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import RLOptions, RLPruneCallback
from lightning_prune.search import level


class _NaNWhenCut(pl.LightningModule):
    """A small CNN whose outputs turn NaN once its first convolution has lost more than a quarter of its filters
    (a stand-in for mnasnet0_5, pruned deep, returning NaN in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out * math.nan if self.net[0].out_channels < 6 else out

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_cut_with_non_finite_outputs_is_undone(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The probes' readings come after training, the final cut's outputs were never checked: a level whose cut
    # network gives NaN (here forced by `choose`) was kept.
    chosen = {"ratio": 0.5, "predicted": 0.0, "margin": 0.0, "scale": 1.0, "alpha": 2.0}
    monkeypatch.setattr(level, "choose", lambda *args: dict(chosen))
    torch.manual_seed(0)
    module = _NaNWhenCut()
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))
    loader = DataLoader(data, batch_size=4)
    options = RLOptions(num_samples=2, agent_updates=1, reward_batches=1, check_batches=1, probes=1, probe_batches=1)
    callback = RLPruneCallback(b=100.0, min_keep=0.5, options=options)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[callback],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="not finite .* the cut is undone"):
        trainer.fit(module, loader, loader)
    assert callback.level["ratio"] == 0.0 and module.net[0].out_channels == 8
    with torch.no_grad():
        assert torch.isfinite(module.eval()(data.tensors[0])).all()
