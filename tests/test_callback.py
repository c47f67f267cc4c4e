"""RLPruneCallback: pruning inside `Trainer.fit` on every kind of network, determinism, the accuracy budget `b`,
`min_keep`, reporting, and the setup-time checks of bad input."""

from __future__ import annotations

import copy
import csv
import itertools
import json

import pytest
import pytorch_lightning as pl
import torch
from helpers import (
    LAYERS,
    AfterPruning,
    check_pruned_and_trained,
    fast_callback,
    fast_trainer,
    steps,
    tiny_classifier,
    tiny_data,
)
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune import ImageClassifier, RLPruneCallback, surgery
from lightning_prune.measure import macs_at_stake
from lightning_prune.policy import min_keep_count


@pytest.mark.parametrize("name", ["vgg11", "resnet56", "mobilenetv2_small", "inception_small"])
def test_prunes_mid_fit_and_keeps_training(tmp_path, name):
    pl.seed_everything(0)
    module = tiny_classifier(name, width=0.125 if name == "vgg11" else 0.25)
    sizes = {n: module.model.get_submodule(n).out_channels for n in LAYERS[name]}
    snapshot = AfterPruning(LAYERS[name], epoch=2)
    trainer = fast_trainer(tmp_path, [fast_callback(layers=LAYERS[name]), snapshot], limit_train_batches=2)
    trainer.fit(module, datamodule=tiny_data())
    check_pruned_and_trained(trainer, module, sizes, snapshot)


def test_same_seed_gives_same_plan(tmp_path):
    plans = []
    for run in range(2):
        pl.seed_everything(0)
        module = tiny_classifier()
        callback = fast_callback(init_keep=0.9, min_keep=0.1, agent_updates=3)
        fast_trainer(tmp_path / str(run), [callback], limit_train_batches=2).fit(module, datamodule=tiny_data())
        plans.append((steps(module), [h["keep_probs"] for h in callback.history]))
    assert plans[0] == plans[1]


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


def _macs_after_pruning(module: ImageClassifier, root, b: float, seed: int) -> int:
    """MACs after the callback prunes two layers of a copy of `module`, with a shorter search than the default
    (half the agent updates and sampled masks each, half the decision counts, BatchNorm re-estimated on one batch
    rather than four)."""
    module = copy.deepcopy(module)
    callback = RLPruneCallback(
        b=b,
        layers=LAYERS["vgg11"],
        finetune_epochs=0,
        num_samples=4,
        agent_updates=5,
        reward_batches=1,
        calibration_batches=1,
        decision_counts=8,
        seed=seed,
    )
    trainer = fast_trainer(root, [callback], max_epochs=1, limit_train_batches=1)
    trainer.fit(module, datamodule=tiny_data(batch_size=500, augment=False))  # rewards on the whole validation split
    return callback.history[-1]["macs"]


def test_larger_budget_removes_more(tmp_path, trained_vgg):
    """Over fixed seeds, b = 2 (accuracy points the network may lose) removes more MACs than b = 0.5. One seed
    alone is noisy at this size: few sampled masks decide, and a chance accuracy gain counts 1/b times."""
    macs = {b: [_macs_after_pruning(trained_vgg, tmp_path / f"{b}-{s}", b, s) for s in range(3)] for b in (0.5, 2.0)}
    assert sum(macs[2.0]) < sum(macs[0.5]), macs


def test_reward_decision_removes_the_least_likely_filters(tmp_path, trained_vgg):
    """The reward decision keeps the agent's most likely filters (how many is what the reward picks), scored
    against the linear budget schedule."""
    module = copy.deepcopy(trained_vgg)
    callback = RLPruneCallback(b=2.0, layers=LAYERS["vgg11"], finetune_epochs=0, reward_batches=1, init_keep=0.6)
    fast_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(
        module, datamodule=tiny_data(batch_size=500, augment=False)
    )
    assert any(h["after"] < h["before"] for h in callback.history)
    assert [h["budget"] for h in callback.history] == [1.0, 2.0]  # linear schedule: b * i / L for 2 layers
    removed = {name: idxs for name, _, idxs in steps(module)}
    for record in callback.history:
        probs = torch.tensor(record["keep_probs"])
        gone = torch.zeros(len(probs), dtype=torch.bool)
        gone[removed.get(record["name"], [])] = True
        assert int(gone.sum()) == record["before"] - record["after"]
        if gone.any():
            assert probs[gone].max() <= probs[~gone].min()


