"""Tests of `lightning_prune.lightning`: the package's classes for users of `import lightning as L`."""

from __future__ import annotations

import lightning as L
import pytest
from helpers import FAST_TRAINER, LAYERS

from lightning_prune import DistributionOptions, DistributionPruneCallback
from lightning_prune import lightning as on_lightning
from lightning_prune.lightning import EmbeddedFashionMNISTDataModule, ImageClassifier
from lightning_prune.zoo import data


@pytest.mark.parametrize("name", ["CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule"])
def test_every_datamodule_is_shipped_for_lightning(name: str) -> None:
    cls = getattr(on_lightning, name)
    assert issubclass(cls, getattr(data, name)) and issubclass(cls, L.LightningDataModule)


def test_the_embedded_datamodule_feeds_a_lightning_trainer_that_prunes(tmp_path) -> None:
    L.seed_everything(0)
    module = ImageClassifier("vgg11", in_channels=1, model_kwargs={"width": 0.125})
    options = DistributionOptions(num_samples=2, updates=1, elite_size=1, reward_batches=1, calibration_batches=1)
    callback = DistributionPruneCallback(target=0.3, step_size=0.3, layers=LAYERS["vgg11"], options=options)
    trainer = L.Trainer(callbacks=[callback], **{**FAST_TRAINER, "max_epochs": 1, "default_root_dir": str(tmp_path)})
    trainer.fit(module, datamodule=EmbeddedFashionMNISTDataModule(batch_size=32, num_workers=0))
    assert [s[0] for s in module.plan.steps] == LAYERS["vgg11"]
