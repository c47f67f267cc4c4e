"""LightningDataModules for the image-classification datasets used by lightning_prune.

All datamodules yield ``(float32 C x 32 x 32 normalised image, int64 label)``; 28x28 images are
zero-padded to 32x32 so CIFAR-style networks fit every dataset.
"""

from lightning_prune.zoo.data.base import ImageDataModule
from lightning_prune.zoo.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_prune.zoo.data.embedded import EmbeddedFashionMNISTDataModule
from lightning_prune.zoo.data.fashion_mnist import FashionMNISTDataModule

__all__ = [
    "ImageDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "EmbeddedFashionMNISTDataModule",
]
