"""Tests of `lightning_prune.callbacks.distillation`: the distillation loss, the frozen teacher and the callback."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune import DistillationCallback, DistributionOptions, DistributionPruneCallback, ImageClassifier
from lightning_prune.callbacks.distillation import Distiller, distillation_loss
from lightning_prune.zoo.data import EmbeddedFashionMNISTDataModule


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch) -> None:
    """Trainers without a logger write into the working directory (pruning_summary.json): keep it temporary."""
    monkeypatch.chdir(tmp_path)


def test_distillation_loss_is_the_scaled_kl_divergence() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    assert distillation_loss(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    p_teacher = F.softmax(teacher / 4.0, -1)
    expected = (p_teacher * (p_teacher.log() - F.log_softmax(student / 4.0, -1))).sum(-1).mean() * 16.0
    assert distillation_loss(student, teacher, 4.0).item() == pytest.approx(expected.item(), rel=1e-5)
    half = distillation_loss(student.bfloat16(), teacher.bfloat16(), 2.0)
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_distiller_freezes_the_teacher_and_trains_only_the_student() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.BatchNorm1d(10))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    distiller = Distiller(teacher.train(), temperature=2.0, weight=0.5)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    x = torch.randn(32, 4, 4)
    losses = []
    for _ in range(30):
        loss = distiller(x, student(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, teacher.parameters(), strict=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(distiller(x, student(x)))


class _RecordKD(pl.Callback):
    """Records the distillation term of every training step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics["train_kd_loss"]))


def _trainer(callbacks: list, epochs: int, batches: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        limit_train_batches=batches,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=False,
        **kwargs,
    )


def test_pruned_student_learns_from_the_unpruned_teacher() -> None:
    pl.seed_everything(0, verbose=False)
    dm = EmbeddedFashionMNISTDataModule(batch_size=32, num_workers=0, augment=False)
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125}, lr=0.05)
    _trainer([], epochs=1, batches=30).fit(module, datamodule=dm)  # a teacher worth learning from
    keys = set(module.state_dict())
    record = _RecordKD()
    options = DistributionOptions(num_samples=2, updates=1, reward_batches=1)
    prune = DistributionPruneCallback(target=0.5, step_size=0.5, options=options)
    distil = DistillationCallback(temperature=4.0, weight=1.0)
    trainer = _trainer([prune, distil, record], epochs=2, batches=8)
    trainer.fit(module, datamodule=dm)
    assert module.distiller is None  # released after fit
    first, last = sum(record.values[:4]) / 4, sum(record.values[-4:]) / 4
    assert record.values[0] > 0 and last < first
    assert set(module.state_dict()) == keys and prune.done


def test_teacher_stays_out_of_state_dict_and_optimizer_and_follows_precision() -> None:
    pl.seed_everything(0, verbose=False)
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125})
    seen = {}

    class Inspect(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            teacher = pl_module.distiller.teacher
            optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            seen["in_optimizer"] = any(id(p) in optimized for p in teacher.parameters())
            seen["in_state_dict"] = any(k.startswith("distiller") for k in pl_module.state_dict())
            seen["training"] = teacher.training
            seen["device"] = next(teacher.parameters()).device == next(pl_module.parameters()).device
            seen["kd"] = float(trainer.callback_metrics["train_kd_loss"])

    trainer = _trainer([DistillationCallback(), Inspect()], epochs=1, batches=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=EmbeddedFashionMNISTDataModule(batch_size=16, num_workers=0))
    assert seen["in_optimizer"] is False and seen["in_state_dict"] is False
    assert seen["training"] is False and seen["device"] and seen["kd"] >= 0


def test_teacher_epoch_delays_the_copy() -> None:
    pl.seed_everything(0, verbose=False)
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125})
    attached = []

    class Watch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            attached.append(pl_module.distiller is not None)

    trainer = _trainer([DistillationCallback(teacher_epoch=1), Watch()], epochs=2, batches=1)
    trainer.fit(module, datamodule=EmbeddedFashionMNISTDataModule(batch_size=16, num_workers=0))
    assert attached == [False, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
        ({"weight": -0.5}, "weight=-0.5 must be >= 0"),
        ({"teacher_epoch": -1}, "teacher_epoch=-1 must be >= 0"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        DistillationCallback(**kwargs)


def test_needs_an_image_classifier() -> None:
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)

    with pytest.raises(MisconfigurationException, match="needs a `lightning_prune.ImageClassifier`"):
        DistillationCallback().setup(pl.Trainer(logger=False), Plain(), "fit")
