"""`train_cycle`: the module's own training steps for a short cycle whose learning rate decays to 0.

A probe of the level controller trains a cut network this way, inside a callback hook, so that its drop is read
where the learning rate has decayed rather than mid-schedule. The steps are the module's `training_step`, on
training batches moved by the module's own transfer hooks, with the run's optimizer and precision: the probe
sees the loss, augmentation and optimizer the run trains with. The caller restores the training state afterwards
(`lightning_prune.engine.snapshot.TrainingSnapshot`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch.utils.data import DataLoader

from lightning_prune.engine import data
from lightning_prune.engine.surgery import preserved_modes


def cosine(peak: float, step: int, steps: int) -> float:
    """The learning rate of `step` of `steps`: `peak` at step 0, decaying along a half cosine toward 0."""
    return peak * 0.5 * (1 + math.cos(math.pi * step / steps))


def training_batches(loader: DataLoader, count: int, seed: int) -> Iterator[Any]:
    """`count` batches of `loader`'s dataset in an order fixed by `seed` (the same on every rank), passing over
    the dataset as often as needed."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size or 1,
        collate_fn=loader.collate_fn,
        shuffle=True,
        generator=generator,
    )
    return itertools.islice(itertools.chain.from_iterable(itertools.repeat(shuffled)), count)


@contextmanager
def silenced(pl_module: pl.LightningModule) -> Iterator[None]:
    """`self.log` and `self.log_dict` do nothing for the duration: probe steps do not enter the run's metrics."""
    pl_module.log = pl_module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def _loss(output: Any) -> torch.Tensor | None:
    return output.get("loss") if isinstance(output, Mapping) else output


def train_cycle(trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int, seed: int) -> None:
    """`steps` training steps of `pl_module` with the run's first optimizer, its learning rates following
    `cosine` from their current values; batches from `training_batches(..., seed)`. The optimizer's learning
    rates are left where the cycle ends."""
    optimizer = trainer.optimizers[0]
    peaks = [group["lr"] for group in optimizer.param_groups]
    batches = training_batches(data.loader(trainer, "train"), steps, seed)
    with silenced(pl_module), preserved_modes(pl_module), torch.inference_mode(False), torch.enable_grad():
        pl_module.train()
        for step, batch in enumerate(batches):
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = cosine(peak, step, steps)
            batch = trainer.precision_plugin.convert_input(batch)
            # the module's and datamodule's transfer hooks, called as Lightning's training loop calls them
            batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
            batch = trainer.strategy.batch_to_device(batch)
            with trainer.precision_plugin.train_step_context():
                loss = _loss(pl_module.training_step(batch, step))
            optimizer.zero_grad(set_to_none=True)
            if loss is None:  # the module skips this batch
                continue
            loss.backward()
            optimizer.step()
    for metric in pl_module.modules():  # what the probe's steps added to the module's torchmetrics
        if isinstance(metric, torchmetrics.Metric):
            metric.reset()