def test_macs_schedule_shares_b_by_the_macs_each_layer_costs(tmp_path, trained_vgg):
    module = copy.deepcopy(trained_vgg)
    x = surgery.example_input(module.model, module.plan.input_shape)
    stakes = macs_at_stake(module.model, x, LAYERS["vgg11"])
    callback = RLPruneCallback(
        b=2.0, layers=LAYERS["vgg11"], finetune_epochs=0, reward_batches=1, budget_schedule="macs"
    )
    fast_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(
        module, datamodule=tiny_data(batch_size=500, augment=False)
    )
    assert callback.stakes == stakes and callback.state_dict()["stakes"] == stakes
    assert [h["budget"] for h in callback.history] == pytest.approx([2.0 * stakes[0] / sum(stakes), 2.0])


def test_l1_prior_starts_the_agents_from_the_l1_ranking(tmp_path, trained_vgg):
    """With a strong `l1_prior` and an agent that barely learns, the cut removes the layer's lowest-norm filters."""
    module = copy.deepcopy(trained_vgg)
    first = LAYERS["vgg11"][0]
    norms = module.model.get_submodule(first).weight.detach().abs().sum((1, 2, 3))
    callback = RLPruneCallback(
        b=2.0, layers=[first], finetune_epochs=0, reward_batches=1, init_keep=0.6, l1_prior=5.0, agent_lr=1e-6
    )
    fast_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(
        module, datamodule=tiny_data(batch_size=500, augment=False)
    )
    record = callback.history[0]
    assert torch.equal(torch.tensor(record["keep_probs"]).argsort(), norms.argsort())
    removed = [idxs for name, _, idxs in steps(module) if name == first]
    if removed:  # the cut, if any, takes the lowest norms
        assert sorted(removed[0]) == norms.argsort()[: len(removed[0])].sort().values.tolist()
    assert callback.hparams["l1_prior"] == 5.0


def _fit_recovered(tmp_path, module: ImageClassifier, batch_size: int = 500, **kwargs) -> RLPruneCallback:
    """Both VGG-11 layers pruned at epoch 0 with `b = 4` and a 3-step recovered decision (keyword arguments
    override the callback's); the callback after."""
    options = {
        "b": 4.0,
        "layers": LAYERS["vgg11"],
        "finetune_epochs": 0,
        "reward_batches": 1,
        "init_keep": 0.6,
        "decision_counts": 4,
        "recovery_steps": 3,
        "recovery_lr": 0.01,
        "recovery_batches": 2,
    }
    callback = RLPruneCallback(**{**options, **kwargs})
    fast_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(
        module, datamodule=tiny_data(batch_size=batch_size, augment=False)
    )
    return callback


def test_recovered_decision_measures_p_star_and_candidates_after_recovery(tmp_path, trained_vgg):
    """With `recovery_steps`, `p*` is the mean of `p_star_draws` recovered scores of the unpruned model (the first
    is the first layer's), each layer records its model's recovered score, and the decision (a recovered candidate
    within b of p*, or keeping all) is what is cut."""
    module = copy.deepcopy(trained_vgg)
    callback = _fit_recovered(tmp_path, module, p_star_draws=3)
    first, second = callback.history
    scores = callback.baseline["p_star_scores"]
    assert len(scores) == 3 and scores[0] == first["recovered_reference"]
    assert callback.p_star == pytest.approx(sum(scores) / 3)
    removed = {name: len(idxs) for name, _, idxs in steps(module)}
    for record in callback.history:
        assert removed.get(record["name"], 0) == record["before"] - record["after"]
        if record["after"] < record["before"]:
            assert callback.p_star - record["decision_acc"] < callback.b
    assert removed  # b = 4 points lets the half-trained model lose filters
    assert second["recovered_reference"] != first["recovered_reference"]  # the cut model, recovered afresh


def test_budget_decision_spends_each_layers_allowance_on_its_own_cuts(tmp_path, trained_vgg):
    """`decision="budget"` with `drop_from="layer"`: each layer's cut keeps the fewest filters whose own drop
    (from the layer's recovered score), added to the drops charged before it, stays within the linear allowance."""
    callback = _fit_recovered(tmp_path, copy.deepcopy(trained_vgg), decision="budget", drop_from="layer")
    charged = 0.0
    for i, record in enumerate(callback.history):
        assert record["reference"] == record["recovered_reference"]
        assert record["budget"] == pytest.approx(callback.b * (i + 1) / len(callback.history))
        if record["after"] < record["before"]:
            charged += max(record["reference"] - record["decision_acc"], 0.0)
            assert charged <= record["budget"] + 1e-9
    assert any(r["after"] < r["before"] for r in callback.history)  # b = 4 points lets filters go


