"""The ready-made classes for users of `import lightning as L`: `ImageClassifier` on `lightning.LightningModule`, and
the datamodules of `lightning_prune.zoo.data` as `lightning.LightningDataModule`s (a `lightning.Trainer` rejects a
`pytorch_lightning` datamodule with "ValueError: Expected a parent")."""

from __future__ import annotations

import lightning as L

from lightning_prune.zoo import data
from lightning_prune.zoo.module import ImageClassifierBase


class ImageClassifier(ImageClassifierBase, L.LightningModule):
    __doc__ = ImageClassifierBase.__doc__


def _on_lightning(cls: type) -> type:
    """`cls`, a datamodule of `lightning_prune.zoo.data`, that is also a `lightning.LightningDataModule`."""
    namespace = {"__module__": __name__, "__qualname__": cls.__name__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, L.LightningDataModule), namespace)


CIFAR10DataModule = _on_lightning(data.CIFAR10DataModule)
CIFAR100DataModule = _on_lightning(data.CIFAR100DataModule)
FashionMNISTDataModule = _on_lightning(data.FashionMNISTDataModule)
EmbeddedFashionMNISTDataModule = _on_lightning(data.EmbeddedFashionMNISTDataModule)
