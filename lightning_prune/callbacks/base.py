"""What both pruning callbacks share: setup checks, the data candidates are scored on, the cut, DDP, state.

`PruningCallback` orchestrates and holds no pruning math: its subclasses decide what to remove
(`RLPruneCallback` with an agent per layer, in measured steps; `DistributionPruneCallback` all groups at once
to a target), and it
- checks everything before any training: at `setup` what needs no data (validation on, one callback of its kind
  per Trainer, `monitor`), at `on_fit_start` (after the module's own `setup`, which may build the datasets) the
  validation data, the example input, that `forward` traces, that batches unpack and the metric can be computed
  from the outputs, the channel groups and the schedule;
- makes the module carry its pruning plan (`plan.attach`), so its checkpoints hold the pruned structure;
- splits scoring work across DDP ranks and applies rank 0's decision on every rank;
- cuts (surgery, optimizer remap, DDP rebuild, BatchNorm re-estimation), skipping a cut that fails with the
  model, optimizer and plan as they were;
- keeps the resumable state (random streams included) and writes the summary.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.seed import isolate_rng

from lightning_prune.callbacks import history
from lightning_prune.callbacks.options import ScoringOptions, check, is_int, is_min_keep
from lightning_prune.callbacks.session import Session
from lightning_prune.engine import data, plan, scoring, surgery
from lightning_prune.engine.metric import MetricSpec, Score, Unpack, calibrate, make_score, unpack_pair
from lightning_prune.io import tracking

#: The attributes every pruning callback saves in checkpoints.
RUN_STATE = ("groups", "widths", "history", "baseline")


class PruningCallback(Callback):
    """Base of the pruning callbacks (see the module docstring); subclasses implement `_setup_groups`, `_due`,
    `_step`, `_summary` and their own `_state`.

    Args:
        layers: layer names or fnmatch patterns selecting the groups to prune, in this order (None: every
            prunable convolution group, lowest first).
        start_epoch: epoch before which the first pruning step is taken (0 prunes the model as given).
        finetune_epochs: training epochs between two pruning steps.
        min_keep: filters every group keeps: a count (int >= 1) or a fraction of the group (float in (0, 1)).
        metric: what candidates are scored on: None (top-1 agreement of the argmax over dim 1 with integer
            targets: accuracy, or pixel accuracy for dense outputs), a torchmetrics `Metric`, or a callable
            `(preds, target) -> float`; higher is better, in points (a metric valued in [0, 1] counts x100).
        monitor: a logged metric reported as the baseline and final result (read for reporting only).
        seed: seeds the search; the same seed (and training) gives the same result.
        options: the scoring settings (`lightning_prune.ScoringOptions` or a subclass).
    """

    #: The options class the callback takes.
    options_type: type[ScoringOptions] = ScoringOptions
    #: Constructor arguments (besides `metric` and `options`) reported as the run's hyper-parameters.
    arguments: tuple[str, ...] = ("layers", "start_epoch", "finetune_epochs", "min_keep", "monitor", "seed")
    #: Constructor arguments a resumed run must share with the run that saved the checkpoint.
    resume_args: tuple[str, ...] = ("layers",)
    #: The subclass's attributes a checkpoint saves and a resumed run restores (besides `RUN_STATE`).
    run_state: tuple[str, ...] = ()

    def __init__(
        self,
        layers: list[str] | None,
        start_epoch: int,
        finetune_epochs: int,
        min_keep: int | float,
        metric: MetricSpec,
        monitor: str | None,
        seed: int,
        options: ScoringOptions,
        checks: Sequence[tuple[bool, str]] = (),
    ) -> None:
        super().__init__()
        kind = self.options_type.__name__
        check(type(self).__name__, [
            (isinstance(options, self.options_type), f"options={options!r} must be a lightning_prune.{kind}"),
            *checks,
            (is_int(start_epoch) and start_epoch >= 0, f"start_epoch={start_epoch!r} must be >= 0 (an int)"),
            (is_int(finetune_epochs) and finetune_epochs >= 0,
             f"finetune_epochs={finetune_epochs!r} must be >= 0 (an int)"),
            (layers is None or (isinstance(layers, (list, tuple)) and all(isinstance(x, str) for x in layers)),
             f"layers={layers!r} must be a list of layer names or patterns (e.g. layers=[{layers!r}]) or None"),
            (layers is None or len(layers) > 0, "layers=[] selects nothing: pass None to prune every group"),
            (is_min_keep(min_keep),
             f"min_keep={min_keep!r} must be a count >= 1 or a fraction in (0, 1): an int counts filters, a float "
             "is a fraction, so 1.0 would keep every filter (pass min_keep=1 to keep one filter per group)"),
            (metric is None or callable(metric),
             f"metric={metric!r} must be None, a torchmetrics Metric or a callable (preds, target) -> float"),
            (options.ignore_index is None or metric is None,
             "options.ignore_index applies to the default metric only: pass it to your metric instead (e.g. "
             "MulticlassJaccardIndex(..., ignore_index=...))"),
            (is_int(seed), f"seed={seed!r} must be an int"),
        ])  # fmt: skip
        self.layers = list(layers) if layers is not None else None
        self.start_epoch, self.finetune_epochs, self.min_keep = start_epoch, finetune_epochs, min_keep
        self.metric, self.monitor, self.seed, self.options = metric, monitor, seed, options
        self.groups: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] | None = None
        self.input_shape: list[int] | None = None
        self._saved_args: dict[str, Any] | None = None
        self._score: Score | None = None
        self._monitor_checked = False

    # -- what subclasses provide -------------------------------------------------------------------------

    def _setup_groups(self, trainer: pl.Trainer, network: torch.nn.Module, inputs: torch.Tensor, graph: Any) -> None:
        """Check that the run fits the chosen `self.groups` (whose unpruned widths are `self.widths`)."""

    def _schedule_epochs(self) -> int:
        """Epochs the whole schedule needs."""
        raise NotImplementedError

    def _due(self, trainer: pl.Trainer) -> bool:
        """Whether a pruning step is due at the current epoch."""
        raise NotImplementedError

    def _step(self, trainer: pl.Trainer, run: Session) -> None:
        """Take the pruning step due now."""
        raise NotImplementedError

    def _summary(self, trainer: pl.Trainer, run: Session) -> dict[str, Any] | None:
        """The callback's part of the run's summary, with at least the final score (`final`); the base adds the
        cost, the baseline and the layers (None: nothing was pruned)."""
        raise NotImplementedError

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments and options as plain data (the loggers' run config)."""
        options = dataclasses.fields(self.options)
        settings = {f.name: getattr(self.options, f.name) for f in options if f.name != "unpack_batch"}
        return {"metric": _describe(self.metric), **{k: getattr(self, k) for k in self.arguments}, **settings}

    # -- setup: every check before any training time is spent ----------------------------------------------

    @property
    def unpack(self) -> Unpack:
        return self.options.unpack_batch or unpack_pair

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The checks that need no data. Lightning calls callbacks' `setup` before the module's own (which may
        build the datasets), so everything that reads data waits for `on_fit_start`."""
        if stage != "fit":
            return
        self._reset_run()  # a resumed run's state is loaded after setup
        self._check_trainer(trainer)
        declared = _declared_metrics(trainer, pl_module)
        if self.monitor is not None and declared is not None and self.monitor not in declared:
            raise MisconfigurationException(
                f"{type(self).__name__}: monitor={self.monitor!r} is never logged: {type(pl_module).__name__}'s "
                f"validation logs {', '.join(declared)}. Set `monitor` to one of them, or monitor=None."
            )
        plan.carry(pl_module)  # a resumed run loads its pruned weights before `on_fit_start`

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The checks that read data (after the module's `setup`, and after a resumed run's state is loaded)."""
        data.loader(trainer, "val")
        inputs = self._example_input(trainer, pl_module)
        saved = plan.plan_of(pl_module)
        self.input_shape = list(saved.input_shape) if saved is not None else [1, *inputs.shape[1:]]
        plan.attach(pl_module, self.input_shape)
        network = plan.network_of(pl_module)
        inputs = surgery.example_input(network, self.input_shape)
        try:
            graph = surgery.build_graph(network, inputs)
        except Exception as err:  # noqa: BLE001 - any tracing failure gets the same advice
            raise MisconfigurationException(
                f"{type(self).__name__}: {type(pl_module).__name__}.forward cannot be traced with an example input "
                f"of shape {self.input_shape} ({type(err).__name__}: {err}). Set `example_input_array` to an input "
                "`forward` accepts, and keep `forward` to the network's computation (no logging or loss)."
            ) from err
        self._check_metric(trainer, pl_module)
        if not self.groups:  # a resumed run keeps the groups it started with
            chosen = self._choose_groups(network, inputs, graph)
            self.groups, self.widths = [g.name for g in chosen], {g.name: g.size for g in chosen}
        self._setup_groups(trainer, network, inputs, graph)
        self._check_schedule(trainer)
        tracking.log_hyperparams(trainer, self.hparams)

    def _reset_run(self) -> None:
        """Start from an empty run (the same instance may fit again); subclasses reset theirs in `_reset`."""
        self.groups, self.history, self.baseline, self.input_shape = [], [], None, None
        self.widths: dict[str, int] = {}  # each group's unpruned width
        self._score, self._monitor_checked = None, False
        self._reset()

    def _reset(self) -> None:
        """Reset the subclass's own run state (what `_state` saves) to that of a new run."""

    def _check_trainer(self, trainer: pl.Trainer) -> None:
        """Validation is on, and this is the Trainer's only pruning callback of its kind."""
        name = type(self).__name__
        if trainer.limit_val_batches == 0:
            raise MisconfigurationException(
                f"{name}: limit_val_batches=0 turns validation off, but candidates are scored on the validation "
                "split. Keep limit_val_batches > 0."
            )
        pruners = [cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)]
        if sum(type(cb) is type(self) for cb in pruners) > 1:
            raise MisconfigurationException(
                f"{name}: one {name} per Trainer; list all layers in one callback's `layers`."
            )
        others = sorted({type(cb).__name__ for cb in pruners if type(cb) is not type(self)})
        if others and pruners[0] is self:
            rank_zero_warn(
                f"{name} and {', '.join(others)} on the same Trainer may prune the same layers: give each "
                "callback its own `layers`, or use one of them."
            )

    def _choose_groups(self, network: torch.nn.Module, inputs: torch.Tensor, graph: Any) -> list[surgery.ChannelGroup]:
        """The groups `layers` selects that survive a dry-run cut; the ones left whole are named in a warning.

        Raises:
            MisconfigurationException: a `layers` entry matches nothing, or nothing is left to prune.
        """
        name = type(self).__name__
        try:
            passing, skipped = surgery.candidate_groups(network, inputs, self.layers, graph)
        except ValueError as err:
            raise MisconfigurationException(f"{name}: {err}") from err
        reasons = "; ".join(f"{group}: {why}" for group, why in skipped.items())
        # The layer producing the output is never pruned, as expected: no warning about it.
        unexpected = {group: why for group, why in skipped.items() if not why.endswith("keeps all its outputs")}
        if not passing:
            raise MisconfigurationException(
                f"{name}: {type(network).__name__} has no prunable convolution channels (no Conv2d whose output "
                f"feeds another layer and can be cut){': ' + reasons if reasons else ''}. Use a convolutional "
                "network, or select other `layers`."
            )
        if unexpected:
            shown = "; ".join(f"{group}: {why}" for group, why in unexpected.items())
            rank_zero_warn(f"{name}: these channel groups are left whole: {shown}")
        return passing

    def _example_input(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """`example_input_array`, else the inputs of the first training batch."""
        example = pl_module.example_input_array
        if example is None:
            batch = next(iter(data.drawn_batches(data.loader(trainer, "train"), 1)), None)
            if batch is None:
                raise MisconfigurationException(f"{type(self).__name__}: the training data is empty.")
            example = self._unpacked(batch)[0]
        if not torch.is_tensor(example) or example.dim() < 2:
            raise MisconfigurationException(
                f"{type(self).__name__}: the example input must be one batched tensor (B, C, ...), got "
                f"{type(example).__name__}. Set `example_input_array` on {type(pl_module).__name__} to such a "
                "tensor, or set `options.unpack_batch` so that the batch's inputs are one."
            )
        return example

    def _unpacked(self, batch: Any) -> tuple[Any, Any]:
        try:
            return self.unpack(batch)
        except Exception as err:  # noqa: BLE001 - any failure to unpack gets the same advice
            name = (
                "options.unpack_batch"
                if self.options.unpack_batch is not None
                else "the default unpack (an (inputs, target) pair)"
            )
            raise MisconfigurationException(
                f"{type(self).__name__}: {name} cannot split a batch into (inputs, target): {err}. Pass "
                "`options=...Options(unpack_batch=f)` with f a function batch -> (inputs, target), e.g. "
                "`lambda b: (b['image'], b['mask'])`."
            ) from err

    def _check_metric(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One validation batch through `forward` and the metric: both must work before training starts."""
        batch = next(iter(data.drawn_batches(data.loader(trainer, "val"), 1)), None)
        if batch is None:
            raise MisconfigurationException(f"{type(self).__name__}: the validation data is empty.")
        x, y = self._unpacked(batch)
        x, y = move_data_to_device(x, pl_module.device), move_data_to_device(y, pl_module.device)
        score = make_score(self.metric, self.options.ignore_index)
        network = plan.network_of(pl_module)
        if torch.is_tensor(x) and x.is_floating_point():  # at setup the module is not converted to its precision yet
            x = x.to(surgery.example_input(network, [1]).dtype)
        with surgery.preserved_modes(network), torch.no_grad(), trainer.precision_plugin.forward_context():
            network.eval()
            preds = network(x)
        try:
            value = calibrate(score, preds, y)
        except ValueError as err:
            raise MisconfigurationException(
                f"{type(self).__name__}: {err}. Pass `metric=` a torchmetrics Metric or a callable (preds, target) "
                "-> float that takes them, or set `options.unpack_batch` if the target is not the batch's second item."
            ) from err
        if not (math.isfinite(value) and scoring.finite(preds)):
            what = "outputs" if not scoring.finite(preds) else "score"
            raise MisconfigurationException(
                f"{type(self).__name__}: {_metric_name(self.metric)} gave {value} on a validation batch of the "
                f"unpruned {type(pl_module).__name__} (its {what} not finite), so candidates cannot be compared. "
                "Make the metric (or the model) finite on the validation data."
            )
        self._score = score
        if 0 < self._budget_points() < 0.05:
            rank_zero_warn(
                f"{type(self).__name__}: the budget {self._budget_points()} looks like a fraction, but it is in "
                f"points of the metric (the unpruned model scores {value:.2f} on a validation batch): 1.0 allows "
                "one point."
            )

    def _budget_points(self) -> float:
        """The budget in points of the metric (0: the callback has none)."""
        return 0.0

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        needed = self._schedule_epochs()
        name = type(self).__name__
        if trainer.fast_dev_run:
            if needed > 1:
                rank_zero_warn(
                    f"{name}: fast_dev_run runs one epoch, so only the steps scheduled at epoch 0 are taken (the full "
                    f"schedule needs {needed} epochs)."
                )
            return
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs < needed:
            raise MisconfigurationException(
                f"{name}: the schedule needs max_epochs >= {needed} ({self._schedule_text()}), got max_epochs="
                f"{trainer.max_epochs}. Raise max_epochs to {needed}, or shorten the schedule."
            )
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            per_epoch = trainer.num_training_batches
            if per_epoch is None or not math.isfinite(per_epoch):
                per_epoch = data.batch_count(data.loader(trainer, "train"))
                limit = trainer.limit_train_batches
                if per_epoch is not None and isinstance(limit, int):
                    per_epoch = min(per_epoch, limit)
                elif per_epoch is not None and isinstance(limit, float):
                    per_epoch = int(per_epoch * limit)
            steps_needed = (needed - 1) * per_epoch + 1 if per_epoch else None
            if steps_needed is not None and trainer.max_steps < steps_needed:
                raise MisconfigurationException(
                    f"{name}: max_steps={trainer.max_steps} ends training before the schedule's last pruning step "
                    f"(epoch {needed - 1} of {self._schedule_text()}, {per_epoch} steps an epoch: at least "
                    f"{steps_needed} steps). Raise max_steps or use max_epochs={needed}."
                )

    def _schedule_text(self) -> str:
        return f"start_epoch={self.start_epoch} + steps x finetune_epochs={self.finetune_epochs}"

    # -- monitor -------------------------------------------------------------------------------------------

    def _check_monitor(self, trainer: pl.Trainer) -> None:
        """`monitor` must be logged by validation: an error before any pruning work, a warning after it (the
        summary then reports no monitored value)."""
        if self._monitor_checked or self.monitor is None:
            return
        self._monitor_checked = True
        if self.monitor in trainer.callback_metrics:
            return
        logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
        message = (
            f"{type(self).__name__}: monitor={self.monitor!r} is not logged during validation. Logged metrics: "
            f"{logged}. Set `monitor` to one of them (it is only reported), or monitor=None."
        )
        if self.history:
            rank_zero_warn(message)
            return
        raise MisconfigurationException(message)

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_monitor(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._check_monitor(trainer)

    def monitored(self, trainer: pl.Trainer) -> float | None:
        """The current value of `monitor` (None: not logged yet)."""
        value = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        return float(value) if value is not None else None

    def baseline_score(self, trainer: pl.Trainer, p_star: float) -> float | None:
        """The summary's baseline: `monitor` as logged now (None before it is), else `p_star` (the metric)."""
        return self.monitored(trainer) if self.monitor is not None else p_star

    def final_score(self, trainer: pl.Trainer, run: Session) -> float | None:
        """`monitor`, or the metric on the validation batches candidates are scored on."""
        if self.monitor is not None:
            return self.monitored(trainer)
        return run.evaluate(run.batches("val", self.options.reward_batches))

    # -- schedule ------------------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The monitor must be known before the first step's work is spent (no sanity check ran without it): a
        # validation ran at the end of the last epoch.
        validated = trainer.current_epoch > 0 and trainer.current_epoch % (trainer.check_val_every_n_epoch or 1) == 0
        if validated and self._due(trainer):
            self._check_monitor(trainer)
        # The search leaves the global random streams as they were, so the data order and augmentation of
        # training are those of a run without pruning, and a resumed run continues them exactly.
        with isolate_rng():
            while self._due(trainer):
                self._step(trainer, Session(self, trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = Session(self, trainer, pl_module)
        own = self._summary(trainer, run)
        if own is None:
            return
        final = {**run.cost(), **own.pop("final")}
        summary = {"baseline": self.baseline, "final": final, "layers": self.summary_layers(run), **own}
        summary["monitor"] = self.monitor or "metric"
        tracking.write_summary(trainer, summary)
        tracking.log_final(trainer, summary)

    # -- shared services of a pruning step -----------------------------------------------------------------

    @property
    def score(self) -> Score:
        """A fresh accumulator of the metric candidates are scored on."""
        score = make_score(self.metric, self.options.ignore_index)
        if self._score is not None and hasattr(score, "scale"):
            score.scale = self._score.scale
        return score

    def record_cuts(self, trainer: pl.Trainer, run: Session, before: dict[str, int]) -> None:
        """Add this step's records to the history: each group whose width fell from `before` (`history` schema)."""
        step = 1 + max((r["step"] for r in self.history), default=-1)
        self.history += history.cut_records(step, trainer.current_epoch, before, run.widths(), run.cost())

    def summary_layers(self, run: Session) -> list[dict[str, Any]]:
        """The summary's layers: every group's filters before pruning and now."""
        now = run.widths()
        return [{"name": name, "before": self.widths[name], "after": now[name]} for name in self.groups]

    def info(self, message: str) -> None:
        rank_zero_info(f"[{type(self).__name__}] {message}")

    # -- resumable state -----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        """The subclass's resumable state beyond the attributes `run_state` names."""
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore what `_state` saved (the attributes of `run_state` are restored already)."""

    def state_dict(self) -> dict[str, Any]:
        saved = {key: getattr(self, key) for key in (*RUN_STATE, *self.run_state)}
        return {**saved, "args": {k: self.hparams[k] for k in self.resume_args}, "rng": _get_rng(), **self._state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [k for k in ("groups", "history", "baseline") if k not in state_dict]
        if missing:
            raise ValueError(
                f"The checkpoint's {type(self).__name__} state lacks {missing}: it was not saved by this callback. "
                f"Resume from a checkpoint of a {type(self).__name__} run, or start the run without ckpt_path."
            )
        state_dict = history.upgrade(state_dict)
        saved = state_dict.get("args") or {}
        changed = {k: (v, self.hparams[k]) for k, v in saved.items() if k in self.hparams and self.hparams[k] != v}
        if changed and state_dict["history"]:
            shown = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items())
            raise MisconfigurationException(
                f"{type(self).__name__}: the checkpoint was pruned with {shown}. A resumed run keeps the arguments "
                "it was pruned with: pass the checkpoint's values, or start a new run without ckpt_path."
            )
        self._load_state(state_dict)
        for key in (*RUN_STATE, *self.run_state):
            setattr(self, key, state_dict[key])
        if state_dict.get("rng") is not None:
            # At once, not at the next epoch start: Lightning draws the first epoch's data order (and prefetches
            # a batch) before any epoch hook of a resumed run.
            _set_rng(state_dict["rng"])


def _declared_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[str, ...] | None:
    """What validation logs, known before it runs: a module whose class declares `validation_metrics` (as
    `ImageClassifier` does) and keeps the validation code of the module that declares them, with no callback from
    outside Lightning and this package (those may log too). None: only a validation run tells."""
    cls = type(pl_module)
    declaring = next((c for c in cls.__mro__ if "validation_metrics" in vars(c)), None)
    if declaring is None:
        return None
    hooks = ("validation_step", "_step", "_log_accuracy", "on_validation_epoch_end", "on_validation_batch_end")
    own = (declaring.__module__, "pytorch_lightning.", "lightning.")
    if any(not getattr(getattr(cls, h, None), "__module__", "").startswith(own) for h in hooks):
        return None
    packages = ("pytorch_lightning", "lightning", "lightning_prune")
    if any(type(cb).__module__.split(".")[0] not in packages for cb in trainer.callbacks):
        return None
    return tuple(declaring.validation_metrics)


def _metric_name(metric: MetricSpec) -> str:
    """How a message names the `metric` argument."""
    if metric is None:
        return "the default metric (top-1 agreement)"
    return f"metric={getattr(metric, '__name__', None) or type(metric).__name__}"


def _describe(metric: MetricSpec) -> str:
    """A metric argument as plain data for loggers."""
    if metric is None:
        return "top1"
    return getattr(metric, "__name__", None) or type(metric).__name__


def _get_rng() -> dict[str, Any]:
    """Global random states as tensors, lists and numbers (a checkpoint loads with `weights_only=True`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    version, internal, gauss_next = state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
