"""RLPruneCallback: pruning inside `Trainer.fit` on every kind of network, determinism, the accuracy budget `b`
(each step's measured drop: kept, undone, or another step), `min_keep`, reporting, and the setup-time checks of
bad input."""

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
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune import DistributionOptions, ImageClassifier, RLOptions, RLPruneCallback, decision, surgery
from lightning_prune.measure import macs_at_stake
from lightning_prune.policy import min_keep_count


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
    assert [s["outcome"] for s in callback.steps] == ["kept"] and callback.steps[0]["epoch"] == 1
    assert [(r["step"], r["group"], r["name"]) for r in callback.history] == [
        (0, 0, LAYERS[name][0]),
        (0, 1, LAYERS[name][1]),
    ]


def test_same_seed_gives_same_plan(tmp_path):
    plans = []
    for run in range(2):
        pl.seed_everything(0)
        module = tiny_classifier()
        callback = fast_callback(init_keep=0.9, min_keep=0.1, agent_updates=3)
        fast_trainer(tmp_path / str(run), [callback], limit_train_batches=2).fit(module, datamodule=tiny_data())
        plans.append((steps(module), [h["keep_probs"] for h in callback.history], callback.steps))
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


class AtEpochStart(Callback):
    """At the start of epoch `epoch` a copy of the training state and of `prune`'s history: right after the
    pruning callback's step when listed after it, before the step when listed before it."""

    def __init__(self, epoch: int, prune: RLPruneCallback | None = None) -> None:
        self.epoch, self.prune = epoch, prune
        self.state: dict | None = None
        self.history: list[dict] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: ImageClassifier) -> None:
        if trainer.current_epoch == self.epoch:
            self.state = training_state(trainer, pl_module)
            self.history = copy.deepcopy(self.prune.history) if self.prune is not None else None


def _first_step(module: ImageClassifier, root, batch_size: int = 250, **kwargs) -> tuple[RLPruneCallback, AtEpochStart]:
    """The step of epoch 0 on `module` (both VGG-11 layers; keyword arguments go to the callback or its options),
    rewards on the first validation batch, the drop measured on the second at the start of epoch 1 (which may undo
    the step: `AtEpochStart` holds the history and plan right after it). BatchNorm layers are re-estimated on one
    training batch rather than eight."""
    arguments = {"b": 2.0, "layers": LAYERS["vgg11"], "finetune_epochs": 1}
    options = {"reward_batches": 1, "check_batches": 1, "calibration_batches": 1}
    for key, value in kwargs.items():
        (options if key in RL_OPTIONS else arguments)[key] = value
    callback = RLPruneCallback(**arguments, options=RLOptions(**options))
    after = AtEpochStart(0, callback)
    trainer = fast_trainer(root, [callback, after], max_epochs=2, limit_train_batches=1)
    trainer.fit(module, datamodule=tiny_data(batch_size=batch_size, augment=False))  # 500 validation images
    return callback, after


def _macs_after_pruning(module: ImageClassifier, root, b: float, seed: int) -> int:
    """MACs after the step of epoch 0 prunes two layers of a copy of `module`, with a short search (5 agent updates
    of 4 sampled masks, 8 decision counts)."""
    options = {"num_samples": 4, "agent_updates": 5, "decision_counts": 8}
    _, after = _first_step(copy.deepcopy(module), root, b=b, seed=seed, **options)
    return after.history[-1]["macs"]


def test_larger_budget_removes_more(tmp_path, trained_vgg):
    """Over fixed seeds, b = 2 (accuracy points the network may lose) removes more MACs than b = 0.5. One seed
    alone is noisy at this size: few sampled masks decide, and a chance accuracy gain counts 1/b times."""
    macs = {b: [_macs_after_pruning(trained_vgg, tmp_path / f"{b}-{s}", b, s) for s in range(3)] for b in (0.5, 2.0)}
    assert sum(macs[2.0]) < sum(macs[0.5]), macs


