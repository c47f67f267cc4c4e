"""CIFAR-10 / CIFAR-100 datamodules reading the official python pickle layout."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prune.zoo.data.base import Arrays, ImageDataModule

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "read_cifar_batch"]


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one official CIFAR pickle: ``(N, 3, 32, 32)`` uint8 images and int64 labels."""
    try:
        with open(path, "rb") as f:
            entry: dict[Any, Any] = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a valid CIFAR pickle file: {e}") from e
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


class _CIFARDataModule(ImageDataModule):
    """Shared logic of the two CIFAR datamodules."""

    folder: str = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    label_key: bytes = b"labels"
    url: str = ""
    tgz_md5: str = ""

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_size: int | float = 5000,
        batch_size: int = 128,
        num_workers: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(val_size=val_size, batch_size=batch_size, num_workers=num_workers, augment=augment, seed=seed)
        self.data_dir = data_dir
        self.download = download

    @property
    def base_folder(self) -> Path:
        return Path(self.data_dir).expanduser() / self.folder

    def _missing(self) -> list[str]:
        return [n for n in self.train_files + self.test_files if not (self.base_folder / n).is_file()]

    def prepare_data(self) -> None:
        """Download and extract the official archive when ``download=True`` and files are missing."""
        if self.download and self._missing():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(self.url, str(Path(self.data_dir).expanduser()), md5=self.tgz_md5)

    def load_arrays(self) -> Arrays:
        missing = self._missing()
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset not found in '{self.base_folder}' (missing: "
                f"{', '.join(missing)}). Expected the official python version with files "
                f"{', '.join(self.train_files + self.test_files)}. Pass download=True to download it "
                f"from {self.url}, or point data_dir at the folder containing '{self.folder}/'."
            )
        train = [read_cifar_batch(self.base_folder / n, self.label_key) for n in self.train_files]
        test = [read_cifar_batch(self.base_folder / n, self.label_key) for n in self.test_files]
        x_train = np.concatenate([x for x, _ in train])
        y_train = np.concatenate([y for _, y in train])
        x_test = np.concatenate([x for x, _ in test])
        y_test = np.concatenate([y for _, y in test])
        return x_train, y_train, x_test, y_test


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (10 classes, 50000 train / 10000 test, 3x32x32) from ``data_dir/cifar-10-batches-py/``.

    See :class:`~lightning_prune.zoo.data.base.ImageDataModule` for the common arguments; ``download=True``
    fetches the official archive into ``data_dir`` in :meth:`prepare_data`.
    """

    num_classes = 10
    in_channels = 3
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = b"labels"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    tgz_md5 = "c58f30108f718f92721af3b95e74349a"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_size: int | float = 5000,
        batch_size: int = 128,
        num_workers: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            download=download,
            val_size=val_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            seed=seed,
        )
        self.save_hyperparameters()


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (100 fine classes, 50000 train / 10000 test) from ``data_dir/cifar-100-python/``.

    See :class:`~lightning_prune.zoo.data.base.ImageDataModule` for the common arguments; ``download=True``
    fetches the official archive into ``data_dir`` in :meth:`prepare_data`.
    """

    num_classes = 100
    in_channels = 3
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = b"fine_labels"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    tgz_md5 = "eb9058c3a382ffc7106e4002c42a8d85"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_size: int | float = 5000,
        batch_size: int = 128,
        num_workers: int | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            download=download,
            val_size=val_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            seed=seed,
        )
        self.save_hyperparameters()

    def load_arrays(self) -> Arrays:
        arrays = super().load_arrays()
        meta = self.base_folder / "meta"
        if self.classes is None and meta.is_file():
            try:
                with open(meta, "rb") as f:
                    names = pickle.load(f, encoding="bytes").get(b"fine_label_names")
                if names is not None and len(names) == self.num_classes:
                    self.classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
            except Exception:  # class names are cosmetic only
                pass
        return arrays
