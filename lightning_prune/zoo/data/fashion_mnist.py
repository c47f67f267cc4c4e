"""Fashion-MNIST datamodule reading the original IDX files (``.gz`` or uncompressed)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from lightning_prune.zoo.data.base import Arrays, ImageDataModule

__all__ = ["FashionMNISTDataModule", "FASHION_MNIST_CLASSES", "load_fashion_mnist", "read_idx"]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

#: Base names of the four official files (without ``.gz``), in (x_train, y_train, x_test, y_test) order.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: md5 sums of the official ``.gz`` downloads (same as torchvision's).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` or raw) and validate its magic number and size.

    Returns ``(N, rows, cols)`` uint8 for images (magic 2051) or ``(N,)`` uint8 for labels (2049).
    Raises ``ValueError`` naming the file when it is corrupt or truncated.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"corrupt IDX file {path}: cannot decompress ({e})") from e
    if len(raw) < 8:
        raise ValueError(f"corrupt IDX file {path}: only {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"corrupt IDX file {path}: magic number {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt IDX file {path}: truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(f"corrupt IDX file {path}: {len(raw)} bytes, expected {expected} for dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_file(data_dir: str | Path, name: str) -> Path | None:
    """Locate ``name`` (uncompressed preferred, else ``name.gz``) in ``data_dir`` or torchvision's
    ``data_dir/FashionMNIST/raw/``."""
    root = Path(data_dir).expanduser()
    for folder in (root, root / "FashionMNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_fashion_mnist(data_dir: str | Path) -> Arrays:
    """Load ``(x_train (N,28,28), y_train, x_test, y_test)`` uint8 arrays from the IDX files."""
    paths = [find_idx_file(data_dir, n) for n in FILES]
    missing = [n for n, p in zip(FILES, paths, strict=True) if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in '{Path(data_dir).expanduser()}' (or its FashionMNIST/raw/): "
            f"missing {', '.join(f'{n}.gz' for n in missing)}. Expected the four original IDX files "
            f"{', '.join(f'{n}.gz' for n in FILES)} (gzip-compressed or not). Pass download=True to "
            "download them into data_dir."
        )
    x_tr, y_tr, x_te, y_te = (
        read_idx(p, IDX_IMAGES_MAGIC if "images" in n else IDX_LABELS_MAGIC) for n, p in zip(FILES, paths, strict=True)
    )
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if x.shape[1:] != (28, 28):
            raise ValueError(f"Fashion-MNIST {split} images are {x.shape[1:]}, expected 28x28")
        if len(x) != len(y):
            raise ValueError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels")
        if len(y) and int(y.max()) > 9:
            raise ValueError(f"Fashion-MNIST {split} labels contain {int(y.max())}, expected 0..9")
    return x_tr, y_tr, x_te, y_te


def download_fashion_mnist(data_dir: str | Path) -> None:
    """Download the missing official ``.gz`` files into ``data_dir`` (md5-checked, via torchvision)."""
    from torchvision.datasets.utils import download_url

    for name in FILES:
        if find_idx_file(data_dir, name) is None:
            fname = f"{name}.gz"
            download_url(MIRROR + fname, root=str(Path(data_dir).expanduser()), filename=fname, md5=MD5[fname])


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST (10 classes, 60000 train / 10000 test) from the original IDX files in ``data_dir``.

    ``data_dir`` may hold the ``.gz`` files, the uncompressed files, or torchvision's
    ``FashionMNIST/raw/`` layout. Images are 1x28x28, zero-padded by 2 pixels per side to 1x32x32.
    See :class:`~lightning_prune.zoo.data.base.ImageDataModule` for the common arguments.
    """

    num_classes = 10
    in_channels = 1
    mean = FASHION_MNIST_MEAN
    std = FASHION_MNIST_STD
    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        data_dir: str = "../shared/data/fashion-mnist",
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
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        """Download the official files into ``data_dir`` when ``download=True`` and any are missing."""
        if self.download:
            download_fashion_mnist(self.data_dir)

    def load_arrays(self) -> Arrays:
        return load_fashion_mnist(self.data_dir)