def test_reward_decision_removes_the_least_likely_filters(tmp_path, trained_vgg):
    """The reward decision keeps the agent's most likely filters (how many is what the reward picks), scored
    against the linear budget schedule."""
    _, after = _first_step(copy.deepcopy(trained_vgg), tmp_path, init_keep=0.6)
    history = after.history
    assert any(h["after"] < h["before"] for h in history)
    assert [h["budget"] for h in history] == [1.0, 2.0]  # linear schedule: b * i / L for 2 layers
    removed = {name: idxs for name, _, idxs in after.state["plan"]}
    for record in history:
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
    callback, after = _first_step(module, tmp_path, budget_schedule="macs")
    assert callback.stakes == stakes and callback.state_dict()["stakes"] == stakes
    assert [h["budget"] for h in after.history] == pytest.approx([2.0 * stakes[0] / sum(stakes), 2.0])


def test_l1_prior_starts_the_agents_from_the_l1_ranking(tmp_path, trained_vgg):
    """With a strong `l1_prior` and an agent that barely learns, the cut removes the layer's lowest-norm filters."""
    module = copy.deepcopy(trained_vgg)
    first = LAYERS["vgg11"][0]
    norms = module.model.get_submodule(first).weight.detach().abs().sum((1, 2, 3))
    callback, after = _first_step(module, tmp_path, layers=[first], init_keep=0.6, l1_prior=5.0, agent_lr=1e-6)
    record = after.history[0]
    assert torch.equal(torch.tensor(record["keep_probs"]).argsort(), norms.argsort())
    removed = [idxs for name, _, idxs in after.state["plan"] if name == first]
    if removed:  # the cut, if any, takes the lowest norms
        assert sorted(removed[0]) == norms.argsort()[: len(removed[0])].sort().values.tolist()
    assert callback.hparams["l1_prior"] == 5.0


def test_budget_decision_keeps_each_cut_within_its_allowance(tmp_path, trained_vgg):
    """`decision="budget"`: each layer keeps the fewest filters whose score, on the reward batches with the
    earlier layers of the step already cut, is within the layer's linear allowance of the step's reference `p*`
    (the unpruned score of its first layer)."""
    callback, after = _first_step(copy.deepcopy(trained_vgg), tmp_path, b=4.0, decision="budget", init_keep=0.6)
    history = after.history
    assert history[0]["reference"] == callback.p_star
    for i, record in enumerate(history):
        assert record["budget"] == pytest.approx(4.0 * (i + 1) / len(history))
        if record["after"] < record["before"]:
            assert callback.p_star - record["decision_acc"] <= record["budget"] + 1e-9
    assert any(r["after"] < r["before"] for r in history)  # b = 4 points lets filters go


@pytest.mark.parametrize("min_keep", [3, 0.5])
def test_min_keep_is_a_floor_of_the_unpruned_width_that_later_steps_skip(tmp_path, min_keep):
    """The first step cuts every group to its floor; the next one finds every group there (a share of the
    unpruned width, not of the current one) and removes nothing, which ends pruning."""
    pl.seed_everything(0)
    module = tiny_classifier()
    callback = fast_callback(init_keep=0.02, min_keep=min_keep, start_epoch=0)
    fast_trainer(tmp_path, [callback], max_epochs=3, limit_train_batches=1).fit(module, datamodule=tiny_data())
    assert callback.widths == {"features.4": 16, "features.8": 32}
    assert [h["before"] for h in callback.history] == [16, 32]
    assert [h["after"] for h in callback.history] == [min_keep_count(min_keep, h["before"]) for h in callback.history]
    assert [s["outcome"] for s in callback.steps] == ["kept", "removed nothing"]
    assert callback.steps[1]["layers"] == [2, 2] and callback.finished
    assert [module.model.get_submodule(n).out_channels for n in LAYERS["vgg11"]] == [
        h["after"] for h in callback.history
    ]