@pytest.mark.parametrize("recovery_steps", [0, 3])
def test_held_out_batches_set_the_level_and_leave_the_first_decision_alone(tmp_path, trained_vgg, recovery_steps):
    """With `holdout_batches`, `p*` and each layer's level are scored on validation batches after the candidates'
    ones, and a candidate counts as the level minus its own drop on the candidates' batches. The first layer's
    drops are then the same as without them, and so is its decision."""
    scored = 2 if recovery_steps else 1  # reward_batches=1, recovery_batches=2
    runs = {
        holdout: _fit_recovered(
            tmp_path / str(holdout),
            copy.deepcopy(trained_vgg),
            batch_size=100,  # 5 validation batches
            recovery_steps=recovery_steps,
            p_star_draws=1,
            holdout_batches=holdout,
        )
        for holdout in (0, 2)
    }
    plain, held = runs[0].history[0], runs[2].history[0]
    assert runs[2].p_star == held["reference"]
    assert (held["before"], held["after"]) == (plain["before"], plain["after"])
    assert held["keep_probs"] == pytest.approx(plain["keep_probs"], abs=1e-3)
    assert held["reference"] - held["decision_acc"] == pytest.approx(plain["reference"] - plain["decision_acc"])
    assert any(r["after"] < r["before"] for r in runs[2].history)  # b = 4 points lets filters go
    if not recovery_steps:  # the level is the unpruned model's accuracy on the held-out batches
        data = tiny_data(batch_size=100, augment=False)
        data.setup("fit")
        batches = list(itertools.islice(data.val_dataloader(), scored + 2))[scored:]
        model = copy.deepcopy(trained_vgg).eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
        assert held["reference"] == pytest.approx(100.0 * correct / 200)


@pytest.mark.parametrize("min_keep", [3, 0.5])
def test_min_keep_is_never_violated(tmp_path, min_keep):
    pl.seed_everything(0)
    module = tiny_classifier()
    callback = fast_callback(init_keep=0.02, min_keep=min_keep, start_epoch=0, finetune_epochs=0)
    fast_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(module, datamodule=tiny_data())
    assert [h["after"] for h in callback.history] == [min_keep_count(min_keep, h["before"]) for h in callback.history]


