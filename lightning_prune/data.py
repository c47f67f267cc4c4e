"""The built-in datamodules (`lightning_prune.zoo.data`) under their public path, as configs name them
(`class_path: lightning_prune.data.FashionMNISTDataModule`)."""

from lightning_prune.zoo.data import *  # noqa: F403
from lightning_prune.zoo.data import __all__  # noqa: F401
