"""Shared base class for the in-memory image datamodules.

Every dataset in this package is small enough to live in memory as ``uint8`` arrays. The base class
does everything common: a seeded validation split held out from the training set, cheap tensor-based
augmentation (random crop with padding + horizontal flip) on the training part only, per-dataset
normalisation, zero-padding of smaller images to ``image_size`` (32) and the dataloaders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["ImageDataModule", "InMemoryImageDataset", "auto_num_workers"]

#: Training sets smaller than this are loaded in the main process when ``num_workers`` is ``None``.
SMALL_DATASET_THRESHOLD = 10_000

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def auto_num_workers(num_train: int) -> int:
    """Worker count used when ``num_workers=None``: 0 for small datasets, else ``min(4, cpus - 1)``."""
    if num_train < SMALL_DATASET_THRESHOLD:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class InMemoryImageDataset(Dataset):
    """A view (``indices``) into shared ``uint8`` images of shape ``(N, C, H, W)``.

    Returns ``(float32 C x H x W normalised image, int64 label)``. With ``augment=True`` each sample is
    randomly cropped from a zero-padded copy (``padding`` pixels per side) and flipped horizontally with
    probability 0.5; both happen on the ``uint8`` tensor before normalisation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        padding: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need {images.shape[1]} channel values, got {len(mean)}/{len(std)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.indices = torch.arange(len(images)) if indices is None else indices.to(torch.int64)
        self.augment = augment
        self.padding = padding
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        # x_norm = (x / 255 - mean) / std = x * scale + shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        img = self.images[j]
        if self.augment:
            img = self._random_crop_flip(img)
        x = img.to(torch.float32).mul_(self._scale).add_(self._shift)
        return x, self.labels[j]

    def _random_crop_flip(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        p = self.padding
        if p > 0:
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img


def _to_nchw(images: np.ndarray, in_channels: int) -> np.ndarray:
    """Bring ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` uint8 arrays to ``(N, C, H, W)``."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] != in_channels and images.shape[-1] == in_channels:
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] != in_channels:
        raise ValueError(f"expected images with {in_channels} channel(s), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    images = np.ascontiguousarray(images)
    return images if images.flags.writeable else images.copy()


def _pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` images symmetrically to ``size x size`` (28 -> 32 pads 2 per side)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"images of {h}x{w} are larger than image_size={size}")
    if (h, w) == (size, size):
        return images
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


class ImageDataModule(pl.LightningDataModule):
    """Base datamodule over in-memory ``uint8`` train/test arrays.

    Subclasses set the class attributes (``num_classes``, ``in_channels``, ``mean``, ``std``) and
    implement :meth:`load_arrays`; optionally :meth:`prepare_data` for downloading.

    Args:
        val_size: validation images held out from the training set: an ``int`` count or a ``float``
            fraction in ``(0, 1)``. ``0`` disables validation. The test split is never touched.
        batch_size: batch size of all loaders.
        num_workers: dataloader workers; ``None`` = 0 for small datasets (< 10000 training images),
            otherwise ``min(4, os.cpu_count() - 1)``.
        augment: random crop (padding 4) + horizontal flip on the training part only.
        seed: seed of the ``torch.Generator`` that draws the train/val permutation.
    """

    num_classes: int = 0
    in_channels: int = 0
    image_size: int = 32
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: Human-readable class names, index = label (``None`` when unknown).
    classes: tuple[str, ...] | None = None
    #: Padding (pixels per side) of the random-crop augmentation.
    crop_padding: int = 4

    def __init__(
        self,
        val_size: int | float = 5000,
        batch_size: int = 128,
        num_workers: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(val_size, bool) or not isinstance(val_size, int | float):
            raise TypeError(f"val_size must be an int count or a float fraction, got {val_size!r}")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise ValueError(f"a float val_size is a fraction in [0, 1), got {val_size}")
        if isinstance(val_size, int) and val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None, got {num_workers}")
        self.val_size = val_size
        self.batch_size = batch_size
        self._num_workers = num_workers
        self.augment = augment
        self.seed = seed

        self._images_train: torch.Tensor | None = None
        self._labels_train: torch.Tensor | None = None
        self._images_test: torch.Tensor | None = None
        self._labels_test: torch.Tensor | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.train_dataset: InMemoryImageDataset | None = None
        self.val_dataset: InMemoryImageDataset | None = None
        self.test_dataset: InMemoryImageDataset | None = None

    # ------------------------------------------------------------------ hooks for subclasses
    def load_arrays(self) -> Arrays:
        """Return ``(x_train, y_train, x_test, y_test)``; images ``uint8`` in ``(N,H,W)``, ``(N,H,W,C)``
        or ``(N,C,H,W)`` layout, labels integer arrays. Raise ``FileNotFoundError`` when data is missing."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_arrays()")

    # ------------------------------------------------------------------ Lightning API
    @property
    def num_workers(self) -> int:
        """Resolved worker count (auto mode needs the training-set size, i.e. :meth:`setup`)."""
        if self._num_workers is not None:
            return self._num_workers
        n = len(self._labels_train) if self._labels_train is not None else SMALL_DATASET_THRESHOLD
        return auto_num_workers(n)

    def setup(self, stage: str | None = None) -> None:
        """Load the arrays (once) and build the train/val/test datasets."""
        if self._images_train is None:
            self._load()
        assert self._images_train is not None and self._labels_train is not None
        assert self._images_test is not None and self._labels_test is not None
        n_val = self._resolve_val_size(len(self._labels_train))
        gen = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(len(self._labels_train), generator=gen)
        self.val_indices = perm[:n_val].sort().values
        self.train_indices = perm[n_val:].sort().values
        common = {"mean": self.mean, "std": self.std, "padding": self.crop_padding}
        self.train_dataset = InMemoryImageDataset(
            self._images_train, self._labels_train, self.train_indices, augment=self.augment, **common
        )
        self.val_dataset = InMemoryImageDataset(
            self._images_train, self._labels_train, self.val_indices, augment=False, **common
        )
        self.test_dataset = InMemoryImageDataset(self._images_test, self._labels_test, None, augment=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.train_dataset), shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        ds = self._require(self.val_dataset)
        return self._loader(ds, shuffle=False) if len(ds) > 0 else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.test_dataset), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ helpers
    def _load(self) -> None:
        x_tr, y_tr, x_te, y_te = self.load_arrays()
        for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            if len(x) != len(y):
                raise ValueError(f"{name}: {len(x)} images but {len(y)} labels")
            if len(y) and (int(np.min(y)) < 0 or int(np.max(y)) >= self.num_classes):
                raise ValueError(f"{name} labels outside [0, {self.num_classes})")
        self._images_train = _pad_to(torch.from_numpy(_to_nchw(x_tr, self.in_channels)), self.image_size)
        self._images_test = _pad_to(torch.from_numpy(_to_nchw(x_te, self.in_channels)), self.image_size)
        self._labels_train = torch.from_numpy(np.asarray(y_tr, dtype=np.int64))
        self._labels_test = torch.from_numpy(np.asarray(y_te, dtype=np.int64))

    def _resolve_val_size(self, n_train: int) -> int:
        n_val = round(self.val_size * n_train) if isinstance(self.val_size, float) else self.val_size
        if n_val >= n_train:
            raise ValueError(
                f"val_size={self.val_size} leaves no training images ({n_train} available); pass a smaller val_size"
            )
        return int(n_val)

    def _require(self, ds: InMemoryImageDataset | None) -> InMemoryImageDataset:
        if ds is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() before requesting dataloaders")
        return ds

    def _loader(self, ds: InMemoryImageDataset, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(val_size={self.val_size}, batch_size={self.batch_size}, "
            f"num_workers={self._num_workers}, augment={self.augment}, seed={self.seed})"
        )
