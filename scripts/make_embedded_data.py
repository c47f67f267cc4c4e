"""Regenerate ``lightning_prune/zoo/data/assets/fashion_mnist_small.npz`` from the Fashion-MNIST IDX files.

Deterministic: the first ``--train-per-class`` images of every class of the official training set and the
first ``--test-per-class`` of every class of the official test set, kept in official order.

    PYTHONPATH=. python scripts/make_embedded_data.py [--src ../shared/data/fashion-mnist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lightning_prune.zoo.data.fashion_mnist import load_fashion_mnist  # noqa: E402

DEFAULT_OUT = REPO / "lightning_prune" / "data" / "assets" / "fashion_mnist_small.npz"


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
    """Sorted indices of the first ``per_class`` samples of every class (official order)."""
    idx = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    for c, i in enumerate(idx):
        if len(i) < per_class:
            raise ValueError(f"class {c} has only {len(i)} samples, need {per_class}")
    return np.sort(np.concatenate(idx))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=str(REPO / ".." / "shared" / "data" / "fashion-mnist"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_fashion_mnist(args.src)
    train_index = first_per_class(y_train, args.train_per_class)
    test_index = first_per_class(y_test, args.test_per_class)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        x_train=x_train[train_index],
        y_train=y_train[train_index].astype(np.uint8),
        x_test=x_test[test_index],
        y_test=y_test[test_index].astype(np.uint8),
        train_index=train_index.astype(np.int32),
        test_index=test_index.astype(np.int32),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(train_index)} train, {len(test_index)} test")


if __name__ == "__main__":
    main()
