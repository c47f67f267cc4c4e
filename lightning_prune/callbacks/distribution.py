"""`DistributionPruneCallback`: prune to a global target with a learned distribution over channel groups."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune.callbacks.base import PruningCallback
from lightning_prune.callbacks.options import DistributionOptions, check, is_number
from lightning_prune.callbacks.session import Session
from lightning_prune.engine import surgery
from lightning_prune.engine.cost import CostModel, model_cost
from lightning_prune.engine.importance import filter_scores, group_importance
from lightning_prune.engine.metric import MetricSpec
from lightning_prune.engine.scoring import GroupScorer
from lightning_prune.io import tracking
from lightning_prune.search.distribution import (
    DistributionSearch,
    allocate,
    allocate_for,
    keep_mask,
    q_score,
    removed_filters,
)
from lightning_prune.search.floors import min_keep_count

TARGET_TYPES = ("channels", "macs")


class DistributionPruneCallback(PruningCallback):
    """Prune convolution filters to a global target, learning how many each channel group loses (RL-Pruner).

    Wang & Kindratenko (2024): layers differ in sensitivity, and the sensitivity changes as pruning proceeds.
    A probability distribution over the channel groups (residual-coupled layers form one group) says which
    share of a step's removed channels each group gives up; it starts proportional to the groups' widths.
    At each pruning step the distribution is searched (see `lightning_prune.search.distribution`): noised samples
    become per-group counts, the filters inside a group are chosen by `criterion`, each sample is scored on
    `reward_batches` validation batches with `Q = accuracy + alpha * MACs reduction + beta * params reduction`
    (percentage points), the distribution moves toward the elite samples, and the best sample is removed
    physically. Steps of `step_size` (a fraction of the unpruned model's channels or MACs) alternate with
    `finetune_epochs` training epochs until `target` is met; epochs after that are final fine-tuning.

    Args:
        target: fraction of the unpruned model to remove, in (0, 1): of its prunable channels (each group's
            channels counted once) or of its MACs.
        target_type: "channels" or "macs".
        step_size: fraction removed per step, in (0, 1]; the last step removes what is left to the target.
        start_epoch: epoch before which the first step is taken (0 prunes the model as given).
        finetune_epochs: training epochs between two steps (0 takes every step at `start_epoch`).
        min_keep: filters every group keeps: a count (int >= 1) or a fraction of its unpruned width (float in
            (0, 1)). A group is never emptied.
        layers: layer names or fnmatch patterns selecting the groups to prune (None: every prunable group).
        metric: what samples are scored on (None: top-1 agreement; a torchmetrics Metric or a callable
            `(preds, target) -> float`), in points; see `RLPruneCallback`.
        monitor: a logged metric reported as the summary's baseline and final value (None: `metric` on the
            validation batches samples are scored on). Read for reporting only.
        seed: seeds the search; the same seed (and training) gives the same result.
        options: the search's other settings (`lightning_prune.DistributionOptions`: the criterion
            inside a group, Q's weights, the distribution's updates; None: its defaults).

    Example::

        cb = DistributionPruneCallback(target=0.5, target_type="macs", step_size=0.1, finetune_epochs=1)
        Trainer(max_epochs=20, callbacks=[cb, DistillationCallback()]).fit(model, datamodule=dm)
    """

    options_type = DistributionOptions
    arguments = ("target", "target_type", "step_size", "start_epoch", "finetune_epochs", "min_keep", "layers")
    arguments += ("monitor", "seed")
    resume_args = ("target", "target_type", "step_size", "layers")
    run_state = ("steps", "base", "p_star", "done")

    def __init__(
        self,
        target: float = 0.5,
        target_type: Literal["channels", "macs"] = "channels",
        step_size: float = 0.1,
        start_epoch: int = 0,
        finetune_epochs: int = 1,
        min_keep: int | float = 0.1,
        layers: list[str] | None = None,
        metric: MetricSpec = None,
        monitor: str | None = None,
        seed: int = 0,
        options: DistributionOptions | None = None,
    ) -> None:
        numbers = [f"{k}={v!r}" for k, v in {"target": target, "step_size": step_size}.items() if not is_number(v)]
        check(
            "DistributionPruneCallback", [(not numbers, f"{', '.join(numbers)} must be a number (an int or a float)")]
        )
        checks = [
            (0 < target < 1, f"target={target} must be in (0, 1): the fraction of the model to remove"),
            (target_type in TARGET_TYPES, f"target_type={target_type!r} is unknown: use one of {TARGET_TYPES}"),
            (0 < step_size <= 1, f"step_size={step_size} must be in (0, 1]: the fraction removed per step"),
        ]
        options = DistributionOptions() if options is None else options
        super().__init__(layers, start_epoch, finetune_epochs, min_keep, metric, monitor, seed, options, checks)
        self.target = float(target)
        self.target_type = target_type
        self.step_size = float(step_size)
        self._reset()

    def _reset(self) -> None:
        """The search's state of a new run."""
        self.steps: list[dict[str, Any]] = []  # a record per step: its score, Q, reductions, distribution
        self.base: dict[str, int] | None = None
        self.p_star: float | None = None
        self.done = False
        self.search: DistributionSearch | None = None
        self._search_state: dict[str, Any] | None = None

    # -- setup: every check before any training time is spent ---------------------------------------------

    def _setup_groups(self, trainer: pl.Trainer, network: nn.Module, inputs: torch.Tensor, graph: Any) -> None:
        if self.base is None:  # a resumed run keeps the cost it started from
            self.base = model_cost(network, inputs).as_dict()
        most = self._capacity(torch.tensor(self.sizes))
        reachable = int(most.sum()) / sum(self.sizes)
        if self.target_type == "macs":
            macs = CostModel.of(network, graph, self.groups, inputs).cost(most)[0]
            reachable = 1 - float(macs) / self.base["macs"]
        if reachable < self.target:
            raise MisconfigurationException(
                f"DistributionPruneCallback: target={self.target} of {self.target_type} is out of reach: keeping "
                f"min_keep={self.min_keep} filters per group removes at most {reachable:.3f}. Lower the target or "
                "min_keep, or prune more layers."
            )

    def _steps(self) -> int:
        return math.ceil(self.target / self.step_size - 1e-9)

    def _schedule_epochs(self) -> int:
        return self.start_epoch + max(self._steps() * self.finetune_epochs, 1)

    def _schedule_text(self) -> str:
        return (
            f"start_epoch={self.start_epoch} + {self._steps()} steps of step_size={self.step_size} x "
            f"finetune_epochs={self.finetune_epochs}"
        )

    @property
    def sizes(self) -> list[int]:
        """The groups' unpruned widths, in `groups` order."""
        return [self.widths[name] for name in self.groups]

    def _capacity(self, sizes: torch.Tensor) -> torch.Tensor:
        """Channels each group may still lose: all but `min_keep` of its unpruned width (at least one)."""
        floor = torch.tensor([min_keep_count(self.min_keep, s) for s in self.sizes])
        return (sizes - floor).clamp(min=0)

    # -- schedule ------------------------------------------------------------------------------------------

    def _due(self, trainer: pl.Trainer) -> bool:
        return not self.done and self.start_epoch + len(self.steps) * self.finetune_epochs <= trainer.current_epoch

    def _reduction(self, sizes: torch.Tensor, cost: dict[str, int]) -> dict[str, float]:
        return {
            "channels_reduction": 1 - float(sizes.sum()) / sum(self.sizes),
            "macs_reduction": 1 - cost["macs"] / self.base["macs"],
            "params_reduction": 1 - cost["params"] / self.base["params"],
        }

    def _counts_rule(self, sizes: torch.Tensor, costs: CostModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-group counts of a distribution for this step: step k removes what is left to reach
        `min(target, (k + 1) * step_size)` (so rounding never adds a step), in channels or in MACs."""
        capacity = self._capacity(sizes)
        goal = min(self.target, (len(self.steps) + 1) * self.step_size)
        if self.target_type == "channels":
            total = sum(self.sizes)
            count = max(round(goal * total) - (total - int(sizes.sum())), 1)
            return lambda probs: allocate(probs, count, capacity)
        now = float(costs.cost(torch.zeros(len(sizes)))[0])
        saving = (goal - 1) * self.base["macs"] + now
        return lambda probs: allocate_for(probs, capacity, lambda c: now - float(costs.cost(c)[0]), saving)

    # -- one pruning step ----------------------------------------------------------------------------------

    def _distribution(self) -> DistributionSearch:
        """The search, built at the first step (or from a resumed run's state)."""
        if self.search is None:
            o = self.options
            self.search = DistributionSearch(
                self.sizes, self.seed, o.num_samples, o.updates, o.elite_size, o.noise, o.epsilon, o.epsilon_decay,
                o.lr, o.clip,
            )  # fmt: skip
            if self._search_state is not None:
                self.search.load_state_dict(self._search_state)
        return self.search

    def _importance(self, run: Session, group_maps: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Each group's filter importance by `options.criterion`."""
        criterion = self.options.criterion
        convs = list(dict.fromkeys(m for maps in group_maps.values() for m, _ in maps if isinstance(m, nn.Conv2d)))
        taylor = run.batches("train", self.options.taylor_batches) if criterion == "taylor" else ()
        return group_importance(group_maps, filter_scores(run.network, convs, criterion, taylor, run.context))

    def _step(self, trainer: pl.Trainer, run: Session) -> None:
        search, model, graph = self._distribution(), run.network, run.graph()
        group_maps = {name: surgery.output_channel_maps(model, graph, name) for name in self.groups}
        before = run.widths()
        sizes = torch.tensor([before[name] for name in self.groups])
        costs = CostModel.of(model, graph, self.groups, surgery.example_input(model, self.input_shape))
        importance = self._importance(run, group_maps)

        def removals(counts: torch.Tensor) -> dict[str, list[int]]:
            """The least important filters of each group, as many as `counts` says."""
            pairs = zip(self.groups, counts.tolist(), strict=True)
            return {name: removed_filters(importance[name], c) for name, c in pairs if c > 0}

        def score(counts: torch.Tensor) -> list[dict[str, float]]:
            """Q of each sample, each rank scoring its share."""
            masks = [{n: keep_mask(len(importance[n]), r) for n, r in removals(c).items()} for c in counts]
            accs = run.shared(lambda i: scorer.accuracy_of(masks[i]), len(counts), "groups " + ", ".join(self.groups))
            return self._q_rows(accs, *costs.cost(counts))

        calibration = run.calibration(self.seed + len(self.steps))
        batches = run.batches("val", self.options.reward_batches)
        with GroupScorer(model, group_maps, batches, run.context, calibration, self.score) as scorer:
            if self.p_star is None:
                self.p_star = scorer.accuracy()
                self.baseline = {**self.base, "val_acc": self.baseline_score(trainer, self.p_star)}
            epsilon = search.epsilon
            best = search.search(self._counts_rule(sizes, costs), score)
        if not math.isfinite(best.details["q"]):
            self.done = True
            rank_zero_warn(
                f"DistributionPruneCallback: no sample of step {len(self.steps) + 1} gave finite outputs and "
                f"score (groups {', '.join(self.groups)}): nothing is cut and pruning stops."
            )
            return
        decision = run.cut(removals(best.counts), graph, calibration)
        self._record(trainer, run, decision, best.details, epsilon, before)

    def _q_rows(self, accs: list[float], macs: torch.Tensor, params: torch.Tensor) -> list[dict[str, float]]:
        """Each sample's Q with its score and reductions."""
        rows = []
        for acc, m, p in zip(accs, macs.tolist(), params.tolist(), strict=True):
            red_macs, red_params = 1 - m / self.base["macs"], 1 - p / self.base["params"]
            q = q_score(acc, red_macs, red_params, self.options.alpha, self.options.beta)
            rows.append({"q": q, "accuracy": acc, "macs_reduction": red_macs, "params_reduction": red_params})
        return rows

    def _record(
        self,
        trainer: pl.Trainer,
        run: Session,
        decision: dict[str, list[int]],
        details: dict[str, float],
        epsilon: float,
        before: dict[str, int],
    ) -> None:
        now = run.widths()
        sizes = torch.tensor([now[name] for name in self.groups])
        cost = run.cost()
        reduction = self._reduction(sizes, cost)
        achieved = reduction[f"{self.target_type}_reduction"]
        if self.target_type == "channels":
            achieved_target = sum(self.sizes) - int(sizes.sum()) >= round(self.target * sum(self.sizes))
        else:
            achieved_target = achieved >= self.target
        exhausted = not decision or int(self._capacity(sizes).sum()) == 0
        self.done = achieved_target or exhausted
        if not achieved_target and exhausted:
            rank_zero_warn(
                f"DistributionPruneCallback: no channel is left to remove above min_keep={self.min_keep}; stopping "
                f"at {achieved:.3f} of {self.target_type} instead of target={self.target}."
            )
        record = {
            "step": len(self.steps),
            "epoch": trainer.current_epoch,
            "removed": {name: len(idxs) for name, idxs in decision.items()},
            "q": details["q"],
            "decision_acc": details["accuracy"],
            "epsilon": epsilon,
            **cost,
            **reduction,
            "distribution": [round(p, 5) for p in self.search.probs.tolist()],
        }
        self.steps.append(record)
        self.record_cuts(trainer, run, before)
        metrics = {f"prune/{k}": float(record[k]) for k in ("q", "decision_acc", "epsilon", "macs", "params")}
        tracking.log_metrics(trainer, {**metrics, **{f"prune/{k}": v for k, v in reduction.items()}})
        self.info(
            f"step {record['step'] + 1}: removed {sum(record['removed'].values())} channels "
            f"from {len(decision)} groups, val score of the decision {details['accuracy']:.2f} "
            f"(unpruned {self.p_star:.2f}), {self.target_type} -{100 * achieved:.1f}% (target "
            f"{100 * self.target:.0f}%)"
        )

    def _summary(self, trainer: pl.Trainer, run: Session) -> dict[str, Any] | None:
        if not self.steps:
            return None
        if not self.done:
            rank_zero_warn(
                f"DistributionPruneCallback: training ended before the target ({self.target} of "
                f"{self.target_type}) was reached; raise max_epochs."
            )
        final = {"val_acc": self.final_score(trainer, run)}
        return {"target": self.target, "target_type": self.target_type, "final": final, "steps": self.steps}

    # -- resumable state -----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"search": self.search.state_dict() if self.search is not None else self._search_state}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.search = None
        self._search_state = state["search"]
