"""`TrainingSnapshot`: the training state before a pruning step, restored exactly after a cut and some training
(weights, buffers, plan, optimizer state and hyperparameters, LR schedulers), inside a real `Trainer.fit`."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import fast_trainer, same, steps, tiny_classifier, tiny_data, training_state
from pytorch_lightning.callbacks import Callback

from lightning_prune.engine import plan
from lightning_prune.engine.snapshot import TrainingSnapshot


class CutTrainRestore(Callback):
    """At the start of epoch `epoch` (the optimizer holding momentum and the scheduler stepped by then): snapshot,
    cut `cuts` (layer -> filters) with the optimizer following, train `train_steps` batches, change the learning
    rate and step the scheduler, then restore; the state before the snapshot, in between and after are kept."""

    def __init__(self, epoch: int, cuts: dict[str, list[int]], train_steps: int = 3) -> None:
        self.epoch, self.cuts, self.train_steps = epoch, cuts, train_steps
        self.before: dict | None = None
        self.changed: dict | None = None
        self.after: dict | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        self.before = training_state(trainer, pl_module)
        snapshot = TrainingSnapshot(trainer, pl_module)
        optimizer, scheduler = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
        for name, idxs in self.cuts.items():
            plan.prune(pl_module, name, idxs, optimizers=trainer.optimizers)
        pl_module.train()
        data = iter(trainer.train_dataloader)
        for _ in range(self.train_steps):
            x, y = next(data)
            optimizer.zero_grad()
            F.cross_entropy(pl_module(x), y).backward()
            optimizer.step()
        scheduler.step()
        for group in optimizer.param_groups:
            group["lr"] = 123.0
        self.changed = training_state(trainer, pl_module)
        snapshot.restore(trainer)
        self.after = training_state(trainer, pl_module)


@pytest.mark.parametrize("cuts", [{"features.4": [0, 2, 5], "features.8": list(range(10))}, {}], ids=["cut", "no-cut"])
def test_restore_returns_the_module_optimizer_and_scheduler_to_the_snapshot(tmp_path, cuts):
    pl.seed_everything(0)
    module = tiny_classifier()
    check = CutTrainRestore(epoch=1, cuts=cuts)
    trainer = fast_trainer(tmp_path, [check], limit_train_batches=2)
    trainer.fit(module, datamodule=tiny_data())

    before, changed, after = check.before, check.changed, check.after
    assert before["optimizer"]["state"], "the snapshot should hold momentum buffers (taken after training steps)"
    assert before["schedulers"][0]["last_epoch"] == 1
    # the cut and the training changed everything the snapshot holds
    assert [s[0] for s in changed["plan"]] == list(cuts)
    for key in ("tensors", "optimizer", "schedulers"):
        assert not same(changed[key], before[key]), key
    assert changed["optimizer"]["param_groups"][0]["lr"] == 123.0 and changed["schedulers"][0]["last_epoch"] == 2
    if cuts:
        assert changed["tensors"]["model.features.4.weight"].shape[0] == 16 - 3
    # restored exactly: weights, buffers (BatchNorm statistics), plan, optimizer state, lr, scheduler
    assert after.keys() == before.keys()
    for key in before:
        assert same(after[key], before[key]), f"{key} not restored"
    assert after["optimizes_every_parameter"]
    assert steps(module) == [] and module.model.get_submodule("features.4").out_channels == 16
    # and the run trains on from there: the restored parameters are the ones optimized
    assert trainer.current_epoch == 3 and not same(training_state(trainer, module)["tensors"], before["tensors"])
    module.eval()
    with torch.no_grad():
        assert module(torch.randn(2, 1, 32, 32)).shape == (2, 10)