def test_summary_file_and_logger_metrics(tmp_path):
    pl.seed_everything(0)
    logger = CSVLogger(tmp_path, name="run")
    callback = fast_callback()
    trainer = fast_trainer(tmp_path, [callback], logger=logger, log_every_n_steps=1)
    trainer.fit(tiny_classifier(), datamodule=tiny_data())

    summary = json.loads((tmp_path / "run" / "version_0" / "pruning_summary.json").read_text())
    assert summary["b"] == 1.0
    for key in ("baseline", "final"):
        assert set(summary[key]) == {"params", "macs", "val_acc"}
        assert isinstance(summary[key]["val_acc"], float)
    assert summary["final"]["macs"] < summary["baseline"]["macs"]
    assert [layer["name"] for layer in summary["layers"]] == LAYERS["vgg11"]
    assert all(layer["after"] < layer["before"] for layer in summary["layers"])

    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("prune/filters_after", "prune/macs", "prune/reward_mean", "prune/decision_acc"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values, f"{key} never reached the logger"
    after = [float(r["prune/filters_after"]) for r in rows if r.get("prune/filters_after")]
    assert after == [layer["after"] for layer in summary["layers"]]


def test_layers_pruned_in_one_epoch_are_each_logged(tmp_path):
    pl.seed_everything(0)
    logger = CSVLogger(tmp_path, name="run")
    callback = fast_callback(start_epoch=0, finetune_epochs=0)
    fast_trainer(tmp_path, [callback], logger=logger, max_epochs=1, limit_train_batches=1).fit(
        tiny_classifier(), datamodule=tiny_data()
    )
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        macs = [int(float(r["prune/macs"])) for r in csv.DictReader(f) if r.get("prune/macs")]
    assert macs == [h["macs"] for h in callback.history]


def test_fast_dev_run_prunes_what_epoch_0_schedules(tmp_path):
    module = tiny_classifier()
    fast_trainer(tmp_path, [fast_callback(start_epoch=0, finetune_epochs=0)], fast_dev_run=True).fit(
        module, datamodule=tiny_data()
    )
    assert [s[0] for s in steps(module)] == LAYERS["vgg11"]
    with pytest.warns(UserWarning, match="fast_dev_run runs one epoch.*needs 3 epochs"):
        fast_trainer(tmp_path, [fast_callback()], fast_dev_run=True).fit(tiny_classifier(), datamodule=tiny_data())


# -- bad input fails before any training time -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": 0}, "b=0 must be > 0"),
        ({"b": -1.0}, "b=-1.0 must be > 0"),
        ({"num_samples": 0}, "num_samples=0 must be >= 1"),
        ({"min_keep": 0}, "min_keep=0 must be a count >= 1 or a fraction"),
        ({"min_keep": 1.5}, "min_keep=1.5"),
        ({"min_keep": 0.0}, "min_keep=0.0"),
        ({"min_keep": True}, "min_keep=True"),
        ({"layers": []}, "selects nothing"),
        ({"decision": "best"}, "decision='best' is unknown: use 'reward', 'greedy' or 'budget'"),
        ({"drop_from": "end"}, "drop_from='end' is unknown: use 'start' or 'layer'"),
        ({"decision_counts": 1}, "decision_counts=1 must be >= 2"),
        ({"budget_schedule": "even"}, "budget_schedule='even' is unknown: use 'linear', 'macs' or 'shared'"),
        ({"calibration_batches": -1}, "calibration_batches=-1 must be >= 0"),
        ({"recovery_steps": -1}, "recovery_steps=-1 must be >= 0"),
        ({"recovery_lr": 0.0}, "recovery_lr=0.0 must be > 0"),
        ({"recovery_batches": 0}, "recovery_batches=0 must be >= 1"),
        ({"p_star_draws": 0}, "p_star_draws=0 must be >= 1"),
        ({"l1_prior": -0.5}, "l1_prior=-0.5 must be >= 0"),
        ({"holdout_batches": -1}, "holdout_batches=-1 must be >= 0"),
        ({"recovery_steps": 5, "decision": "greedy"}, "decision='greedy' scores none: use decision='reward'"),
        ({"min_keep": 1.0}, r"min_keep=1.0 .*1.0 would keep every filter \(pass min_keep=1"),
        ({"num_samples": 2.5}, r"num_samples=2.5 must be >= 1 \(an int\)"),
        ({"layers": "features.0"}, r"layers='features.0' must be a list .*layers=\['features.0'\]"),
        ({"b": float("inf")}, "b=inf must be > 0 and finite"),
        ({"monitor_mode": "best"}, "monitor_mode='best' is unknown"),
        ({"metric": "miou"}, "metric='miou' must be None, a torchmetrics Metric or a callable"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        RLPruneCallback(**kwargs)


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
        (tiny_classifier(), {}, {"max_epochs": 2}, "needs max_epochs >= 3"),
        (tiny_classifier(), {}, {"max_epochs": 6, "max_steps": 4}, "max_steps=4 ends training before .* 7 steps"),
        (tiny_classifier(), {"monitor": "val_accuracy"}, {}, "'val_accuracy' is never logged.*val_loss, val_acc"),
        (tiny_classifier(), {}, {"limit_val_batches": 0}, "limit_val_batches=0"),
        (tiny_classifier(), {"holdout_batches": 16}, {}, "holdout_batches=16 needs .* after the 1 .* has 16"),
    ],
    ids=[
        "unknown-layer",
        "nothing-prunable",
        "min-keep-too-large",
        "max-epochs",
        "max-steps",
        "monitor",
        "no-val",
        "holdout",
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
    assert callback.history == [] and steps(trainer.lightning_module) == []


@pytest.mark.parametrize(
    ("changed", "match"), [({"b": 2.0}, "b=1.0 \\(now 2.0\\)"), ({"layers": ["features.4"]}, "layers=")]
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
    trainer = fast_trainer(tmp_path, [fast_callback()])
    with pytest.warns(UserWarning, match="cutting features.4 failed and was skipped .*forced failure"):
        trainer.fit(module, datamodule=tiny_data())
    assert steps(module) == []
    assert {k: v.shape for k, v in module.state_dict().items() if torch.is_tensor(v)} == shapes
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters()}
    assert _trained_batches(trainer) == 3 * 3  # every epoch trained
