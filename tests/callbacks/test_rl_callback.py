"""RLPruneCallback: pruning inside `Trainer.fit` on every kind of network, determinism, the orders learned once,
the probes (each undone) and the level they choose, `min_keep`, reporting, and the setup-time checks of bad
input."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import pytorch_lightning as pl
import torch
from helpers import (
    LAYERS,
    RL_OPTIONS,
    AfterPruning,
    check_pruned_and_trained,
    fast_callback,
    fast_trainer,
    same,
    steps,
    tiny_classifier,
    tiny_data,
    training_state,
)
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune import DistributionOptions, ImageClassifier, RLOptions, RLPruneCallback
from lightning_prune.engine import surgery
from lightning_prune.search import level
from lightning_prune.search.floors import min_keep_count


@pytest.mark.parametrize("name", ["vgg11", "resnet56", "mobilenetv2_small", "inception_small"])
def test_prunes_mid_fit_and_keeps_training(tmp_path, name):
    pl.seed_everything(0)
    module = tiny_classifier(name, width=0.125 if name == "vgg11" else 0.25)
    sizes = {n: module.model.get_submodule(n).out_channels for n in LAYERS[name]}
    snapshot = AfterPruning(LAYERS[name], epoch=1)
    callback = fast_callback(layers=LAYERS[name])
    trainer = fast_trainer(tmp_path, [callback, snapshot], limit_train_batches=2)
    trainer.fit(module, datamodule=tiny_data())
    check_pruned_and_trained(trainer, module, sizes, snapshot)
    assert len(callback.probes) == 2 and callback.level["epoch"] == 1
    assert [(r["name"], r["before"]) for r in callback.history] == [(n, sizes[n]) for n in LAYERS[name]]


def test_same_seed_gives_same_plan(tmp_path):
    runs = []
    for run in range(2):
        pl.seed_everything(0)
        module = tiny_classifier()
        callback = fast_callback(min_keep=0.1, agent_updates=3)
        fast_trainer(tmp_path / str(run), [callback], limit_train_batches=2).fit(module, datamodule=tiny_data())
        runs.append((steps(module), callback.orders, callback.probes, callback.level))
    assert runs[0] == runs[1]


@pytest.fixture(scope="module")
def trained_vgg(tmp_path_factory):
    """A small VGG trained for two epochs (about 60% validation accuracy): removing filters changes its accuracy."""
    pl.seed_everything(0)
    module = tiny_classifier()
    root = tmp_path_factory.mktemp("trained")
    fast_trainer(root, max_epochs=2, limit_train_batches=None, limit_val_batches=0).fit(
        module, datamodule=tiny_data(batch_size=128, augment=False)
    )
    return module


class AtEpochStart(Callback):
    """At the start of epoch `epoch` a copy of the training state: right after the pruning callback's cut when
    listed after it, before it when listed before it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.state: dict | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: ImageClassifier) -> None:
        if trainer.current_epoch == self.epoch:
            self.state = training_state(trainer, pl_module)


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, trained_vgg):
    """The trained VGG pruned at epoch 0 of 2 after three probes of two batches per cycle, rewards on the first
    validation batch of 100 images, drops on the other four; the training state before and after the cut."""
    root = tmp_path_factory.mktemp("probed")
    module = copy.deepcopy(trained_vgg)
    callback = fast_callback(b=4.0, start_epoch=0, min_keep=0.1, probes=3, probe_batches=2, check_batches=None)
    before, after = AtEpochStart(0), AtEpochStart(0)
    logger = CSVLogger(root, name="run")
    trainer = fast_trainer(root, [before, callback, after], max_epochs=2, logger=logger, log_every_n_steps=1)
    trainer.fit(module, datamodule=tiny_data(batch_size=100, augment=False))
    return module, callback, before.state, after.state, root / "run" / "version_0"


