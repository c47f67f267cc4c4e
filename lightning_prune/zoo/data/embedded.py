"""A small Fashion-MNIST subset shipped inside the package, so quickstarts never download anything."""

from __future__ import annotations

from importlib import resources

import numpy as np

from lightning_prune.zoo.data.base import Arrays, ImageDataModule
from lightning_prune.zoo.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["EmbeddedFashionMNISTDataModule", "ASSET_NAME", "load_embedded_arrays"]

ASSET_NAME = "fashion_mnist_small.npz"


def load_embedded_arrays() -> Arrays:
    """Load ``(x_train (4000,28,28), y_train, x_test (1000,28,28), y_test)`` from the packaged asset."""
    ref = resources.files("lightning_prune.zoo.data").joinpath("assets", ASSET_NAME)
    with resources.as_file(ref) as path, np.load(path) as npz:
        return (
            npz["x_train"],
            npz["y_train"].astype(np.int64),
            npz["x_test"],
            npz["y_test"].astype(np.int64),
        )


class EmbeddedFashionMNISTDataModule(ImageDataModule):
    """Class-balanced Fashion-MNIST subset bundled with the package (no download, no ``data_dir``).

    4000 training images (400 per class, from the official training set; ``val_size`` of them are held
    out for validation) and 1000 test images (100 per class, from the official test set). Images are
    1x28x28, zero-padded to 1x32x32 and normalised with the full Fashion-MNIST statistics. Licence and
    attribution: ``lightning_prune/zoo/data/assets/FASHION_MNIST_LICENSE.txt`` (MIT, Zalando SE).
    """

    num_classes = 10
    in_channels = 1
    mean = FASHION_MNIST_MEAN
    std = FASHION_MNIST_STD
    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        val_size: int | float = 1000,
        batch_size: int = 128,
        num_workers: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(val_size=val_size, batch_size=batch_size, num_workers=num_workers, augment=augment, seed=seed)
        self.save_hyperparameters()

    def load_arrays(self) -> Arrays:
        return load_embedded_arrays()
