"""Tests of the datamodules in ``lightning_prune.zoo.data`` (tiny synthetic CIFAR pickles, shared Fashion-MNIST,
and the embedded subset). Nothing is downloaded."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prune.zoo.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    EmbeddedFashionMNISTDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
)
from lightning_prune.zoo.data.fashion_mnist import read_idx

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "../shared/data/fashion-mnist"
N_PER_BATCH = 20


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    """Five training batches of 20 images plus a 20-image test batch in the official layout."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        labels = [int(v) for v in rng.integers(0, 10, N_PER_BATCH)]
        _write_pickle(folder / f"data_batch_{i}", {b"data": _images(rng, N_PER_BATCH), b"labels": labels})
    labels = [int(v) for v in rng.integers(0, 10, N_PER_BATCH)]
    _write_pickle(folder / "test_batch", {b"data": _images(rng, N_PER_BATCH), b"labels": labels})
    return tmp_path


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 60), ("test", 20)):
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)]
        _write_pickle(folder / name, {b"data": _images(rng, n), b"fine_labels": fine, b"coarse_labels": coarse})
    names = [f"class_{i}".encode() for i in range(100)]
    _write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    return tmp_path


def _expected_norm(dm: ImageDataModule, raw_chw: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    return (torch.from_numpy(raw_chw).float() / 255 - mean) / std


def _check_split(dm_cls: type[ImageDataModule], data_dir: Path, n_train: int, n_test: int) -> None:
    dm = dm_cls(data_dir=str(data_dir), val_size=10, batch_size=16, augment=True, seed=0)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_dataset) + len(dm.val_dataset) == n_train
    assert len(dm.val_dataset) == 10 and len(dm.test_dataset) == n_test
    tr, va = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not tr & va and len(tr | va) == n_train

    same = dm_cls(data_dir=str(data_dir), val_size=10, seed=0)
    same.setup("fit")
    assert torch.equal(same.val_indices, dm.val_indices)
    other = dm_cls(data_dir=str(data_dir), val_size=10, seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_indices, dm.val_indices)

    frac = dm_cls(data_dir=str(data_dir), val_size=0.2)
    frac.setup("fit")
    assert len(frac.val_dataset) == round(0.2 * n_train)

    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (dm.in_channels, dm.image_size, dm.image_size) == (3, 32, 32)
        assert ((y >= 0) & (y < dm.num_classes)).all()
        assert loader.drop_last is False and loader.num_workers == 0
    assert isinstance(dm.train_dataloader().sampler, torch.utils.data.RandomSampler)
    assert isinstance(dm.val_dataloader().sampler, torch.utils.data.SequentialSampler)
    assert isinstance(dm.test_dataloader().sampler, torch.utils.data.SequentialSampler)


def _check_no_augmentation(dm: ImageDataModule, x_train: np.ndarray, x_test: np.ndarray) -> None:
    """val/test samples equal the raw normalised images, always; train samples vary when augmenting."""
    dm.setup("fit")
    torch.manual_seed(0)
    for k in range(3):
        x, _ = dm.val_dataset[k]
        assert torch.allclose(x, _expected_norm(dm, x_train[int(dm.val_indices[k])]), atol=1e-5)
        assert torch.equal(dm.val_dataset[k][0], x)
        xt, _ = dm.test_dataset[k]
        assert torch.allclose(xt, _expected_norm(dm, x_test[k]), atol=1e-5)
    draws = torch.stack([dm.train_dataset[0][0] for _ in range(20)])
    assert not torch.equal(draws.min(0).values, draws.max(0).values)


def _cifar_arrays(folder: Path, files: list[str]) -> np.ndarray:
    out = []
    for name in files:
        with open(folder / name, "rb") as f:
            out.append(pickle.load(f)[b"data"].reshape(-1, 3, 32, 32))
    return np.concatenate(out)


def test_cifar10_datamodule(cifar10_dir: Path) -> None:
    _check_split(CIFAR10DataModule, cifar10_dir, n_train=5 * N_PER_BATCH, n_test=N_PER_BATCH)
    folder = cifar10_dir / "cifar-10-batches-py"
    x_train = _cifar_arrays(folder, [f"data_batch_{i}" for i in range(1, 6)])
    x_test = _cifar_arrays(folder, ["test_batch"])
    dm = CIFAR10DataModule(data_dir=str(cifar10_dir), val_size=10)
    _check_no_augmentation(dm, x_train, x_test)
    assert dm.num_classes == 10 and dm.hparams["val_size"] == 10 and dm.hparams["data_dir"] == str(cifar10_dir)

    plain = CIFAR10DataModule(data_dir=str(cifar10_dir), val_size=10, augment=False)
    plain.setup("fit")
    x, _ = plain.train_dataset[0]
    assert torch.allclose(x, _expected_norm(plain, x_train[int(plain.train_indices[0])]), atol=1e-5)


