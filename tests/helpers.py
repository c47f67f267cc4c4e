"""Tiny shared fixtures: small classifiers, the embedded data, fast Trainers and a fast pruning callback."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_prune import ImageClassifier, RLPruneCallback
from lightning_prune.data import EmbeddedFashionMNISTDataModule

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*number of training batches.*logging interval.*")

#: Conv groups pruned in the fast tests, per built-in model (each a different kind of coupling).
LAYERS = {
    "vgg11": ["features.4", "features.8"],
    "resnet56": ["conv1", "layer3.0.conv1"],  # the residual stream of stage 1, then a block's inner conv
    "mobilenetv2_small": ["features.2.conv.1.0", "features.3.conv.2.0"],  # depthwise, then a projection
    "inception_small": ["inception1.branch1.0", "inception1.branch2.1.0"],  # two slices of a concatenation
}


def tiny_classifier(name: str = "vgg11", width: float = 0.125, **kwargs: Any) -> ImageClassifier:
    """A small built-in network on 1x32x32 images (the embedded Fashion-MNIST)."""
    return ImageClassifier(name, num_classes=10, in_channels=1, model_kwargs={"width": width}, **kwargs)


def tiny_data(batch_size: int = 32, **kwargs: Any) -> EmbeddedFashionMNISTDataModule:
    """The Fashion-MNIST subset shipped in the package (no download)."""
    return EmbeddedFashionMNISTDataModule(batch_size=batch_size, num_workers=0, **kwargs)


def fast_callback(**kwargs: Any) -> RLPruneCallback:
    """Few, cheap agent updates; `init_keep` below 0.5 with `min_keep=0.5` makes every layer really shrink."""
    options: dict[str, Any] = {
        "layers": LAYERS["vgg11"],
        "start_epoch": 1,
        "finetune_epochs": 1,
        "num_samples": 4,
        "agent_updates": 2,
        "reward_batches": 1,
        "init_keep": 0.3,
        "min_keep": 0.5,
    }
    options.update(kwargs)
    return RLPruneCallback(**options)


def fast_trainer(root: Path, callbacks: list[Callback] | None = None, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer on a few batches; keyword arguments override the defaults."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "default_root_dir": str(root),
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks or [], **options)


def steps(module: ImageClassifier) -> list:
    """The module's pruning plan as plain data."""
    return module.plan.state()["steps"]


def checksum(module: torch.nn.Module) -> float:
    """Sum of every parameter and buffer in float64 (equal models give equal sums)."""
    return float(sum(t.detach().double().sum() for t in module.state_dict().values() if torch.is_tensor(t)))


class HookSpy(Callback):
    """Records which Trainer hooks ran (to tell whether training time was spent before an error)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.calls.append("fit_start")

    def on_train_batch_start(self, *args: Any) -> None:
        self.calls.append("train_batch")
