"""`examples/segmentation.py`: a user-written U-Net (skip concatenations, transposed convolutions, its own loss
and torchmetrics mIoU) is pruned by `RLPruneCallback` with the default pixel accuracy and with an mIoU metric."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from types import ModuleType

import lightning as L
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_prune import RLOptions, RLPruneCallback, load_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "segmentation.py"
#: The skip-connected output of the first encoder block, then the bottleneck feeding a ConvTranspose2d.
LAYERS = ["enc1.3", "bottleneck.3"]

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*number of training batches.*logging interval.*")


def load_example() -> ModuleType:
    """`examples/segmentation.py` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("segmentation_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seg = load_example()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes():
    """A few scenes of garments from the Fashion-MNIST subset shipped with lightning-prune."""
    data = seg.FashionScenes(None, train_scenes=48, val_scenes=32, test_scenes=16, batch_size=16)
    data.setup("fit")
    return data


def trainer(root: Path, max_epochs: int, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """Two training and two validation batches an epoch; the pruning summary is written under `root`."""
    return seg.make_trainer(max_epochs, callbacks, limit_train_batches=2, limit_val_batches=2, default_root_dir=root)


def pruner(**kwargs) -> RLPruneCallback:
    """Tiny search and two probes of one training batch a cycle: each test prunes two groups in a few seconds."""
    options = RLOptions(
        num_samples=2, agent_updates=1, reward_batches=1, calibration_batches=1, probes=2, probe_batches=1
    )
    return RLPruneCallback(b=50.0, layers=LAYERS, start_epoch=0, min_keep=0.5, options=options, **kwargs)


def test_compose_scenes_is_deterministic_and_labels_garment_pixels() -> None:
    x_train, y_train, _, _ = seg.load_garments(None)
    images, masks = seg.compose_scenes(x_train[:100], y_train[:100], 8, seed=3)
    again, masks_again = seg.compose_scenes(x_train[:100], y_train[:100], 8, seed=3)
    assert images.shape == (8, 1, 64, 64) and masks.shape == (8, 64, 64) and masks.dtype == torch.int64
    assert torch.equal(images, again) and torch.equal(masks, masks_again)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert int(masks.max()) <= 10 and (masks > 0).any() and (masks == 0).any()
    # A labelled pixel is a bright garment pixel; background is black.
    assert bool((images[:, 0][masks > 0] > 25 / 255).all()) and bool((images[:, 0][masks == 0] == 0).all())
    assert not torch.equal(masks, seg.compose_scenes(x_train[:100], y_train[:100], 8, seed=4)[1])


def test_datamodule_gives_image_mask_batches(scenes) -> None:
    assert {k: len(v) for k, v in scenes.splits.items()} == {"train": 48, "val": 32, "test": 16}
    x, y = next(iter(scenes.train_dataloader()))
    assert x.shape == (16, 1, 64, 64) and y.shape == (16, 64, 64)


@pytest.mark.parametrize("metric", [None, "miou"], ids=["pixel-accuracy", "miou"])
def test_pruning_shrinks_the_unet_and_keeps_every_class(scenes, metric, tmp_path) -> None:
    L.seed_everything(0)
    model = seg.SegmentationModule(width=8)
    trainer(tmp_path, 1).fit(model, datamodule=scenes)
    x = model.example_input_array
    before = seg.cost(model)
    callback = pruner(
        metric=MulticlassJaccardIndex(num_classes=seg.NUM_CLASSES) if metric else None,
        monitor="val_miou",
    )
    pruned = trainer(tmp_path, 2, [callback])
    pruned.fit(model, datamodule=scenes)
    after = seg.cost(model)
    assert (tmp_path / "pruning_summary.json").is_file()

    assert after["macs"] < before["macs"] and after["params"] < before["params"]
    assert model.enc1[3].out_channels < 8 or model.bottleneck[3].out_channels < 32
    assert model.classifier.out_channels == seg.NUM_CLASSES
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, seg.NUM_CLASSES, 64, 64)

    # The pruned checkpoint reloads into the user's class, which has no lightning-prune base class.
    path = tmp_path / "pruned.ckpt"
    pruned.save_checkpoint(path)
    reloaded = load_module(seg.SegmentationModule, path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)