def test_summary_file_and_logger_metrics(tmp_path):
    pl.seed_everything(0)
    logger = CSVLogger(tmp_path, name="run")
    callback = fast_callback()
    trainer = fast_trainer(tmp_path, [callback], logger=logger, log_every_n_steps=1)
    trainer.fit(tiny_classifier(), datamodule=tiny_data())

    summary = json.loads((tmp_path / "run" / "version_0" / "pruning_summary.json").read_text())
    assert summary["b"] == 50.0
    for key in ("baseline", "final"):
        assert set(summary[key]) == {"params", "macs", "val_acc", "check"}
        assert isinstance(summary[key]["val_acc"], float) and isinstance(summary[key]["check"], float)
    assert summary["baseline"]["check"] == callback.dense
    assert summary["final"]["val_acc"] == summary["final"]["check"]  # no monitor: the callback's metric
    assert summary["final"]["macs"] < summary["baseline"]["macs"]
    assert [layer["name"] for layer in summary["layers"]] == LAYERS["vgg11"]
    assert all(layer["after"] < layer["before"] for layer in summary["layers"])
    assert summary["steps"] == json.loads(json.dumps(callback.steps))
    assert [(s["epoch"], s["layers"], s["outcome"]) for s in summary["steps"]] == [(1, [0, 2], "kept")]

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
    callback = fast_callback(start_epoch=0)
    fast_trainer(tmp_path, [callback], logger=logger, max_epochs=2, limit_train_batches=1).fit(
        tiny_classifier(), datamodule=tiny_data()
    )
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        macs = [int(float(r["prune/macs"])) for r in csv.DictReader(f) if r.get("prune/macs")]
    assert macs == [h["macs"] for h in callback.history] and len(macs) == 2


def test_fast_dev_run_prunes_what_epoch_0_schedules(tmp_path):
    module = tiny_classifier()
    with pytest.warns(UserWarning, match="fast_dev_run runs one epoch.*needs 2 epochs"):
        fast_trainer(tmp_path, [fast_callback(start_epoch=0)], fast_dev_run=True).fit(module, datamodule=tiny_data())
    assert [s[0] for s in steps(module)] == LAYERS["vgg11"]
    with pytest.warns(UserWarning, match="fast_dev_run runs one epoch.*needs 3 epochs"):
        fast_trainer(tmp_path, [fast_callback()], fast_dev_run=True).fit(tiny_classifier(), datamodule=tiny_data())


# -- steps: measured after fine-tuning, undone above b, repeated below it ---------------------------------------

#: An aggressive step (every filter below keep probability 0.5: each layer cut to half its width) on the trained
#: VGG, at epoch 1 of 3, measured at epoch 2 on the 400 validation images after the reward batch; b = 0.1.
UNDONE = {"b": 0.1, "start_epoch": 1, "init_keep": 0.02, "min_keep": 0.5, "check_batches": None}


