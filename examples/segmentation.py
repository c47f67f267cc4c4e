"""Prune a small U-Net that segments Fashion-MNIST scenes, with the budget `b` in mIoU points.

    python examples/segmentation.py                 # about 10-15 min on 2 CPU cores, prints a JSON summary
    python examples/segmentation.py --data-dir embedded   # the subset shipped with lightning-prune

`SegmentationModule` is what a user writes for their own task: its own network, loss, steps and torchmetrics
mIoU, and no lightning-prune base class. The script trains it for `--dense-epochs`, then fits it again with
`RLPruneCallback` in the Trainer for `--prune-epochs`: agents learn every 3x3 convolution's filter order
(candidates scored by mIoU on validation scenes, `b` in mIoU points), probes measure what levels cost in mIoU on
validation scenes the search never scored, and the network is cut to the largest level predicted within `b`. The pruned
checkpoint reloads with `lightning_prune.load_module(SegmentationModule, path)`; with the one-line mixin
(`class SegmentationModule(Prunable, L.LightningModule)`) `SegmentationModule.load_from_checkpoint` does too.

Data: scenes in the manner of M2NIST, built from real Fashion-MNIST garments. Each 64x64 canvas holds 2-4
garments (28x28) pasted at random positions; where they overlap, the later one wins. A pixel is labelled with its
garment's class + 1 where the garment's intensity is above `threshold`, else 0 (background): 11 classes. Training
and validation scenes are built from disjoint garments of the official training set, test scenes from the
official test set, all from a seed (the same seed gives the same scenes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_prune import RLOptions, RLPruneCallback, load_module
from lightning_prune.engine.cost import model_cost
from lightning_prune.zoo.data.embedded import load_embedded_arrays
from lightning_prune.zoo.data.fashion_mnist import load_fashion_mnist

NUM_CLASSES = 11  # background + the 10 Fashion-MNIST classes
#: The full Fashion-MNIST IDX files, as laid out next to the repository (`../shared/data/fashion-mnist`).
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"

Garments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_garments(data_dir: str | Path | None) -> Garments:
    """`(x_train (N,28,28) uint8, y_train, x_test, y_test)` from the IDX files in `data_dir`, or from the
    4000 + 1000 image subset shipped with lightning-prune when `data_dir` is None or "embedded"."""
    if data_dir is None or str(data_dir) == "embedded":
        return load_embedded_arrays()
    return load_fashion_mnist(data_dir)


def compose_scenes(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    size: int = 64,
    items: tuple[int, int] = (2, 4),
    threshold: int = 25,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste `items` (min, max inclusive) random garments at random positions onto each of `count` black
    `size`x`size` canvases; a later garment covers an earlier one where its pixels are above `threshold`.

    Returns images (count, 1, size, size) float32 in [0, 1] and masks (count, size, size) int64, where a pixel
    is its garment's class + 1 where that garment is above `threshold` and 0 elsewhere. Deterministic in `seed`.
    """
    side = images.shape[-1]
    if size < side:
        raise ValueError(f"size={size} is smaller than a garment ({side}x{side})")
    rng = np.random.default_rng(seed)
    canvas = np.zeros((count, size, size), dtype=np.uint8)
    masks = np.zeros((count, size, size), dtype=np.int64)
    for i in range(count):
        for j in rng.choice(len(images), size=rng.integers(items[0], items[1] + 1), replace=False):
            top, left = rng.integers(0, size - side + 1, size=2)
            window = np.s_[i, top : top + side, left : left + side]
            fg = images[j] > threshold
            canvas[window] = np.where(fg, images[j], canvas[window])
            masks[window] = np.where(fg, labels[j] + 1, masks[window])
    return torch.from_numpy(canvas).float().div_(255).unsqueeze(1), torch.from_numpy(masks)


