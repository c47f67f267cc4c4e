"""The Trainer's data as the callbacks read it: the first batches of the training or validation split, in order,
from the loaders the Trainer was given (Lightning's public `train_dataloader` / `val_dataloaders` once loaded).
`first_batches` is the one entry point; the rest serves it and the checks that count batches."""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from lightning_prune.engine.metric import Unpack, unpack_pair

#: `(inputs, target)` on the model's device.
Batch = tuple[Any, torch.Tensor]


def loader(trainer: pl.Trainer, split: Literal["train", "val"]) -> DataLoader:
    """The first training or validation dataloader the Trainer was given (datamodule, module hook or the loaders
    passed to `fit`), also before Lightning has loaded it: the one place the callbacks reach the Trainer's data.

    Raises:
        MisconfigurationException: the Trainer has no such data (validation: none, or an empty dataset).
    """
    if split == "train":
        found = _first(trainer.train_dataloader, trainer.fit_loop)
        if not isinstance(found, DataLoader):
            raise MisconfigurationException("Pruning needs training batches: give the Trainer a train dataloader.")
        return found
    found = _first(trainer.val_dataloaders, trainer.fit_loop.epoch_loop.val_loop)
    empty = isinstance(found, DataLoader) and hasattr(found.dataset, "__len__") and len(found.dataset) == 0
    if not isinstance(found, DataLoader) or empty:
        raise MisconfigurationException(
            "Pruning scores candidates on the validation split, but the Trainer has no validation data: pass "
            "`val_dataloaders=` to fit (or a datamodule with val_dataloader) holding data out from training "
            "(never the test split)."
        )
    return found


def _first(loaded: Any, loop: Any) -> Any:
    """The first of the loaders Lightning has loaded (`trainer.train_dataloader` / `trainer.val_dataloaders`), else
    of those the loop's source gives now. Lightning loads them only when its loop starts (`setup_data`, which also
    starts iterating, so the callbacks never call it): before, at `on_fit_start`, the private `loop._data_source`
    (Lightning 2.x) is the only way to the datamodule's or module's loader hooks."""
    if loaded is None:
        source = loop._data_source
        loaded = source.dataloader() if source.is_defined() else None
    return loaded[0] if isinstance(loaded, (list, tuple)) and loaded else loaded


def first_batches(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    split: Literal["train", "val"],
    count: int,
    seed: int | None = None,
    shuffle: bool = False,
    unpack: Unpack = unpack_pair,
) -> list[Batch]:
    """The first `count` batches of a split read in order, as `unpack` splits them into `(inputs, target)`, on the
    module's device: the same on every rank (no distributed sampler), drawn under a forked RNG so augmentation
    leaves the training run's random stream alone. With `seed`, augmentation draws from that seed: the same
    batches on every rank and after a resume; with `shuffle`, the batches are drawn from the whole split in an
    order fixed by `seed`."""
    source = loader(trainer, split)
    convert = trainer.precision_plugin.convert_input
    batches = []
    for batch in drawn_batches(source, count, seed, shuffle):
        x, y = unpack(batch)
        batches.append((convert(move_data_to_device(x, pl_module.device)), move_data_to_device(y, pl_module.device)))
    return batches


def drawn_batches(loader: DataLoader, count: int, seed: int | None = None, shuffle: bool = False) -> list[Batch]:
    """The first `count` batches of `loader`'s dataset, read by a plain loader under a forked RNG (seeded with
    `seed`, if given), so the caller's random stream is left alone."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        sequential = DataLoader(
            loader.dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn, shuffle=shuffle
        )
        return list(itertools.islice(sequential, count))


def batch_count(loader: DataLoader) -> int | None:
    """How many batches `drawn_batches` can read from `loader`'s dataset (None: the dataset has no length)."""
    if not hasattr(loader.dataset, "__len__"):
        return None
    return math.ceil(len(loader.dataset) / (loader.batch_size or 1))