def test_probes_are_undone_and_the_cut_is_the_level_chosen_from_them(probed_run):
    """Each probe trained its cut network; none of that survives: the pruned layers hold the dense weights of the
    filters they keep, the plan is the one cut at the chosen level, and the optimizer is as it was."""
    module, callback, before, after, _ = probed_run
    probes, chosen = callback.probes, callback.level
    assert [p["ratio"] for p in probes][0] == level.FIRST_RATIO and len({p["ratio"] for p in probes}) == 3
    assert [p["cycles"] for p in probes] == [[2, 2 * level.SPAN], [2], [2]]
    share = level.recovery(probes[0]["readings"][0][0], probes[0]["readings"][1][0], 2, 3 * 2)
    assert all(p["recovery"] == share and p["predicted"] == p["readings"][0][0] * share for p in probes)
    top = level.max_ratio(callback.widths, {n: min_keep_count(0.1, w) for n, w in callback.widths.items()})
    expected = level.choose(probes, 4.0, top)
    assert chosen["ratio"] == pytest.approx(expected["ratio"]) and chosen["predicted"] == expected["predicted"]
    cuts = level.removals(
        callback.orders, chosen["ratio"], {n: min_keep_count(0.1, w) for n, w in callback.widths.items()}
    )
    assert [(name, idxs) for name, _, idxs in after["plan"]] == list(cuts.items())
    kept = {n: [i for i in range(w) if i not in cuts.get(n, [])] for n, w in callback.widths.items()}
    first, second = LAYERS["vgg11"]  # the second reads the first's outputs
    weights = {n: before["tensors"][f"model.{n}.weight"] for n in (first, second)}
    assert torch.equal(after["tensors"][f"model.{first}.weight"], weights[first][kept[first]])
    assert torch.equal(after["tensors"][f"model.{second}.weight"], weights[second][kept[second]][:, kept[first]])
    assert after["optimizes_every_parameter"] and same(after["schedulers"], before["schedulers"])
    assert [g["lr"] for g in after["optimizer"]["param_groups"]] == [
        g["lr"] for g in before["optimizer"]["param_groups"]
    ]
    assert steps(module) == after["plan"]


def test_the_orders_rank_filters_by_the_agents_keep_probabilities(tmp_path, trained_vgg):
    """With a strong `l1_prior` and agents that barely learn, each group's order is its L1 ranking, lowest
    first, and the cut takes each group's lowest-norm filters."""
    module = copy.deepcopy(trained_vgg)
    norms = {n: module.model.get_submodule(n).weight.detach().abs().sum((1, 2, 3)) for n in LAYERS["vgg11"]}
    callback = fast_callback(start_epoch=0, l1_prior=5.0, agent_lr=1e-6)
    fast_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(
        module, datamodule=tiny_data(batch_size=100, augment=False)
    )
    for name, order in callback.orders.items():
        assert order == norms[name].argsort().tolist()
    for name, _, idxs in steps(module):
        assert idxs == sorted(norms[name].argsort()[: len(idxs)].tolist())
    assert callback.hparams["l1_prior"] == 5.0


def test_summary_file_and_logger_metrics(probed_run):
    _, callback, _, _, run = probed_run
    summary = json.loads((run / "pruning_summary.json").read_text())
    assert summary["b"] == 4.0
    assert set(summary["baseline"]) == {"params", "macs", "val_acc", "check"}
    assert set(summary["final"]) == {"params", "macs", "val_acc", "check", "drop", "se"}
    assert summary["baseline"]["check"] == pytest.approx(sum(callback.dense) / len(callback.dense))
    assert summary["final"]["val_acc"] == summary["final"]["check"]  # no monitor: the callback's metric
    assert summary["final"]["drop"] == pytest.approx(summary["baseline"]["check"] - summary["final"]["check"])
    assert summary["final"]["macs"] < summary["baseline"]["macs"]
    assert summary["probes"] == json.loads(json.dumps(callback.probes)) and len(summary["probes"]) == 3
    assert summary["level"]["ratio"] == callback.level["ratio"]
    assert summary["level"]["macs_removed"] == pytest.approx(1 - summary["final"]["macs"] / summary["baseline"]["macs"])
    assert [layer["name"] for layer in summary["layers"]] == LAYERS["vgg11"]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("prune/reward_mean", "prune/level/ratio", "prune/level/predicted_drop", "prune/final/check_drop"):
        assert [float(r[key]) for r in rows if r.get(key)], f"{key} never reached the logger"


