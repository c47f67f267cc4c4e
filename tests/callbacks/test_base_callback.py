"""Tests of `lightning_prune.callbacks.base.PruningCallback`, the base of both callbacks: its checks, the state of a
reused instance, several pruning callbacks on one Trainer and non-finite scores (through
`DistributionPruneCallback` on a tiny VGG-11 and the embedded Fashion-MNIST)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import LAYERS, fast_callback, fast_trainer, tiny_classifier, tiny_data
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune import DistributionOptions, DistributionPruneCallback, RLOptions, RLPruneCallback


def _callback(**kwargs) -> DistributionPruneCallback:
    """One step at epoch 0 that cuts both layers, on one batch of each split."""
    options = DistributionOptions(num_samples=2, updates=1, elite_size=1, reward_batches=1, calibration_batches=1)
    arguments = {"target": 0.3, "step_size": 0.3, "layers": LAYERS["vgg11"], "options": options, **kwargs}
    return DistributionPruneCallback(**arguments)


def _fit(root, callback, module=None, **kwargs):
    pl.seed_everything(0, verbose=False)
    module = module or tiny_classifier()
    trainer = fast_trainer(root, [callback], max_epochs=1, limit_train_batches=1, **kwargs)
    trainer.fit(module, datamodule=tiny_data())
    return module


def nan_metric(preds: torch.Tensor, target: torch.Tensor) -> float:
    return math.nan


def test_a_metric_that_is_nan_on_the_unpruned_model_fails_at_setup_naming_it(tmp_path) -> None:
    with pytest.raises(MisconfigurationException, match="metric=nan_metric gave nan .*score not finite"):
        _fit(tmp_path, _callback(metric=nan_metric))


def test_samples_whose_score_is_not_finite_are_refused_with_a_warning_and_nothing_is_cut(tmp_path) -> None:
    calls = []

    def finite_at_setup_only(preds: torch.Tensor, target: torch.Tensor) -> float:
        calls.append(1)
        return 0.5 if len(calls) == 1 else math.nan

    callback = _callback(metric=finite_at_setup_only)
    with pytest.warns(UserWarning, match="candidates of groups features.4, features.8 gave outputs or a score"):
        module = _fit(tmp_path, callback)
    assert callback.done and not callback.history and not module.plan.steps


def test_a_callback_fitting_again_without_a_checkpoint_starts_a_new_run(tmp_path) -> None:
    callback = _callback()
    first = _fit(tmp_path, callback)
    history = list(callback.history)
    second = _fit(tmp_path, callback)
    assert second.plan.state() == first.plan.state() and second.plan.steps
    assert callback.history == history and callback.done


def test_the_base_resets_its_run_state_and_calls_the_subclass_reset_hook(tmp_path) -> None:
    callback = _callback()
    callback.groups, callback.history, callback.baseline, callback.done = ["x"], [{}], {"macs": 1}, True
    reset = []
    callback._reset = lambda: reset.append(True)
    trainer = fast_trainer(tmp_path, [callback])
    callback.setup(trainer, tiny_classifier(), "fit")
    assert (callback.groups, callback.history, callback.baseline, reset) == ([], [], None, [True])


def test_two_callbacks_of_one_kind_on_a_trainer_fail_at_setup(tmp_path) -> None:
    trainer = fast_trainer(tmp_path, [_callback()])
    trainer.callbacks.append(_callback())  # Lightning refuses the second when the Trainer is built with both
    with pytest.raises(MisconfigurationException, match="one DistributionPruneCallback per Trainer; list all layers"):
        trainer.fit(tiny_classifier(), datamodule=tiny_data())


def test_two_kinds_of_pruning_callback_on_a_trainer_warn(tmp_path) -> None:
    options = RLOptions(num_samples=2, agent_updates=1, reward_batches=1, calibration_batches=1, check_batches=1)
    rl = RLPruneCallback(b=50.0, layers=LAYERS["vgg11"], options=options)
    distribution = _callback()
    trainer = fast_trainer(tmp_path, [distribution, rl])
    with pytest.warns(UserWarning, match="DistributionPruneCallback and RLPruneCallback on the same Trainer may prune"):
        distribution.setup(trainer, tiny_classifier(), "fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "0.5"}, r"target='0.5' must be a number"),
        ({"step_size": True}, r"step_size=True must be a number"),
        ({"options": {"alpha": True, "lr": "0.1"}}, r"options.alpha=True, options.lr='0.1' must be"),
        ({"start_epoch": True}, r"start_epoch=True must be >= 0 \(an int\)"),
        ({"min_keep": True}, r"min_keep=True must be a count"),
    ],
)
def test_numbers_given_as_strings_or_bools_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        if "options" in kwargs:  # options validate themselves when they are built
            kwargs = {**kwargs, "options": DistributionOptions(**kwargs["options"])}
        DistributionPruneCallback(**kwargs)


def test_two_rl_callbacks_are_refused_by_lightning_which_points_to_the_callback_s_documentation(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `RLPruneCallback`"):
        fast_trainer(tmp_path, [fast_callback(), fast_callback(layers=["features.0"])])
    assert "One `RLPruneCallback` per Trainer" in RLPruneCallback.__doc__


def test_the_package_s_own_parts_fit_together_at_their_defaults() -> None:
    from lightning_prune.data import EmbeddedFashionMNISTDataModule
    from lightning_prune.engine.data import batch_count

    dm = EmbeddedFashionMNISTDataModule(num_workers=0)
    dm.setup("fit")
    options = RLOptions()
    assert batch_count(dm.val_dataloader()) >= options.reward_batches + 1  # the probes' held-out batches