def test_cifar100_datamodule(cifar100_dir: Path) -> None:
    _check_split(CIFAR100DataModule, cifar100_dir, n_train=60, n_test=20)
    folder = cifar100_dir / "cifar-100-python"
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir), val_size=10)
    _check_no_augmentation(dm, _cifar_arrays(folder, ["train"]), _cifar_arrays(folder, ["test"]))
    assert dm.num_classes == 100 and dm.classes is not None and dm.classes[3] == "class_3"
    with open(folder / "train", "rb") as f:
        fine = pickle.load(f)[b"fine_labels"]
    assert dm.train_dataset.labels.tolist() == fine


@pytest.mark.parametrize(
    "dm_cls, sub", [(CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")]
)
def test_cifar_missing_data(tmp_path: Path, dm_cls: type[ImageDataModule], sub: str) -> None:
    dm = dm_cls(data_dir=str(tmp_path / "nowhere"))
    dm.prepare_data()  # download=False: nothing happens
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        dm.setup("fit")
    assert sub in str(info.value)


def test_fashion_mnist_missing_data(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        dm.setup("fit")
    assert str(tmp_path) in str(info.value) and "train-images-idx3-ubyte.gz" in str(info.value)


def _write_idx(path: Path, arr: np.ndarray, magic: int, compress: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _write_tiny_fmnist(folder: Path, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    x_tr = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    x_te = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    _write_idx(folder / f"train-images-idx3-ubyte{ext}", x_tr, 2051, compress)
    _write_idx(folder / f"train-labels-idx1-ubyte{ext}", np.arange(30) % 10, 2049, compress)
    _write_idx(folder / f"t10k-images-idx3-ubyte{ext}", x_te, 2051, compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", np.arange(10) % 10, 2049, compress)
    return x_tr, x_te


@pytest.mark.parametrize("layout", ["gz", "raw", "torchvision"])
def test_fashion_mnist_layouts(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    x_tr, x_te = _write_tiny_fmnist(folder, compress=layout == "gz")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=5, batch_size=8, augment=False)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (25, 5, 10)
    x, y = dm.test_dataset[0]
    assert x.shape == (1, 32, 32) and y.dtype == torch.int64
    padded = np.pad(x_te[0], 2)[None]
    assert torch.allclose(x, _expected_norm(dm, padded), atol=1e-5)
    assert torch.allclose(x[:, :2], x[0, 0, 0])  # zero-padded border


def test_fashion_mnist_corrupt_file(tmp_path: Path) -> None:
    _write_tiny_fmnist(tmp_path, compress=True)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    _write_idx(bad, np.arange(30) % 10, 2051, compress=True)  # wrong magic
    with pytest.raises(ValueError, match="magic"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_size=5).setup("fit")
    truncated = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())[:-7]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(truncated))
    with pytest.raises(ValueError, match="corrupt IDX file"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file")
    with pytest.raises(ValueError, match="corrupt IDX file"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049)


def test_fashion_mnist_shared() -> None:
    if not SHARED_FMNIST.is_dir():
        pytest.skip(f"shared Fashion-MNIST not found at {SHARED_FMNIST}")
    dm = FashionMNISTDataModule(data_dir=str(SHARED_FMNIST), num_workers=0, batch_size=64)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (55000, 5000, 10000)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert FashionMNISTDataModule(data_dir=str(SHARED_FMNIST)).num_workers >= 0


def test_embedded_fashion_mnist() -> None:
    dm = EmbeddedFashionMNISTDataModule()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (3000, 1000, 1000)
    assert dm.num_workers == 0 and dm.num_classes == 10 and dm.in_channels == 1 and dm.image_size == 32
    all_train = dm.train_dataset.labels
    assert torch.bincount(all_train, minlength=10).tolist() == [400] * 10
    assert torch.bincount(dm.test_dataset.labels, minlength=10).tolist() == [100] * 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (1, 32, 32)
    assert dm.hparams["val_size"] == 1000 and dm.hparams["batch_size"] == 128


def test_embedded_matches_shared_files() -> None:
    if not SHARED_FMNIST.is_dir():
        pytest.skip(f"shared Fashion-MNIST not found at {SHARED_FMNIST}")
    from lightning_prune.zoo.data.embedded import ASSET_NAME

    npz = np.load(Path(__file__).resolve().parents[2] / "lightning_prune/zoo/data/assets" / ASSET_NAME)
    labels = read_idx(SHARED_FMNIST / "t10k-labels-idx1-ubyte.gz", 2049)
    images = read_idx(SHARED_FMNIST / "t10k-images-idx3-ubyte.gz", 2051)
    idx = npz["test_index"]
    assert np.array_equal(npz["y_test"], labels[idx]) and np.array_equal(npz["x_test"], images[idx])


def test_invalid_val_size(cifar10_dir: Path) -> None:
    with pytest.raises(ValueError):
        CIFAR10DataModule(data_dir=str(cifar10_dir), val_size=1.5)
    with pytest.raises(ValueError, match="val_size"):
        CIFAR10DataModule(data_dir=str(cifar10_dir)).setup("fit")  # default 5000 > 100 images
    dm = CIFAR10DataModule(data_dir=str(cifar10_dir), val_size=0)
    dm.setup("fit")
    assert len(dm.train_dataset) == 100 and dm.val_dataloader() == []