def test_probe_steps_stay_out_of_the_run_s_logged_metrics(probed_run):
    """The probes' training steps call the module's `self.log`; none of their values reaches the logger."""
    *_, run = probed_run
    with open(run / "metrics.csv") as f:
        losses = [r for r in csv.DictReader(f) if r.get("train_loss")]
    assert len(losses) == 2 * 3  # 2 epochs of 3 batches, logged every step


@pytest.mark.parametrize("min_keep", [3, 0.5])
def test_a_generous_b_cuts_every_group_to_its_floor(tmp_path, min_keep):
    pl.seed_everything(0)
    module = tiny_classifier()
    callback = fast_callback(min_keep=min_keep, start_epoch=0)
    fast_trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=1).fit(module, datamodule=tiny_data())
    assert callback.widths == {"features.4": 16, "features.8": 32}
    floors = [min_keep_count(min_keep, w) for w in (16, 32)]
    assert [h["after"] for h in callback.history] == [
        module.model.get_submodule(n).out_channels for n in LAYERS["vgg11"]
    ]
    top = level.max_ratio(callback.widths, dict(zip(LAYERS["vgg11"], floors, strict=True)))
    assert callback.level["ratio"] == pytest.approx(top)
    assert [h["after"] for h in callback.history] == floors


def test_the_same_callback_fits_a_second_module_as_a_new_run(tmp_path):
    callback = fast_callback(start_epoch=0)
    first = tiny_classifier()
    fast_trainer(tmp_path / "a", [callback], max_epochs=1, limit_train_batches=1).fit(first, datamodule=tiny_data())
    probes = copy.deepcopy(callback.probes)
    second = tiny_classifier()
    fast_trainer(tmp_path / "b", [callback], max_epochs=1, limit_train_batches=1).fit(second, datamodule=tiny_data())
    assert [s[0] for s in steps(second)] == LAYERS["vgg11"] and len(callback.probes) == len(probes) == 2


def test_fast_dev_run_prunes_at_epoch_0(tmp_path):
    module = tiny_classifier()
    fast_trainer(tmp_path, [fast_callback(start_epoch=0)], fast_dev_run=True).fit(module, datamodule=tiny_data())
    assert [s[0] for s in steps(module)] == LAYERS["vgg11"]
    with pytest.warns(UserWarning, match="fast_dev_run runs one epoch.*needs 2 epochs"):
        fast_trainer(tmp_path, [fast_callback()], fast_dev_run=True).fit(tiny_classifier(), datamodule=tiny_data())


# -- bad input fails before any training time -----------------------------------------------------------