class FashionScenes(L.LightningDataModule):
    """Train / val / test scenes of Fashion-MNIST garments (see `compose_scenes`), as `(image, mask)` batches.

    `val_garments` training-set garments (at most a fifth of them) are held out for the validation scenes, so no
    garment of a validation scene is seen in training; the test scenes use the official test set.
    """

    def __init__(
        self,
        data_dir: str | Path | None = DEFAULT_DATA,
        train_scenes: int = 2000,
        val_scenes: int = 512,
        test_scenes: int = 1000,
        size: int = 64,
        val_garments: int = 5000,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.counts = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self.size = size
        self.val_garments = val_garments
        self.batch_size = batch_size
        self.seed = seed
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x_train, y_train, x_test, y_test = load_garments(self.data_dir)
        held = min(self.val_garments, len(x_train) // 5)
        order = np.random.default_rng(self.seed).permutation(len(x_train))
        pools = {
            "train": (x_train[order[held:]], y_train[order[held:]]),
            "val": (x_train[order[:held]], y_train[order[:held]]),
            "test": (x_test, y_test),
        }
        for k, (split, (images, labels)) in enumerate(pools.items()):
            scenes = compose_scenes(images, labels, self.counts[split], self.size, seed=self.seed * 3 + k + 1)
            self.splits[split] = TensorDataset(*scenes)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.batch_size)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegmentationModule(L.LightningModule):
    """A two-level U-Net: encoder blocks of `width`, 2 `width` and 4 `width` channels, ConvTranspose2d
    upsampling, skip connections concatenated with the upsampled features, and a 1x1 classifier conv.

    Trained with pixel-wise cross-entropy; validation logs `val_loss`, `val_miou` (mean IoU over the 11 classes)
    and `val_pixel_acc`, testing `test_miou` and `test_pixel_acc`, all as fractions in [0, 1].
    """

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES, size: int = 64, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        w = width
        self.enc1 = conv_block(1, w)
        self.enc2 = conv_block(w, 2 * w)
        self.bottleneck = conv_block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = conv_block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = conv_block(2 * w, w)
        self.classifier = nn.Conv2d(w, num_classes, 1)
        self.example_input_array = torch.zeros(1, 1, size, size)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("val", "test")
                for name, metric in (
                    ("miou", MulticlassJaccardIndex(num_classes=num_classes)),
                    ("pixel_acc", MulticlassAccuracy(num_classes=num_classes, average="micro")),
                )
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits (B, num_classes, H, W) of images (B, 1, H, W), H and W divisible by 4."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.classifier(d1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = F.cross_entropy(self(images), masks)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, masks = batch
        logits = self(images)
        self.log(f"{stage}_loss", F.cross_entropy(logits, masks))
        for name in ("miou", "pixel_acc"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(logits, masks)
            self.log(f"{stage}_{name}", metric, prog_bar=name == "miou")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def cost(model: SegmentationModule) -> dict[str, int]:
    """MACs and parameters of one forward pass of `model.example_input_array`."""
    measured = model_cost(model, model.example_input_array)
    return {"macs": measured.macs, "params": measured.params}


def evaluate(trainer: L.Trainer, model: SegmentationModule, data: FashionScenes) -> dict[str, float]:
    """Validation and test mIoU and pixel accuracy of `model` (fractions)."""
    results = {**trainer.validate(model, datamodule=data, verbose=False)[0]}
    results.update(trainer.test(model, datamodule=data, verbose=False)[0])
    keys = ("val_miou", "val_pixel_acc", "test_miou", "test_pixel_acc")
    return {k: round(float(results[k]), 4) for k in keys}


def make_trainer(max_epochs: int, callbacks: list[L.Callback] | None = None, **kwargs: Any) -> L.Trainer:
    """A quiet CPU Trainer (no logger, checkpoints or progress bar); the pruning summary goes to `runs/segmentation`.

    Evaluation runs under `torch.no_grad` rather than inference mode: a torchmetrics state reset inside inference
    mode (by `validate` or `test`) cannot be updated by a later `fit`'s validation.
    """
    kwargs.setdefault("default_root_dir", "runs/segmentation")
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        **kwargs,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help='Fashion-MNIST IDX files, or "embedded"')
    parser.add_argument("--train-scenes", type=int, default=4000)
    parser.add_argument("--val-scenes", type=int, default=512)
    parser.add_argument("--test-scenes", type=int, default=1000)
    parser.add_argument("--width", type=int, default=16, help="channels of the first encoder block")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dense-epochs", type=int, default=10, help="training epochs before pruning")
    parser.add_argument("--b", type=float, default=3.0, help="mIoU the pruned network may lose, in points")
    parser.add_argument("--prune-epochs", type=int, default=4, help="epochs of the pruning run (>= 2)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="save the pruned module here and reload it")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train the U-Net densely, then prune it with `RLPruneCallback` (b in mIoU points) and fine-tune it.

    Prints and returns the MACs, parameters, validation and test mIoU and pixel accuracy before and after pruning,
    the filters each convolution keeps, and the wall time.
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    L.seed_everything(args.seed)
    embedded = args.data_dir == "embedded"
    data = FashionScenes(
        None if embedded else args.data_dir,
        train_scenes=args.train_scenes,
        val_scenes=args.val_scenes,
        test_scenes=args.test_scenes,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    model = SegmentationModule(width=args.width)
    filters = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    make_trainer(args.dense_epochs).fit(model, datamodule=data)
    dense_cost, dense = cost(model), evaluate(make_trainer(1), model, data)
    dense_seconds = time.perf_counter() - started

    # b is in mIoU points: MulticlassJaccardIndex is valued in [0, 1], so the callback counts it x100.
    pruner = RLPruneCallback(
        b=args.b,
        metric=MulticlassJaccardIndex(num_classes=NUM_CLASSES),
        monitor="val_miou",
        start_epoch=0,
        seed=args.seed,
        # A short search: agents that start from the filters' L1-norm ranking, few updates.
        options=RLOptions(l1_prior=1.0, num_samples=4, agent_updates=2, reward_batches=4, calibration_batches=2),
    )
    # Every 3x3 convolution is a group of filters to prune; the 1x1 classifier keeps its 11 classes.
    trainer = make_trainer(args.prune_epochs, callbacks=[pruner])
    trainer.fit(model, datamodule=data)
    pruned_cost, pruned = cost(model), evaluate(make_trainer(1), model, data)
    kept = {n: f"{filters[n]} -> {m.out_channels}" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    if args.checkpoint is not None:
        # The checkpoint carries the pruned shapes; `load_module` rebuilds them in any process.
        trainer.save_checkpoint(args.checkpoint)
        reloaded = load_module(SegmentationModule, args.checkpoint).eval()
        model.eval()
        with torch.no_grad():
            assert torch.equal(reloaded(model.example_input_array), model(model.example_input_array))

    summary = {
        "probes": pruner.probes,
        "level": pruner.level,
        "data": "embedded Fashion-MNIST subset" if embedded else f"Fashion-MNIST IDX files in {args.data_dir}",
        "scenes": {"train": args.train_scenes, "val": args.val_scenes, "test": args.test_scenes, "size": 64},
        "width": args.width,
        "b_miou_points": args.b,
        "epochs": {"dense": args.dense_epochs, "after_pruning": trainer.current_epoch},
        "dense": {**dense_cost, **dense},
        "pruned": {**pruned_cost, **pruned},
        "macs_kept": round(pruned_cost["macs"] / dense_cost["macs"], 4),
        "params_kept": round(pruned_cost["params"] / dense_cost["params"], 4),
        "filters_before_after": kept,
        "dense_seconds": round(dense_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
