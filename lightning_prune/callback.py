"""`RLPruneCallback`: learned filter pruning that spends an accuracy budget on measured drops."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune import decision, plan, scoring, surgery, tracking
from lightning_prune.measure import macs_at_stake
from lightning_prune.metric import MetricSpec
from lightning_prune.options import RLOptions
from lightning_prune.orchestration import PruningCallback, _is_int
from lightning_prune.policy import LayerSearch, min_keep_count
from lightning_prune.reward import REWARDS, budget_at
from lightning_prune.snapshot import TrainingSnapshot


class RLPruneCallback(PruningCallback):
    """Remove convolution filters with a learned agent per layer until the network has lost `b` points.

    Pruning proceeds in steps, from `start_epoch`, each followed by `finetune_epochs` epochs of training:

    1. In a step, every channel group is pruned in turn (lowest first, or in `layers` order). Its agent samples
       `num_samples` keep/remove masks over the group's filters, each scored on the first `reward_batches`
       validation batches with the group's following BatchNorm layers re-estimated, and is updated by REINFORCE
       with the reward `(1 - max(p_ref - p, 0) / allowance) * log(N / kept)` (Huang et al., 2018; "yang": `N / kept`
       in place of `log(N / kept)`). The decision keeps the count of most likely filters with the best reward,
       and the filters are physically removed (with every coupled tensor and the optimizers' state).
    2. After `finetune_epochs` epochs the drop is measured: the validation score now against the unpruned
       network's, both on validation batches the search never scored (`check_batches`).
    3. A drop above `b` undoes the step: weights, plan, optimizers and LR schedulers return to their state
       before it, and the next step may remove at most half as many filters from each group (and gets half the
       allowance). A drop clearly below `b` starts another step, allowed what is left of `b` times how much the
       last step's forecast overstated its measured cost. Pruning ends when the drop is within a tenth of `b`, a
       step removes nothing, or the run has no room for another step and its fine-tuning; the remaining epochs
       fine-tune.

    Any LightningModule is pruned: the convolutions of its `forward` (traced with `example_input_array`, else
    the first training batch's inputs), scored with `metric` on batches that `options.unpack_batch` splits into
    `(inputs, target)`. `b` is in points of that metric: a metric valued in [0, 1] counts x100. The module's
    checkpoints carry the pruned structure (`lightning_prune.plan`). Under DDP every rank scores a share of the
    masks and applies rank 0's decision. The search leaves the global random streams as it found them, and the
    callback's checkpoint state holds them, so a resumed run continues as an uninterrupted one; it must keep `b`
    and `layers`. The state before a step is held in memory only: a run resumed between a step and its
    measurement cannot undo that step. Bad arguments fail when the callback is constructed; a schedule, layer,
    batch, metric or `forward` that does not fit the run fails at `setup`, before any training.

    Args:
        b: the drop of the network's score the user accepts, in points of `metric` (> 0, finite).
        layers: layer names or fnmatch patterns selecting the groups to prune, in this order (None: every
            prunable convolution group, lowest first).
        start_epoch: epoch at which the first step is taken (0 prunes the model as given: pass a trained one).
        finetune_epochs: training epochs after each step, before its drop is measured (>= 1).
        min_keep: filters every group keeps: a count (int >= 1) or a fraction of the group (float in (0, 1)).
        metric: what is scored: None (top-1 agreement of the argmax over dim 1 with integer targets: accuracy,
            or pixel accuracy for (B, C, H, W) outputs), a torchmetrics `Metric` (e.g. `MulticlassJaccardIndex`
            for mIoU) or a callable `(preds, target) -> float`; higher is better.
        monitor: a logged metric reported as the summary's baseline and final value (None: the callback's own
            `metric` on the validation batches it measures drops on). Read for reporting only.
        seed: seeds agents and sampling; the same seed gives the same decisions.
        options: the search's other settings (`lightning_prune.options.RLOptions`; None: its defaults).

    Example::

        trainer = L.Trainer(max_epochs=15, callbacks=[RLPruneCallback(b=1.0, finetune_epochs=2)])
        trainer.fit(my_trained_module, datamodule=dm)
    """

    resume_args = ("b", "layers")

    def __init__(
        self,
        b: float = 1.0,
        layers: list[str] | None = None,
        start_epoch: int = 0,
        finetune_epochs: int = 1,
        min_keep: int | float = 0.1,
        metric: MetricSpec = None,
        monitor: str | None = None,
        seed: int = 0,
        options: RLOptions | None = None,
    ) -> None:
        options = RLOptions() if options is None else options
        if not isinstance(options, RLOptions):
            raise MisconfigurationException(
                f"RLPruneCallback: options={options!r} must be a lightning_prune.options.RLOptions"
            )
        o = options
        counts = {"num_samples": o.num_samples, "agent_updates": o.agent_updates, "decision_counts": o.decision_counts}
        checks = [
            *((_is_int(v) and v >= 1, f"options.{k}={v!r} must be >= 1 (an int)") for k, v in counts.items()),
            (
                isinstance(b, (int, float)) and math.isfinite(b) and b > 0,
                f"b={b!r} must be > 0 and finite: it is the drop (points of the metric) the network may lose",
            ),
            (
                _is_int(finetune_epochs) and finetune_epochs >= 1,
                f"finetune_epochs={finetune_epochs!r} must be >= 1 (an int): each step's drop is measured after "
                "that much training",
            ),
            (o.reward in REWARDS, f"options.reward={o.reward!r} is unknown: use one of {sorted(REWARDS)}"),
            (0 < o.init_keep < 1, f"options.init_keep={o.init_keep} must be in (0, 1)"),
            (o.l1_prior >= 0, f"options.l1_prior={o.l1_prior} must be >= 0 (0 turns the L1-norm prior off)"),
            (o.agent_lr > 0, f"options.agent_lr={o.agent_lr} must be > 0"),
            (o.entropy_coef >= 0, f"options.entropy_coef={o.entropy_coef} must be >= 0"),
            (
                o.decision in ("reward", "greedy", "budget"),
                f"options.decision={o.decision!r} is unknown: use 'reward', 'greedy' or 'budget'",
            ),
            (
                o.budget_schedule in ("linear", "macs", "shared"),
                f"options.budget_schedule={o.budget_schedule!r} is unknown: use 'linear', 'macs' or 'shared'",
            ),
            (o.decision_counts >= 2, f"options.decision_counts={o.decision_counts} must be >= 2 (kept counts to try)"),
            (
                o.check_batches is None or (_is_int(o.check_batches) and o.check_batches >= 1),
                f"options.check_batches={o.check_batches!r} must be >= 1 (an int; None: the rest of the split)",
            ),
            (o.max_cache_mb >= 0, f"options.max_cache_mb={o.max_cache_mb} must be >= 0"),
        ]
        super().__init__(layers, start_epoch, finetune_epochs, min_keep, metric, monitor, seed, options, checks)
        self.b = float(b)
        self.stakes: list[int] | None = None  # MACs at stake per group, for budget_schedule="macs"
        self.widths: dict[str, int] = {}  # each group's unpruned width: `min_keep` is a share of it
        self.steps: list[dict[str, Any]] = []
        self.dense: float | None = None  # the unpruned network's score on the check batches
        self.p_star: float | None = None  # the current step's reference on the reward batches
        self.scale = 1.0
        self.caps: dict[str, int] | None = None  # after an undone step: filters each group may lose in the retry
        self.next_epoch: int | None = None
        self.finished = False
        self.last_search: dict[str, Any] | None = None
        self._snapshot: TrainingSnapshot | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        keys = ("b", "layers", "start_epoch", "finetune_epochs", "min_keep", "monitor", "seed")
        options = {
            f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options) if f.name != "unpack_batch"
        }
        return {"metric": _describe(self.metric), **{k: getattr(self, k) for k in keys}, **options}

    # -- setup -------------------------------------------------------------------------------------------------

    def _budget_points(self) -> float:
        return self.b

    def _setup_groups(self, trainer: pl.Trainer, network: torch.nn.Module, inputs: torch.Tensor, graph: Any) -> None:
        available = scoring.batch_count(scoring.validation_loader(trainer))
        if available is None and self.check_batches is None:
            raise MisconfigurationException(
                "RLPruneCallback: the validation dataset has no length, so the batches after the reward batches that "
                "each step's drop is measured on cannot be counted. Set options.check_batches (e.g. 20)."
            )
        if available is not None and available < self.reward_batches + (self.check_batches or 1):
            raise MisconfigurationException(
                f"RLPruneCallback: each step's drop is measured on validation batches after the "
                f"{self.reward_batches} the search scores (options.reward_batches), so the validation split needs "
                f"at least {self.reward_batches + (self.check_batches or 1)} batches, but it has {available}. Hold "
                "out more training data for validation, or lower options.reward_batches / options.check_batches."
            )
        if self.groups:  # a resumed run keeps the groups it started with
            return
        chosen = self._choose_groups(network, inputs, graph)
        self.groups = [g.name for g in chosen]
        self.widths = {g.name: g.size for g in chosen}
        if self.budget_schedule == "macs":
            self.stakes = macs_at_stake(network, inputs, self.groups)
        if isinstance(self.min_keep, int):
            small = {g.name: g.size for g in chosen if g.size <= self.min_keep}
            if small:
                raise MisconfigurationException(
                    f"RLPruneCallback: min_keep={self.min_keep} leaves nothing to prune in {small} "
                    "(layer: filters); lower min_keep or pass it as a fraction such as 0.1"
                )

    def _schedule_epochs(self) -> int:
        return self.start_epoch + self.finetune_epochs + 1

    def _schedule_text(self) -> str:
        return (
            f"a step at start_epoch={self.start_epoch}, finetune_epochs={self.finetune_epochs} of training and an "
            "epoch after its measurement"
        )

    # -- schedule: steps, each measured after fine-tuning ------------------------------------------------------

    def _due(self, trainer: pl.Trainer) -> bool:
        due = self.start_epoch if self.next_epoch is None else self.next_epoch
        return not self.finished and trainer.current_epoch >= due

    def _step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        score = self._check_score(trainer, pl_module)
        if self.dense is None:
            self.dense = score
        else:
            self._measure(trainer, pl_module, score)
        drop = self._drop()
        room = (
            trainer.max_epochs is None
            or trainer.max_epochs < 0
            or epoch + self.finetune_epochs < trainer.max_epochs
            or (bool(trainer.fast_dev_run) and not self.steps)  # one epoch: the first step, never measured
        )
        reason = decision.stop_reason(self.b, drop, room)
        if reason is not None:
            self.finished = True
            self._snapshot = None
            if self.steps:
                self.info(f"pruning ends at epoch {epoch}: {reason}; measured drop {drop:.2f} of b={self.b}")
            return
        allowance = self.scale * (self.b - drop)
        self._snapshot = TrainingSnapshot(trainer, pl_module)
        first = len(self.history)
        cost = self.cost(pl_module)
        self.p_star = None  # the step's reference, read by its first search
        for i, name in enumerate(self.groups):
            size = plan.network_of(pl_module).get_submodule(name).weight.shape[0]
            floor = min_keep_count(self.min_keep, self.widths[name])
            if self.caps is not None:  # retrying an undone step: smaller cuts
                floor = max(floor, size - self.caps.get(name, 0))
            if size > floor:
                self._prune_group(trainer, pl_module, name, i, allowance, floor)
        removed = cost["macs"] - self.cost(pl_module)["macs"]
        self.steps.append(
            {"epoch": epoch, "allowance": allowance, "from_drop": drop, "layers": [first, len(self.history)]}
        )
        if removed <= 0 and all(r["after"] == r["before"] for r in self.history[first:]):
            self.steps[-1]["outcome"] = "removed nothing"
            self.finished = True
            self._snapshot = None
            return
        self.next_epoch = epoch + self.finetune_epochs

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, score: float) -> None:
        """The last step's measured drop: kept, or undone when it is above `b`."""
        step = self.steps[-1]
        step["drop"] = self.dense - score
        step["increment"] = step["drop"] - step["from_drop"]
        if step["drop"] <= self.b:
            step["outcome"] = "kept"
            self.scale = decision.forecast_scale(step["allowance"], step["increment"])
            self.caps = None
            self._snapshot = None
            return
        if self._snapshot is None:
            step["outcome"] = "kept (could not be undone)"
            rank_zero_warn(
                f"RLPruneCallback: the step of epoch {step['epoch']} costs {step['drop']:.2f} points, over b={self.b}, "
                "but the run was resumed after it, so it cannot be undone."
            )
            return
        self._snapshot.restore(trainer)
        self._snapshot = None
        removed = {name: 0 for name in self.groups}
        for record in self.history[step["layers"][0] :]:
            removed[record["name"]] += record["before"] - record["after"]
        self.caps = decision.retry_caps(removed)
        step["removed"] = {name: count for name, count in removed.items() if count}
        del self.history[step["layers"][0] :]
        step["layers"] = [step["layers"][0]] * 2  # its records are gone with the cuts
        step["outcome"] = "undone"
        self.scale = self.scale / 2
        self.info(f"the step of epoch {step['epoch']} cost {step['drop']:.2f} points, over b={self.b}: undone")

    def _drop(self) -> float:
        """The measured drop of the network as it is now (the last kept step's)."""
        kept = [s for s in self.steps if s.get("outcome", "").startswith("kept")]
        return kept[-1]["drop"] if kept else 0.0

    def _check_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[scoring.Batch]:
        count = self.check_batches
        if count is None:
            count = scoring.batch_count(scoring.validation_loader(trainer)) - self.reward_batches
        return self.batches(trainer, pl_module, "val", self.reward_batches + count)[self.reward_batches :]

    def _check_score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        batches = self._check_batches(trainer, pl_module)
        network = plan.network_of(pl_module)
        return self.score_shared(
            trainer,
            pl_module,
            lambda _: scoring.evaluate(network, batches, trainer.precision_plugin.forward_context, self.score),
            1,
        )[0]

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        if self.baseline is None:
            return None
        check = self._check_score(trainer, pl_module)
        final = {**self.cost(pl_module), "val_acc": self.final_score(trainer, pl_module), "check": check}
        baseline = {**self.baseline, "check": self.dense}
        return {"b": self.b, "baseline": baseline, "final": final, "layers": self.history, "steps": self.steps}

    def final_score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        if self.monitor is not None:
            return self.monitored(trainer)
        return self._check_score(trainer, pl_module)

    # -- one group of a step -----------------------------------------------------------------------------------

    def _prune_group(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        name: str,
        index: int,
        allowance: float,
        floor: int,
    ) -> None:
        model = plan.network_of(pl_module)
        inputs = surgery.example_input(model, self.input_shape)
        graph = surgery.build_graph(model, inputs)
        maps = surgery.output_channel_maps(model, graph, name)
        weight = model.get_submodule(name).weight
        size = weight.shape[0]
        seed = self.seed + len(self.history)
        search = LayerSearch(
            weight,
            floor,
            seed=seed,
            lr=self.agent_lr,
            entropy_coef=self.entropy_coef,
            init_keep=self.init_keep,
            prior_scale=self.l1_prior,
        )
        batches = self.batches(trainer, pl_module, "val", self.reward_batches)
        calibration = self.calibration(trainer, pl_module, seed)
        context = trainer.precision_plugin.forward_context
        baseline_cost = self.cost(pl_module) if self.baseline is None else None
        budget = budget_at(allowance, index, len(self.groups), self.budget_schedule, self.stakes)
        with (
            scoring.CandidateScorer(
                model, maps, batches, context, self.cache, self.max_cache_mb, calibration=calibration, score=self.score
            ) as scorer,
            tracking.SearchTracker(trainer, name, index, len(self.groups), self.agent_updates) as track,
        ):
            unpruned = scorer.accuracy()
            if self.p_star is None:
                self.p_star = unpruned  # drops within a step are measured from its start
            if baseline_cost is not None:
                self.baseline = {**baseline_cost, "val_acc": self.baseline_score(trainer, self.dense)}
            step_stats = []
            for update in range(self.agent_updates):
                masks = search.sample(self.num_samples)
                scores = self._score_masks(trainer, pl_module, scorer, masks)
                rewards = decision.rewards(self.reward, scores, masks.sum(1).tolist(), size, self.p_star, budget)
                search.update(masks, rewards)
                step_stats.append((float(rewards.mean()), float(rewards.max())))
                track.update(update, rewards, search.probs())
            keep = self._decide(trainer, pl_module, scorer, search, budget)
            keep = trainer.strategy.broadcast(keep, src=0)
            decision_acc = scorer.accuracy(keep)
        removed = (~keep).nonzero().flatten().tolist()
        if removed:
            cut = self.cut(trainer, pl_module, {name: removed}, graph, calibration)
            removed = cut.get(name, [])
        record = {
            "index": len(self.history),
            "step": len(self.steps),
            "group": index,
            "name": name,
            "before": size,
            "after": size - len(removed),
            "decision_acc": decision_acc if removed else unpruned,
            "reference": unpruned,
            "reward_mean": step_stats[-1][0],
            "reward_best": max(best for _, best in step_stats),
            "keep_probs": [round(p, 4) for p in search.probs().tolist()],
            "budget": budget,
            **self.cost(pl_module),
        }
        self.history.append(record)
        self.last_search = {"name": name, **search.state_dict()}
        tracking.log_layer(trainer, pl_module, record, self.baseline, len(self.groups), self.p_star, self.b)

    def _score_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule, scorer: Any, masks: torch.Tensor):
        """The scores of `masks`, each rank scoring its share."""
        return self.score_shared(trainer, pl_module, lambda i: scorer.accuracy(masks[i]), len(masks))

    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        scorer: scoring.CandidateScorer,
        search: LayerSearch,
        budget: float,
    ) -> torch.Tensor:
        if self.decision == "greedy":
            return search.decision()
        masks = decision.candidates(search.probs(), search.decision(), search.min_keep, self.decision_counts)
        scores = self._score_masks(trainer, pl_module, scorer, masks)
        return masks[decision.choose(self.decision, self.reward, scores, masks, self.p_star, budget)]

    # -- resumable state -------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "stakes": self.stakes,
            "widths": self.widths,
            "steps": self.steps,
            "dense": self.dense,
            "p_star": self.p_star,
            "scale": self.scale,
            "caps": self.caps,
            "next_epoch": self.next_epoch,
            "finished": self.finished,
            "last_search": self.last_search,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if "steps" not in state or "dense" not in state:
            raise ValueError(
                "The checkpoint's RLPruneCallback state lacks ['steps', 'dense']: it was not saved by this version of "
                "the callback. Resume from a checkpoint of an RLPruneCallback run, or start the run without ckpt_path."
            )
        self.stakes = state.get("stakes", self.stakes)
        self.widths = dict(state.get("widths") or self.widths)
        self.steps = list(state["steps"])
        self.dense = state["dense"]
        self.p_star = state.get("p_star")
        self.scale = float(state.get("scale", 1.0))
        self.caps = state.get("caps")
        self.next_epoch = state.get("next_epoch")
        self.finished = bool(state.get("finished", False))
        self.last_search = state.get("last_search")
        self._snapshot = None  # a snapshot belongs to the run that took it


def _describe(metric: MetricSpec) -> str:
    """A metric argument as plain data for loggers."""
    if metric is None:
        return "top1"
    return getattr(metric, "__name__", None) or type(metric).__name__