def _constructed(**kwargs) -> RLPruneCallback:
    """`RLPruneCallback` with `kwargs` routed to its arguments or to its `RLOptions` fields."""
    options = {k: v for k, v in kwargs.items() if k in RL_OPTIONS}
    arguments = {k: v for k, v in kwargs.items() if k not in RL_OPTIONS}
    if options:
        arguments["options"] = RLOptions(**options)
    return RLPruneCallback(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": 0}, "b=0 must be a number > 0"),
        ({"b": -1.0}, "b=-1.0 must be a number > 0"),
        ({"b": float("inf")}, "b=inf must be a number > 0 and finite"),
        ({"b": True}, "b=True must be a number > 0"),
        ({"start_epoch": -1}, "start_epoch=-1 must be >= 0"),
        ({"min_keep": 0}, "min_keep=0 must be a count >= 1 or a fraction"),
        ({"min_keep": 1.5}, "min_keep=1.5"),
        ({"min_keep": 0.0}, "min_keep=0.0"),
        ({"min_keep": True}, "min_keep=True"),
        ({"min_keep": 1.0}, r"min_keep=1.0 .*1.0 would keep every filter \(pass min_keep=1"),
        ({"layers": []}, "selects nothing"),
        ({"layers": "features.0"}, r"layers='features.0' must be a list .*layers=\['features.0'\]"),
        ({"metric": "miou"}, "metric='miou' must be None, a torchmetrics Metric or a callable"),
        ({"seed": 1.5}, "seed=1.5 must be an int"),
        (
            {"options": DistributionOptions()},
            r"options=DistributionOptions\(.*\) must be a lightning_prune.RLOptions",
        ),
        ({"num_samples": 0}, r"options.num_samples=0 must be >= 1 \(an int\)"),
        ({"num_samples": 2.5}, r"options.num_samples=2.5 must be >= 1 \(an int\)"),
        ({"agent_updates": 0}, r"options.agent_updates=0 must be >= 1 \(an int\)"),
        ({"probes": 0}, r"options.probes=0 must be >= 1 \(an int\)"),
        ({"probe_batches": 0}, r"options.probe_batches=0 must be >= 1 \(an int; None: one epoch's batches\)"),
        ({"reward": "gain"}, "options.reward='gain' is unknown"),
        ({"init_keep": 1.0}, r"options.init_keep=1.0 must be in \(0, 1\)"),
        ({"l1_prior": -0.5}, "options.l1_prior=-0.5 must be >= 0"),
        ({"agent_lr": 0.0}, "options.agent_lr=0.0 must be > 0"),
        ({"entropy_coef": -0.1}, "options.entropy_coef=-0.1 must be >= 0"),
        ({"check_batches": 0}, r"options.check_batches=0 must be >= 1 \(an int; None: the rest of the split\)"),
        ({"max_cache_mb": -1.0}, "options.max_cache_mb=-1.0 must be >= 0"),
        ({"reward_batches": 0}, r"options.reward_batches=0 must be >= 1 \(an int\)"),
        ({"calibration_batches": -1}, "options.calibration_batches=-1 must be >= 0"),
        ({"unpack_batch": 3}, "options.unpack_batch=3 must be callable"),
        ({"ignore_index": "255"}, "options.ignore_index='255' must be an int or None"),
        ({"ignore_index": 255, "metric": lambda p, t: 0.0}, "options.ignore_index applies to the default metric only"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        _constructed(**kwargs)


def test_options_are_read_from_one_place_and_logged_as_hyperparameters():
    callback = RLPruneCallback(b=2.0, options=RLOptions(agent_updates=3, check_batches=2, unpack_batch=lambda b: b))
    assert (callback.options.check_batches, callback.options.reward_batches) == (2, 4)
    assert callback.options.agent_updates == 3 and RLPruneCallback().options == RLOptions()
    hparams = callback.hparams
    assert hparams["b"] == 2.0 and hparams["agent_updates"] == 3 and hparams["check_batches"] == 2
    assert "unpack_batch" not in hparams and json.loads(json.dumps(hparams)) == hparams


class ValAccuracy(ImageClassifier):
    """Logs its own validation metric names, so only a validation run tells what is logged."""

    def on_validation_epoch_end(self) -> None:
        self.log("val_accuracy", self.val_acc.compute() * 100.0)
        self.val_acc.reset()


def _trained_batches(trainer: pl.Trainer) -> int:
    return trainer.fit_loop.epoch_loop.batch_progress.total.ready


@pytest.mark.parametrize(
    ("module", "callback_kwargs", "trainer_kwargs", "match"),
    [
        (tiny_classifier(), {"layers": ["features.99"]}, {}, r"'features.99'.*features\.0, features\.4"),
        (ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(1024, 10)), in_channels=1), {}, {}, "no prunable"),
        (tiny_classifier(), {"min_keep": 16}, {}, r"min_keep=16 leaves nothing to prune in \{'features.4': 16\}"),
        (tiny_classifier(), {}, {"max_epochs": 1}, "needs max_epochs >= 2"),
        (tiny_classifier(), {}, {"max_epochs": 6, "max_steps": 3}, "max_steps=3 ends training before .* 4 steps"),
        (tiny_classifier(), {"monitor": "val_accuracy"}, {}, "'val_accuracy' is never logged.*val_loss, val_acc"),
        (tiny_classifier(), {}, {"limit_val_batches": 0}, "limit_val_batches=0"),
        (
            tiny_classifier(),
            {"check_batches": 32},
            {},
            r"after the 1 the search scores \(options.reward_batches\).*at least 33 batches, but it has 32.*"
            r"lower options.reward_batches / options.check_batches",
        ),
        (tiny_classifier(), {"reward_batches": 32}, {}, "at least 33 batches, but it has 32"),
    ],
    ids=[
        "unknown-layer",
        "nothing-prunable",
        "min-keep-too-large",
        "max-epochs",
        "max-steps",
        "monitor",
        "no-val",
        "check-batches",
        "reward-batches",
    ],  # fmt: skip
)
def test_bad_setup_fails_before_training(tmp_path, module, callback_kwargs, trainer_kwargs, match):
    trainer = fast_trainer(tmp_path, [fast_callback(**callback_kwargs)], **trainer_kwargs)
    with pytest.raises(MisconfigurationException, match=match):
        trainer.fit(module, datamodule=tiny_data())
    assert _trained_batches(trainer) == 0


