"""A LightningModule the user wrote (torchvision resnet18 inside, torchmetrics accuracy logged as a fraction)
is pruned by both callbacks under `lightning` and `pytorch_lightning`, keeps training, and its checkpoint
reloads in a fresh process; bad input fails at setup with a message naming the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import user_modules
from lightning.pytorch.callbacks import ModelCheckpoint
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint as PLModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryAccuracy
from user_modules import CLASSES, LAYERS, OWN_DATA, callback, loaders, macs, outputs, trainer

from lightning_prune.engine.plan import plan_of

SCRIPT = Path(user_modules.__file__)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1]), str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


class Snapshot(Callback):
    """Weights of the pruned layers right after the cuts of epoch `epoch` (listed after the pruning callback)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.weights = epoch, {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            self.weights = {n: pl_module.get_submodule(n).weight.detach().clone() for n in LAYERS}


@pytest.mark.parametrize("namespace", ["lightning", "pytorch_lightning"])
@pytest.mark.parametrize("kind", ["rl", "distribution"])
def test_user_module_is_pruned_keeps_training_and_reloads_in_a_fresh_process(tmp_path, namespace, kind):
    torch.manual_seed(0)
    module = CLASSES[namespace]()
    before = macs(module)
    snapshot = Snapshot(epoch=1)
    run = trainer(namespace, tmp_path, [callback(kind), snapshot])  # bf16: tests/test_precision.py
    run.fit(module, *loaders())
    assert macs(module) < before
    assert outputs(module).shape == (2, 10)
    assert module.backbone.conv1.out_channels < 64 or module.backbone.layer2[0].conv1.out_channels < 128
    for name in LAYERS:
        weight = module.get_submodule(name).weight.detach()
        assert weight.shape == snapshot.weights[name].shape and not torch.equal(weight, snapshot.weights[name])
    run.save_checkpoint(tmp_path / "pruned.ckpt")
    torch.save(outputs(module), tmp_path / "outputs.pt")
    _run("reload", namespace, str(tmp_path / "pruned.ckpt"), str(tmp_path / "outputs.pt"))


def test_user_module_under_ddp_prunes_alike_on_both_ranks(tmp_path):
    _run("ddp", str(tmp_path), "lightning")
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["shapes"]["backbone.conv1"] < 64


def test_resume_from_a_checkpoint_of_the_user_module_mid_pruning(tmp_path):
    torch.manual_seed(0)
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer("lightning", tmp_path, [callback("rl"), saving], enable_checkpointing=True).fit(
        CLASSES["lightning"](), *loaders()
    )
    resumed_callback = callback("rl")
    module = CLASSES["lightning"]()
    run = trainer("lightning", tmp_path, [resumed_callback])
    run.fit(module, *loaders(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")  # after the cut
    assert resumed_callback.level is not None and len(resumed_callback.probes) == 2
    assert [r["name"] for r in resumed_callback.history] == LAYERS
    assert module.backbone.conv1.out_channels < 64


class DictBatches(torch.utils.data.Dataset):
    def __init__(self, data: torch.utils.data.Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        x, y = self.data[i]
        return {"image": x, "label": y}


class TwoInputs(user_modules.LClassifier):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) * scale

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x, 1.0), y)

    def validation_step(self, batch, batch_idx):
        pass


def _dict_loaders() -> tuple[DataLoader, DataLoader]:
    return tuple(DataLoader(DictBatches(loader.dataset), batch_size=16) for loader in loaders())


@pytest.mark.parametrize(
    ("module", "data", "kwargs", "match"),
    [
        (CLASSES["lightning"], loaders, {"metric": BinaryAccuracy()}, "metric cannot be computed.*Pass `metric=`"),
        (
            CLASSES["lightning"],
            _dict_loaders,
            {},
            "cannot split a batch.*dict.*`options=...Options\\(unpack_batch=f\\)`",
        ),
        (
            CLASSES["lightning"],
            _dict_loaders,
            {"unpack_batch": lambda b: (b["img"], b["label"])},
            r"options.unpack_batch cannot split a batch.*'img'",
        ),
        (TwoInputs, loaders, {}, "forward cannot be traced.*example_input_array"),
    ],
    ids=["metric", "batch", "unpack_batch", "forward"],
)
def test_bad_input_fails_at_setup_naming_the_fix(tmp_path, module, data, kwargs, match):
    run = trainer("lightning", tmp_path, [callback("rl", **kwargs)])
    with pytest.raises(MisconfigurationException, match=match):
        run.fit(module(), *data())
    assert run.fit_loop.epoch_loop.batch_progress.total.ready == 0


def test_a_budget_that_looks_like_a_fraction_warns(tmp_path):
    run = trainer("pytorch_lightning", tmp_path, [callback("rl", b=0.01, start_epoch=0)], max_epochs=2)
    with pytest.warns(UserWarning, match="b=0.01|budget 0.01 looks like a fraction"):
        run.fit(CLASSES["pytorch_lightning"](), *loaders())


def test_image_classifier_of_the_lightning_namespace_is_pruned_by_a_lightning_trainer(tmp_path):
    from helpers import LAYERS as BUILTIN_LAYERS
    from helpers import fast_callback, tiny_data

    from lightning_prune.lightning import ImageClassifier

    data = tiny_data()
    data.setup("fit")
    module = ImageClassifier("vgg11", in_channels=1, model_kwargs={"width": 0.125})
    run = trainer("lightning", tmp_path, [fast_callback()], limit_train_batches=3)
    run.fit(module, data.train_dataloader(), data.val_dataloader())
    assert [s[0] for s in module.plan.steps] == BUILTIN_LAYERS["vgg11"]


@pytest.mark.parametrize(("namespace", "kind"), [("lightning", "rl"), ("pytorch_lightning", "distribution")])
def test_a_module_that_builds_its_data_in_its_own_setup_is_pruned_and_resumes(tmp_path, namespace, kind):
    """The callbacks read data only after the module's `setup` (Lightning calls the callbacks' `setup` first)."""
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint if namespace == "lightning" else PLModelCheckpoint
    saving = checkpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    first, pruned = callback(kind), OWN_DATA[namespace]()
    trainer(namespace, tmp_path, [first, saving], enable_checkpointing=True).fit(pruned)
    assert first.history and {r["name"] for r in first.history} <= set(LAYERS)  # a record per group cut
    resumed, module = callback(kind), OWN_DATA[namespace]()
    trainer(namespace, tmp_path, [resumed]).fit(module, ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")  # after the cut
    assert resumed.history == first.history
    assert plan_of(module).state() == plan_of(pruned).state() and plan_of(module).steps
    assert macs(module) == macs(pruned)


def test_a_module_that_builds_its_data_in_its_own_setup_is_pruned_under_ddp(tmp_path):
    _run("ddp-own-data", str(tmp_path), "lightning")
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["shapes"] != {"backbone.conv1": 64, "backbone.layer2.0.conv1": 128}
