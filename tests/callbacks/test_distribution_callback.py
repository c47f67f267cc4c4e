"""Tests of `DistributionPruneCallback` on ResNet-56 and InceptionSmall: targets in steps, resume, argument checks
and the CLI."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune import DistributionOptions, DistributionPruneCallback, ImageClassifier, RLOptions
from lightning_prune.engine import surgery
from lightning_prune.engine.cost import model_cost
from lightning_prune.zoo.data import EmbeddedFashionMNISTDataModule

SHAPE = [1, 1, 32, 32]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch) -> None:
    """Trainers without a logger write into the working directory (pruning_summary.json): keep it temporary."""
    monkeypatch.chdir(tmp_path)


DISTRIBUTION_OPTIONS = {f.name for f in dataclasses.fields(DistributionOptions)}


def _callback(**kwargs) -> DistributionPruneCallback:
    """`DistributionPruneCallback` with `kwargs` routed to its arguments or to its `DistributionOptions` fields."""
    options = {k: v for k, v in kwargs.items() if k in DISTRIBUTION_OPTIONS}
    arguments = {k: v for k, v in kwargs.items() if k not in DISTRIBUTION_OPTIONS}
    if options:
        arguments["options"] = DistributionOptions(**options)
    return DistributionPruneCallback(**arguments)


def _fit(name: str, callback: DistributionPruneCallback, epochs: int, ckpt_path: str | None = None, **kwargs):
    pl.seed_everything(0, verbose=False)
    module = ImageClassifier(name, num_classes=10, in_channels=1, model_kwargs={"width": 0.25}, lr=0.02)
    options = {
        "callbacks": [callback],
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "logger": False,
    }
    trainer = pl.Trainer(max_epochs=epochs, **{**options, **kwargs})
    dm = EmbeddedFashionMNISTDataModule(batch_size=16, num_workers=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def _channels(module: ImageClassifier, names: list[str]) -> list[int]:
    return [surgery.out_channels(module.model.get_submodule(n)) for n in names]


def test_resnet56_reaches_the_channel_target_in_steps_and_reloads(tmp_path) -> None:
    cb = _callback(target=0.5, step_size=0.3, finetune_epochs=1, num_samples=3, updates=1, reward_batches=1, seed=1)
    module = _fit("resnet56", cb, epochs=2, limit_train_batches=1)
    sizes = _channels(module, cb.groups)
    removed = 1 - sum(sizes) / sum(cb.sizes)
    assert len(cb.steps) == 2 and cb.done
    assert [h["epoch"] for h in cb.steps] == [0, 1] and {r["step"] for r in cb.history} == {0, 1}
    assert 0.5 <= removed <= 0.5 + 0.3 and removed == pytest.approx(0.5, abs=1 / sum(cb.sizes))
    assert all(s >= 1 for s in sizes) and "layer2.0.shortcut.0" in cb.groups  # residual groups, none emptied
    assert cb.steps[0]["channels_reduction"] == pytest.approx(0.3, abs=1 / sum(cb.sizes))
    assert len(cb.search.probs) == len(cb.groups) == 30
    assert (tmp_path / "pruning_summary.json").exists()


def test_inception_macs_target_with_taylor_is_reproducible() -> None:
    plans = []
    for _ in range(2):
        cb = _callback(
            target=0.4, target_type="macs", step_size=0.25, finetune_epochs=0, criterion="taylor",
            num_samples=3, updates=1, reward_batches=1, taylor_batches=1, seed=3,
        )  # fmt: skip
        module = _fit("inception_small", cb, epochs=1, limit_train_batches=1)
        plans.append(module.plan.state())
        reduction = 1 - model_cost(module.model, torch.zeros(SHAPE)).macs / cb.base["macs"]
        assert cb.done and 0.4 <= reduction <= 0.4 + 0.25
        assert all(s >= 1 for s in _channels(module, cb.groups))
    assert plans[0] == plans[1] and plans[0]["steps"]
    fresh = ImageClassifier("inception_small", num_classes=10, in_channels=1, model_kwargs={"width": 0.25})
    fresh.load_state_dict(module.state_dict())  # the plan replays: the pruned shapes load into a fresh model
    assert _channels(fresh, cb.groups) == _channels(module, cb.groups)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resuming_mid_schedule_gives_the_uninterrupted_result(tmp_path) -> None:
    def run(ckpt_path: str | None = None) -> tuple[ImageClassifier, DistributionPruneCallback]:
        cb = _callback(
            target=0.5, step_size=0.25, finetune_epochs=1, num_samples=2, updates=2, reward_batches=1, seed=5
        )
        saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
        module = _fit("inception_small", cb, epochs=2, callbacks=[cb, saver], enable_checkpointing=True,
                      ckpt_path=ckpt_path)  # fmt: skip
        return module, cb

    full, full_cb = run()
    checkpoint = next(tmp_path.glob("epoch=0-*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]["DistributionPruneCallback"]
    assert len(saved["steps"]) == 1  # saved between the two steps
    resumed, resumed_cb = run(str(checkpoint))
    assert resumed.plan.state() == full.plan.state() and len(full.plan.steps) > len(saved["steps"])
    assert torch.equal(resumed_cb.search.probs, full_cb.search.probs)
    assert [h["epoch"] for h in resumed_cb.steps] == [0, 1] and resumed_cb.history == full_cb.history


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0.0}, "target=0.0 must be in \\(0, 1\\)"),
        ({"target": 1.0}, "target=1.0 must be in \\(0, 1\\)"),
        ({"target": 1.5}, "target=1.5 must be in \\(0, 1\\)"),
        ({"alpha": -0.1}, "options.alpha=-0.1 must be >= 0"),
        ({"beta": -1}, "options.beta=-1 must be >= 0"),
        ({"criterion": "random"}, "options.criterion='random' is unknown"),
        ({"target_type": "flops"}, "target_type='flops' is unknown"),
        ({"step_size": 0}, "step_size=0 must be in \\(0, 1\\]"),
        ({"min_keep": 0}, "min_keep=0 must be a count"),
        ({"clip": 1.0}, "options.clip=1.0 must be in \\(0, 1\\)"),
        ({"layers": []}, "layers=\\[\\] selects nothing"),
        ({"calibration_batches": -1}, "options.calibration_batches=-1 must be >= 0"),
        ({"updates": 0}, "options.updates=0 must be >= 1 \\(an int\\)"),
        ({"epsilon": 1.5}, "options.epsilon=1.5 must be in \\[0, 1\\]"),
        ({"taylor_batches": 0}, "options.taylor_batches=0 must be >= 1"),
        ({"unpack_batch": "x"}, "options.unpack_batch='x' must be callable"),
        (
            {"options": RLOptions()},
            "options=RLOptions\\(.*\\) must be a lightning_prune.DistributionOptions",
        ),
    ],
)
def test_bad_arguments_fail_in_init(kwargs: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        _callback(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "epochs", "message"),
    [
        ({"target": 0.9, "min_keep": 0.5}, 5, "out of reach"),
        ({"target": 0.5, "step_size": 0.1, "finetune_epochs": 1}, 3, "needs max_epochs >= 5"),
        ({"layers": ["nope*"]}, 5, "matches no prunable convolution group"),
    ],
)
def test_impossible_schedules_fail_at_setup(kwargs: dict, epochs: int, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        _fit("inception_small", _callback(**kwargs), epochs=epochs)


def test_selectable_from_the_cli_config(monkeypatch) -> None:
    from lightning_prune.io.cli import PruneCLI

    monkeypatch.setattr(sys, "argv", ["lightning-prune"])
    config = {
        "model": {"model": "inception_small", "num_classes": 10, "in_channels": 1},
        "data": {"class_path": "lightning_prune.zoo.data.EmbeddedFashionMNISTDataModule"},
        "trainer": {
            "logger": False,
            "callbacks": [
                {
                    "class_path": "lightning_prune.DistributionPruneCallback",
                    "init_args": {"target": 0.3, "target_type": "macs", "options": {"criterion": "taylor"}},
                },
                {"class_path": "lightning_prune.DistillationCallback", "init_args": {"temperature": 2.0}},
            ],
        },
    }
    cli = PruneCLI(ImageClassifier, pl.LightningDataModule, subclass_mode_data=True, run=False, args=config)
    prune, distil = cli.trainer.callbacks[:2]
    assert isinstance(prune, DistributionPruneCallback)
    assert (prune.target, prune.target_type, prune.options.criterion) == (0.3, "macs", "taylor")
    assert prune.options == DistributionOptions(criterion="taylor")
    assert distil.temperature == 2.0