def test_missing_validation_data_fails_before_training(tmp_path):
    data = tiny_data()
    data.setup("fit")
    trainer = fast_trainer(tmp_path, [fast_callback()])
    with pytest.raises(MisconfigurationException, match="no validation data"):
        trainer.fit(tiny_classifier(), train_dataloaders=data.train_dataloader())
    assert _trained_batches(trainer) == 0


def test_unlogged_monitor_of_a_custom_module_fails_after_the_sanity_check(tmp_path):
    trainer = fast_trainer(tmp_path, [fast_callback(monitor="val_acc")], num_sanity_val_steps=1)
    with pytest.raises(
        MisconfigurationException, match="'val_acc' is not logged.*Logged metrics: val_accuracy, val_loss"
    ):
        trainer.fit(ValAccuracy("vgg11", in_channels=1, model_kwargs={"width": 0.125}), datamodule=tiny_data())
    assert _trained_batches(trainer) == 0


def test_unlogged_monitor_without_sanity_check_fails_before_the_first_search(tmp_path):
    callback = fast_callback(monitor="val_acc")
    trainer = fast_trainer(tmp_path, [callback])
    with pytest.raises(MisconfigurationException, match="'val_acc' is not logged"):
        trainer.fit(ValAccuracy("vgg11", in_channels=1, model_kwargs={"width": 0.125}), datamodule=tiny_data())
    assert callback.orders == {} and steps(trainer.lightning_module) == []


@pytest.mark.parametrize(
    ("changed", "match"), [({"b": 2.0}, "b=50.0 \\(now 2.0\\)"), ({"layers": ["features.4"]}, "layers=")]
)
def test_resuming_with_other_arguments_refuses(tmp_path, changed, match):
    from pytorch_lightning.callbacks import ModelCheckpoint

    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    fast_trainer(tmp_path, [fast_callback(), saving], enable_checkpointing=True).fit(
        tiny_classifier(), datamodule=tiny_data()
    )
    trainer = fast_trainer(tmp_path, [fast_callback(**changed)])
    with pytest.raises(MisconfigurationException, match=f"pruned with {match}.*pass the checkpoint's values"):
        trainer.fit(tiny_classifier(), datamodule=tiny_data(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")


def test_a_cut_that_fails_at_run_time_is_skipped_with_model_optimizer_and_plan_restored(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("forced failure after the tensors were cut")

    monkeypatch.setattr(surgery, "_remap_optimizer", fail)
    module = tiny_classifier()
    shapes = {k: v.shape for k, v in module.state_dict().items() if torch.is_tensor(v)}
    callback = fast_callback()
    trainer = fast_trainer(tmp_path, [callback])
    with pytest.warns(UserWarning, match="cutting features.4 failed and was skipped .*forced failure"):
        trainer.fit(module, datamodule=tiny_data())
    assert steps(module) == []
    assert callback.history == []  # no group was cut
    assert {k: v.shape for k, v in module.state_dict().items() if torch.is_tensor(v)} == shapes
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters()}
    assert _trained_batches(trainer) == 3 * 3  # every epoch trained