@pytest.fixture(scope="module")
def undone_run(tmp_path_factory, trained_vgg):
    """The run of `UNDONE` with a checkpoint every epoch, and the training state before its step, right after it
    and right after its measurement."""
    root = tmp_path_factory.mktemp("undone")
    module = copy.deepcopy(trained_vgg)
    callback = fast_callback(**UNDONE)
    before, after, measured = AtEpochStart(1), AtEpochStart(1, callback), AtEpochStart(2, callback)
    saving = ModelCheckpoint(dirpath=root / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer = fast_trainer(
        root, [before, callback, after, measured, saving], enable_checkpointing=True, limit_train_batches=1
    )
    trainer.fit(module, datamodule=tiny_data(batch_size=100, augment=False))
    return module, callback, before, after, measured, root / "ckpt"


def test_a_step_whose_measured_drop_exceeds_b_is_undone(undone_run, trained_vgg):
    module, callback, before, after, measured, _ = undone_run
    # the step cut both layers to half
    assert [s[0] for s in after.state["plan"]] == LAYERS["vgg11"]
    assert [(r["step"], r["group"], r["before"], r["after"]) for r in after.history] == [(0, 0, 16, 8), (0, 1, 32, 16)]
    # its drop, measured after an epoch of fine-tuning, is over b: undone
    (step,) = callback.steps
    assert (step["epoch"], step["allowance"], step["from_drop"], step["layers"]) == (1, 0.1, 0.0, [0, 0])
    assert step["removed"] == {"features.4": 8, "features.8": 16}  # its records went with its cuts
    assert step["outcome"] == "undone" and step["drop"] > callback.b and step["increment"] == step["drop"]
    assert callback.history == [] and callback.scale == 0.5
    assert callback.finished  # no epochs left for another step
    # back to the state before the step: weights, buffers, plan, optimizer, scheduler
    assert measured.state.keys() == before.state.keys()
    for key in before.state:
        assert same(measured.state[key], before.state[key]), f"{key} not restored"
    assert measured.history == [] and steps(module) == []
    assert {k: v.shape for k, v in module.state_dict().items() if torch.is_tensor(v)} == {
        k: v.shape for k, v in trained_vgg.state_dict().items() if torch.is_tensor(v)
    }
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in trained_vgg.parameters())
    module.eval()
    with torch.no_grad():
        assert module(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_a_step_measured_after_a_resume_cannot_be_undone_and_is_kept_with_a_warning(undone_run, tmp_path):
    """The state before a step is held in memory only: resumed between the step and its measurement, the run
    measures the same drop, over b, and keeps the step."""
    _, uninterrupted, *_, ckpt = undone_run
    callback = fast_callback(**UNDONE)
    module = tiny_classifier()
    trainer = fast_trainer(tmp_path, [callback], limit_train_batches=1)
    with pytest.warns(UserWarning, match="step of epoch 1 costs .* over b=0.1, but the run was resumed"):
        trainer.fit(module, datamodule=tiny_data(batch_size=100, augment=False), ckpt_path=ckpt / "epoch=1.ckpt")
    (step,) = callback.steps
    assert step["outcome"] == "kept (could not be undone)"
    assert step["drop"] == pytest.approx(uninterrupted.steps[0]["drop"])
    assert [s[0] for s in steps(module)] == LAYERS["vgg11"] and len(callback.history) == 2


def test_with_a_generous_b_steps_repeat_each_kept_within_b(tmp_path, trained_vgg):
    """b = 50: each step cuts what its agents push below keep probability 0.5, its drop is measured after an epoch,
    and the next step is allowed what is left of b times the last forecast's overstatement, until no epochs are
    left. Every kept step's measured drop is within b, groups shrink step by step, never below their floor."""
    pl.seed_everything(0)  # the training order decides the drops: the same whatever ran before
    module = copy.deepcopy(trained_vgg)
    callback = fast_callback(b=50.0, start_epoch=0, init_keep=0.5, min_keep=0.1, check_batches=None)
    fast_trainer(tmp_path, [callback], max_epochs=4, limit_train_batches=1).fit(
        module, datamodule=tiny_data(batch_size=100, augment=False)
    )
    kept = [s for s in callback.steps if s["outcome"] == "kept"]
    assert len(callback.steps) >= 2 and len(kept) >= 2 and callback.finished
    scale, drop, records = 1.0, 0.0, []
    for index, step in enumerate(callback.steps):
        assert step["epoch"] == index and step["from_drop"] == drop
        assert step["allowance"] == pytest.approx(scale * (callback.b - drop))
        assert step["increment"] == pytest.approx(step["drop"] - drop)
        if step["outcome"] == "kept":
            assert step["drop"] <= callback.b
            scale, drop = decision.forecast_scale(step["allowance"], step["increment"]), step["drop"]
            first, end = step["layers"]
            assert first == len(records) and end > first  # the step's records follow the kept ones
            records += callback.history[first:end]
            assert all(r["step"] == index for r in callback.history[first:end])
        else:
            assert step["outcome"] == "undone" and step["drop"] > callback.b
            scale /= 2
    assert records == callback.history
    widths = {}
    for record in callback.history:
        assert record["before"] == widths.get(record["name"], callback.widths[record["name"]])
        assert min_keep_count(0.1, callback.widths[record["name"]]) <= record["after"] < record["before"]
        widths[record["name"]] = record["after"]
    assert {n: module.model.get_submodule(n).out_channels for n in LAYERS["vgg11"]} == widths


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
        ({"b": 0}, "b=0 must be > 0"),
        ({"b": -1.0}, "b=-1.0 must be > 0"),
        ({"b": float("inf")}, "b=inf must be > 0 and finite"),
        ({"finetune_epochs": 0}, r"finetune_epochs=0 must be >= 1 \(an int\): each step's drop is measured"),
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
            r"options=DistributionOptions\(.*\) must be a lightning_prune.options.RLOptions",
        ),
        ({"num_samples": 0}, r"options.num_samples=0 must be >= 1 \(an int\)"),
        ({"num_samples": 2.5}, r"options.num_samples=2.5 must be >= 1 \(an int\)"),
        ({"agent_updates": 0}, r"options.agent_updates=0 must be >= 1 \(an int\)"),
        ({"decision": "best"}, "options.decision='best' is unknown: use 'reward', 'greedy' or 'budget'"),
        ({"decision_counts": 1}, "options.decision_counts=1 must be >= 2"),
        ({"budget_schedule": "even"}, "options.budget_schedule='even' is unknown: use 'linear', 'macs' or 'shared'"),
        ({"reward": "gain"}, "options.reward='gain' is unknown"),
        ({"init_keep": 1.0}, r"options.init_keep=1.0 must be in \(0, 1\)"),
        ({"l1_prior": -0.5}, "options.l1_prior=-0.5 must be >= 0"),
        ({"agent_lr": 0.0}, "options.agent_lr=0.0 must be > 0"),
        ({"entropy_coef": -0.1}, "options.entropy_coef=-0.1 must be >= 0"),
        ({"check_batches": 0}, r"options.check_batches=0 must be >= 1 \(an int; None: the rest of the split\)"),
        ({"max_cache_mb": -1.0}, "options.max_cache_mb=-1.0 must be >= 0"),
        ({"reward_batches": 0}, r"options.reward_batches=0 must be >= 1 \(an int\)"),
        ({"calibration_batches": -1}, "options.calibration_batches=-1 must be >= 0"),
        ({"monitor_mode": "best"}, "options.monitor_mode='best' is unknown"),
        ({"unpack_batch": 3}, "options.unpack_batch=3 must be callable"),
        ({"ignore_index": "255"}, "options.ignore_index='255' must be an int or None"),
        ({"ignore_index": 255, "metric": lambda p, t: 0.0}, "options.ignore_index applies to the default metric only"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        _constructed(**kwargs)


def test_options_are_the_callbacks_settings_and_its_logged_hyperparameters():
    callback = RLPruneCallback(b=2.0, options=RLOptions(agent_updates=3, check_batches=2, unpack_batch=lambda b: b))
    assert (callback.agent_updates, callback.check_batches, callback.reward_batches) == (3, 2, 4)
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
        (tiny_classifier(), {}, {"max_epochs": 2}, "needs max_epochs >= 3"),
        (tiny_classifier(), {}, {"max_epochs": 6, "max_steps": 4}, "max_steps=4 ends training before .* 7 steps"),
        (tiny_classifier(), {"monitor": "val_accuracy"}, {}, "'val_accuracy' is never logged.*val_loss, val_acc"),
        (tiny_classifier(), {}, {"limit_val_batches": 0}, "limit_val_batches=0"),
        (
            tiny_classifier(),
            {"check_batches": 16},
            {},
            r"after the 1 the search scores \(options.reward_batches\).*at least 17 batches, but it has 16.*"
            r"lower options.reward_batches / options.check_batches",
        ),
        (tiny_classifier(), {"reward_batches": 16}, {}, "at least 17 batches, but it has 16"),
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
    assert callback.history == [] and steps(trainer.lightning_module) == []


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
    assert [(r["before"], r["after"]) for r in callback.history] == [(16, 16), (32, 32)]
    assert [s["outcome"] for s in callback.steps] == ["removed nothing"] and callback.finished
    assert {k: v.shape for k, v in module.state_dict().items() if torch.is_tensor(v)} == shapes
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters()}
    assert _trained_batches(trainer) == 3 * 3  # every epoch trained
