"""LightningModules written as a user writes them (no base class from this package), under both namespaces, and
the runs the user-module tests make of them. Also a subprocess entry: `user_modules.py ddp|ddp-own-data|reload ROOT
...`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from helpers import FAST_TRAINER
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune import DistributionOptions, DistributionPruneCallback, RLOptions, RLPruneCallback, load_module
from lightning_prune.engine.cost import model_cost

#: Two coupled groups of resnet18: the stem with stage 1's residual stream, then a block's inner conv.
LAYERS = ["backbone.conv1", "backbone.layer2.0.conv1"]
NAMESPACES = {"lightning": L, "pytorch_lightning": pl}


class _Classifier:
    """A resnet18 in `self.backbone`, its own steps, torchmetrics accuracy logged as a fraction."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = torchvision.models.resnet18(num_classes=10)
        self.val_accuracy = MulticlassAccuracy(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_accuracy(self(x), y)
        self.log("val_accuracy", self.val_accuracy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class PLClassifier(_Classifier, pl.LightningModule):
    """The user's module under `import pytorch_lightning as pl`."""


class LClassifier(_Classifier, L.LightningModule):
    """The user's module under `import lightning as L`."""


CLASSES = {"lightning": LClassifier, "pytorch_lightning": PLClassifier}


class _OwnData:
    """Builds its datasets in its own `setup` (as Lightning's ImageNet example does) and serves them from its own
    dataloader hooks, which fail before that."""

    train_set = val_set = None

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            train, val = loaders()
            self.train_set, self.val_set = train.dataset, val.dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=16)


class PLOwnData(_OwnData, PLClassifier):
    """`PLClassifier` with its own data."""


class LOwnData(_OwnData, LClassifier):
    """`LClassifier` with its own data."""


OWN_DATA = {"lightning": LOwnData, "pytorch_lightning": PLOwnData}


def loaders(size: int = 32, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """Seeded random 3x32x32 images whose class sets the mean of the first channel (learnable)."""
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2 * size,), generator=generator)
    x = torch.randn(2 * size, 3, 32, 32, generator=generator)
    x[:, 0] += y[:, None, None].float() / 3
    train, val = TensorDataset(x[:size], y[:size]), TensorDataset(x[size:], y[size:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def callback(kind: str, **kwargs: Any) -> RLPruneCallback | DistributionPruneCallback:
    """Tiny search settings that really cut both groups at epoch 1 (RL: two probes of a batch a cycle, and a
    generous `b`). Keyword arguments override the callback's arguments or its options' fields."""
    arguments: dict[str, Any] = {"layers": LAYERS, "start_epoch": 1}
    options: dict[str, Any] = {"calibration_batches": 1, "reward_batches": 1, "num_samples": 2}
    if kind == "rl":
        arguments.update(b=50.0, min_keep=0.25)
        options.update(agent_updates=1, probes=2, probe_batches=1)
    else:
        arguments.update(target=0.3, step_size=0.3, finetune_epochs=1)
        options.update(updates=1, elite_size=1)
    cls, options_cls = (
        (RLPruneCallback, RLOptions) if kind == "rl" else (DistributionPruneCallback, DistributionOptions)
    )
    fields = {f.name for f in dataclasses.fields(options_cls)}
    for key, value in kwargs.items():
        (options if key in fields else arguments)[key] = value
    return cls(**arguments, options=options_cls(**options))


def trainer(namespace: str, root: Path, callbacks: list, **kwargs: Any):
    """`helpers.fast_trainer`'s Trainer (2 training batches an epoch) under either namespace."""
    options = {**FAST_TRAINER, "limit_train_batches": 2, "default_root_dir": str(root), **kwargs}
    return NAMESPACES[namespace].Trainer(callbacks=callbacks, **options)


def macs(module: Any) -> int:
    return model_cost(module.backbone, torch.zeros(1, 3, 32, 32)).macs


def outputs(module: Any) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)).float()


def ddp_run(root: Path, namespace: str) -> None:
    """Two CPU processes prune the user's module; each rank writes its channel counts and output checksum."""
    NAMESPACES[namespace].seed_everything(0)
    module = CLASSES[namespace]()
    train, val = loaders()
    run = trainer(namespace, root, [callback("rl")], strategy="ddp", devices=2, use_distributed_sampler=False)
    run.fit(module, train, val)
    shapes = {name: module.get_submodule(name).out_channels for name in LAYERS}
    checksum = float(sum(p.detach().double().sum() for p in module.parameters()))
    (root / f"rank{run.global_rank}.json").write_text(json.dumps({"shapes": shapes, "checksum": checksum}))


def ddp_own_data_run(root: Path, namespace: str) -> None:
    """`ddp_run` of the module that builds its data in its own `setup`, with `RLPruneCallback`."""
    NAMESPACES[namespace].seed_everything(0)
    module = OWN_DATA[namespace]()
    run = trainer(namespace, root, [callback("rl")], strategy="ddp", devices=2, use_distributed_sampler=False)
    run.fit(module)
    shapes = {name: module.get_submodule(name).out_channels for name in LAYERS}
    (root / f"rank{run.global_rank}.json").write_text(json.dumps({"shapes": shapes}))


def reload(namespace: str, checkpoint: Path, expected: Path) -> None:
    """In a fresh process: load the checkpoint and check it gives the saved outputs."""
    module = load_module(CLASSES[namespace], checkpoint)
    assert torch.equal(outputs(module), torch.load(expected, weights_only=True)), "outputs differ after reloading"


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "ddp":
        ddp_run(Path(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "ddp-own-data":
        ddp_own_data_run(Path(sys.argv[2]), sys.argv[3])
    else:
        reload(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
