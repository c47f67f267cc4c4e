"""`RLPruneCallback`: learned, layer-by-layer filter pruning between fine-tuning epochs."""

from __future__ import annotations

import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune import decision, plan, scoring, surgery, tracking
from lightning_prune.measure import macs_at_stake
from lightning_prune.metric import MetricSpec, Unpack
from lightning_prune.orchestration import PruningCallback, _is_int
from lightning_prune.policy import LayerSearch, min_keep_count
from lightning_prune.reward import REWARDS, budget_at


class RLPruneCallback(PruningCallback):
    """Prune convolution filters layer by layer with a learned agent per layer (Huang et al., 2018).

    At each pruning point the agent of the next channel group (lowest first, or in `layers` order) samples
    `num_samples` keep/remove masks over the group's filters, scores each on `reward_batches` batches of the
    validation split, and is updated by REINFORCE. After `agent_updates` updates the decision is made
    (`decision`) and applied by physically removing the filters (and every coupled tensor), and training
    fine-tunes for `finetune_epochs` epochs before the next group. Epochs after the last group are final fine-tuning.

    Before a candidate is scored, the BatchNorm layers after the group re-estimate their statistics on
    `calibration_batches` training batches. Without this, removing filters shifts the inputs of every later
    BatchNorm and the candidate scores far below what the pruned network is worth (see
    `benchmarks/bn_reestimation.py`), so the reward would punish pruning that costs little. After each cut the
    pruned model's BatchNorm statistics are re-estimated on the same batches, so the next group (even at the
    same epoch, with `finetune_epochs=0`) starts from a consistent model.

    The reward is `(1 - max(p* - p, 0) / b) * log(N / kept)` where `p*` is the validation score (points) of
    the unpruned model before pruning began and `p` that of the candidate: `b` is the accuracy drop the whole
    network may lose, in percentage points. With `budget_schedule="linear"` the i-th of L layers is scored
    against `b * i / L` in place of `b`, so early layers cannot spend the whole budget.

    That accuracy is the network's before any fine-tuning, which forecasts a cut's cost pessimistically: a
    short fine-tune wins most of it back. With `recovery_steps > 0`, `p*` and the decision's candidate counts
    are measured after a short recovery instead (`scoring.RecoveryScorer`: a copy, pruned, re-estimated and
    trained for `recovery_steps` SGD steps on fixed batches): `p*` is the unpruned model's recovered score (the
    mean of `p_star_draws` draws), and each layer's model is recovered the same way before its search, so
    fine-tuning between layers gives back budget as it wins accuracy back. The agent's samples are still scored
    without recovery (fast), each as the recovered current model minus the sample's own drop, so the agent learns
    which filters matter most.

    Any LightningModule is pruned: the convolutions of its `forward` (traced with `example_input_array`, else
    the first training batch's inputs), scored with `metric` on batches that `unpack_batch` splits into
    `(inputs, target)`. `b` is in points of that metric: a metric valued in [0, 1] counts x100, so `b=1` allows
    one point of accuracy or mIoU. The module's checkpoints carry the pruned structure (see `lightning_prune.plan`).

    Under DDP every rank scores a share of the masks on the same batches (the first `reward_batches` of the
    validation split, read in order) and applies rank 0's decision. The search leaves the global random
    streams as it found them, and the callback's checkpoint state holds them, so a resumed run continues with
    the data order of an uninterrupted one; a resumed run must keep `b` and `layers`. Bad arguments fail when the
    callback is constructed; a schedule, layer name, batch, metric or `forward` that does not fit the run at
    `setup`, before any training (a `monitor` that only a validation run can reveal: at the end of the sanity
    check, or before the first pruning step).

    Args:
        b: allowed drop of the whole network's score, in points of `metric` (> 0, finite).
        layers: layer names or fnmatch patterns selecting the groups to prune, in this order (None: every
            prunable convolution group, lowest first). See the error message of a bad name for the choices.
        start_epoch: epoch before which the first group is pruned (0 prunes the model as given).
        finetune_epochs: training epochs between two pruned groups (0 prunes all groups at `start_epoch`).
        num_samples: masks sampled per agent update (K).
        agent_updates: policy-gradient updates per group.
        reward_batches: validation batches each candidate is scored on.
        reward: "huang" (logarithmic efficiency term) or "yang" (linear, N / kept).
        min_keep: filters every group keeps: a count (int >= 1) or a fraction of the group (float in (0, 1)).
        agent_lr: Adam learning rate of the agents.
        entropy_coef: entropy bonus weight in the agents' loss.
        init_keep: keep probability of every filter before the first update.
        l1_prior: weight of the filters' L1 norms (Li et al., 2017) in the agents' keep probabilities: a filter's
            logit is the agent's output plus `l1_prior` times its L1 norm standardised over the layer, so with
            `l1_prior > 0` the agent starts from the rule-based ranking (higher norm, more likely kept) and its
            updates learn where to depart from it. 0: every filter starts at `init_keep` and the agent's ranking
            is learned from the rewards alone.
        decision: "reward": the agent ranks the filters by keep probability, and the kept count is the one
            whose mask of the most likely filters earns the highest reward (`decision_counts` counts from
            `min_keep` to all filters, and the agent's greedy mask, are scored); keeping everything scores 0,
            so a group where every pruning exceeds `b` is left whole. "greedy": keep the filters whose
            probability is >= 0.5 (Huang et al.).
            "budget": the agent ranks the filters the same way, and the group keeps the fewest of the counts tried
            whose drop stays within the budget schedule's allowance (the whole allowance is spent, where
            "reward" stops where the reward peaks); none within it leaves the group whole. Pair it with
            `budget_schedule="linear"`: with "shared" the first group may spend all of `b`.
        decision_counts: kept counts tried by `decision="reward"` and `"budget"`.
        budget_schedule: "linear": the i-th of L pruned layers may bring the drop from `p*` to `b * i / L`
            (unused budget carries over); "macs": each layer's share is in proportion to the MACs its filters
            cost in the unpruned model (`measure.macs_at_stake`), so a small first layer gets a small share and
            the layers that hold the MACs most of it; "shared": every layer may use all of `b` that earlier
            layers left.
        drop_from: "start": a candidate's drop is `p* - p`, so whatever the model lost while training between
            groups counts too; "layer": it is the drop from the group's own unpruned score (recovered, with
            `recovery_steps`) plus the drops the earlier groups' decisions were charged, so only cuts are charged
            and the ups and downs of fine-tuning between groups are not.
        calibration_batches: training batches on which the BatchNorm statistics after the group are
            re-estimated for each candidate (0: score with the model's statistics).
        recovery_steps: SGD steps on training batches that `p*`, each layer's model and each candidate count of
            the decision recover for before they are scored (0: scored right after re-estimation). Needs
            `decision="reward"` or `"budget"`; each layer then trains up to `decision_counts + 2` copies for that
            many steps (the first layer `p_star_draws - 1` more).
        recovery_lr: learning rate of those steps.
        recovery_batches: validation batches each recovered copy is scored on (None: `reward_batches`). Two
            recovered copies differ by a few images, so more batches than the agent's make the decision less
            noisy.
        p_star_draws: with `recovery_steps > 0`, `p*` is the mean of this many recovered scores of the unpruned
            model, each recovering on other training batches. Every layer's drop is measured from `p*`, and one
            draw is noisy. The scores are in the summary's `baseline["p_star_scores"]`.
        holdout_batches: validation batches, after the ones candidates are scored on (`reward_batches` and
            `recovery_batches`), on which `p*` and each layer's unpruned model are scored (0: on the candidates'
            batches). Every decision keeps the candidate that scores best on its batches, so after a few layers
            the model scores optimistically there, and a drop measured there undercounts what the network lost.
            With held-out batches a candidate's score is the layer's held-out score plus the candidate's own
            drop on the scoring batches: no choice ever reads the held-out images, so earlier choices' optimism
            does not add up.
        cache: score candidates by running only the part of the network after the cached prefix.
        max_cache_mb: memory bound of that cache; above it the full forward is used.
        metric: what candidates are scored on: None (top-1 agreement of the argmax over dim 1 with integer
            targets: accuracy, or pixel accuracy for (B, C, H, W) outputs), a torchmetrics `Metric` (e.g.
            `MulticlassJaccardIndex` for mIoU) or a callable `(preds, target) -> float`; higher is better.
        ignore_index: target value the default metric does not count (e.g. a segmentation's void label).
        unpack_batch: a function splitting a batch into `(inputs, target)` (None: the batch is that pair).
        monitor: a logged metric reported as the summary's baseline and final value (None: the callback's own
            `metric` on the validation batches it scores). Read for reporting only.
        monitor_mode: "max" or "min": whether higher or lower `monitor` is better.
        seed: seeds agents and sampling; the same seed gives the same decisions.

    Example::

        trainer = L.Trainer(max_epochs=30, callbacks=[RLPruneCallback(b=1.0, start_epoch=5, finetune_epochs=1)])
        trainer.fit(MyLightningModule(), datamodule=dm)
    """

    resume_args = ("b", "layers")

    def __init__(
        self,
        b: float = 1.0,
        layers: list[str] | None = None,
        start_epoch: int = 0,
        finetune_epochs: int = 1,
        num_samples: int = 8,
        agent_updates: int = 10,
        reward_batches: int = 2,
        reward: Literal["huang", "yang"] = "huang",
        min_keep: int | float = 0.1,
        agent_lr: float = 0.05,
        entropy_coef: float = 0.0,
        init_keep: float = 0.9,
        l1_prior: float = 0.0,
        decision: Literal["reward", "greedy", "budget"] = "reward",
        decision_counts: int = 16,
        budget_schedule: Literal["linear", "macs", "shared"] = "linear",
        drop_from: Literal["start", "layer"] = "start",
        calibration_batches: int = 4,
        recovery_steps: int = 0,
        recovery_lr: float = 0.001,
        recovery_batches: int | None = None,
        p_star_draws: int = 4,
        holdout_batches: int = 0,
        cache: bool = True,
        max_cache_mb: float = 1024.0,
        metric: MetricSpec = None,
        ignore_index: int | None = None,
        unpack_batch: Unpack | None = None,
        monitor: str | None = None,
        monitor_mode: Literal["max", "min"] = "max",
        seed: int = 0,
    ) -> None:
        counts = {
            "num_samples": num_samples,
            "agent_updates": agent_updates,
            "decision_counts": decision_counts,
            "p_star_draws": p_star_draws,
        }
        checks = [
            *((_is_int(v) and v >= 1, f"{k}={v!r} must be >= 1 (an int)") for k, v in counts.items()),
            (
                isinstance(b, (int, float)) and math.isfinite(b) and b > 0,
                f"b={b!r} must be > 0 and finite: it is the drop (points of the metric) the network may lose",
            ),
            (reward in REWARDS, f"reward={reward!r} is unknown: use one of {sorted(REWARDS)}"),
            (0 < init_keep < 1, f"init_keep={init_keep} must be in (0, 1)"),
            (l1_prior >= 0, f"l1_prior={l1_prior} must be >= 0 (0 turns the L1-norm prior off)"),
            (agent_lr > 0, f"agent_lr={agent_lr} must be > 0"),
            (entropy_coef >= 0, f"entropy_coef={entropy_coef} must be >= 0"),
            (
                decision in ("reward", "greedy", "budget"),
                f"decision={decision!r} is unknown: use 'reward', 'greedy' or 'budget'",
            ),
            (drop_from in ("start", "layer"), f"drop_from={drop_from!r} is unknown: use 'start' or 'layer'"),
            (
                budget_schedule in ("linear", "macs", "shared"),
                f"budget_schedule={budget_schedule!r} is unknown: use 'linear', 'macs' or 'shared'",
            ),
            (decision_counts >= 2, f"decision_counts={decision_counts} must be >= 2 (kept counts to try)"),
            (
                _is_int(recovery_steps) and recovery_steps >= 0,
                f"recovery_steps={recovery_steps!r} must be >= 0 (an int; 0 turns recovery off)",
            ),
            (recovery_lr > 0, f"recovery_lr={recovery_lr} must be > 0"),
            (
                _is_int(holdout_batches) and holdout_batches >= 0,
                f"holdout_batches={holdout_batches!r} must be >= 0 (an int; 0 turns the held-out level off)",
            ),
            (
                recovery_batches is None or (_is_int(recovery_batches) and recovery_batches >= 1),
                f"recovery_batches={recovery_batches!r} must be >= 1 (an int; None: reward_batches)",
            ),
            (
                recovery_steps == 0 or decision != "greedy",
                f"recovery_steps={recovery_steps} scores the candidate counts of decision='reward' or 'budget', "
                "but decision='greedy' scores none: use decision='reward' or recovery_steps=0",
            ),
            (max_cache_mb >= 0, f"max_cache_mb={max_cache_mb} must be >= 0"),
        ]
        super().__init__(
            layers, start_epoch, finetune_epochs, min_keep, calibration_batches, reward_batches, metric,
            ignore_index, unpack_batch, monitor, monitor_mode, seed, checks,
        )  # fmt: skip
        self.b = float(b)
        self.num_samples = num_samples
        self.agent_updates = agent_updates
        self.reward = reward
        self.agent_lr = agent_lr
        self.entropy_coef = entropy_coef
        self.init_keep = init_keep
        self.l1_prior = l1_prior
        self.decision = decision
        self.decision_counts = decision_counts
        self.budget_schedule = budget_schedule
        self.drop_from = drop_from
        self.recovery_steps = recovery_steps
        self.recovery_lr = recovery_lr
        self.recovery_batches = recovery_batches
        self.p_star_draws = p_star_draws
        self.holdout_batches = holdout_batches
        self.cache = cache
        self.max_cache_mb = max_cache_mb
        self.stakes: list[int] | None = None  # MACs at stake per group, for budget_schedule="macs"
        self.done = 0
        self.p_star: float | None = None
        self.last_search: dict[str, Any] | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        keys = (
            "b", "layers", "start_epoch", "finetune_epochs", "num_samples", "agent_updates", "reward_batches",
            "reward", "min_keep", "agent_lr", "entropy_coef", "init_keep", "l1_prior", "decision", "decision_counts",
            "budget_schedule", "drop_from", "calibration_batches", "recovery_steps", "recovery_lr", "recovery_batches",
            "p_star_draws", "holdout_batches", "cache", "max_cache_mb", "ignore_index", "monitor", "monitor_mode",
            "seed",
        )  # fmt: skip
        return {"metric": _describe(self.metric), **{k: getattr(self, k) for k in keys}}

    # -- setup -------------------------------------------------------------------------------------------------

    def _budget_points(self) -> float:
        return self.b

    def _setup_groups(self, trainer: pl.Trainer, network: torch.nn.Module, inputs: torch.Tensor, graph: Any) -> None:
        self._check_holdout(trainer)
        if self.groups:  # a resumed run keeps the groups it started with
            return
        chosen = self._choose_groups(network, inputs, graph)
        self.groups = [g.name for g in chosen]
        if self.budget_schedule == "macs":
            self.stakes = macs_at_stake(network, inputs, self.groups)
        if isinstance(self.min_keep, int):
            small = {g.name: g.size for g in chosen if g.size <= self.min_keep}
            if small:
                raise MisconfigurationException(
                    f"RLPruneCallback: min_keep={self.min_keep} leaves nothing to prune in {small} "
                    "(layer: filters); lower min_keep or pass it as a fraction such as 0.1"
                )

    def _check_holdout(self, trainer: pl.Trainer) -> None:
        available = scoring.batch_count(scoring.validation_loader(trainer))
        if self.holdout_batches and available is not None and available < self._scored_batches() + self.holdout_batches:
            raise MisconfigurationException(self._holdout_message(available))

    def _schedule_epochs(self) -> int:
        return self.start_epoch + max(len(self.groups) * self.finetune_epochs, 1)

    def _schedule_text(self) -> str:
        return f"start_epoch={self.start_epoch} + {len(self.groups)} layers x finetune_epochs={self.finetune_epochs}"

    # -- schedule ------------------------------------------------------------------------------------------

    def _epoch_of(self, k: int) -> int:
        return self.start_epoch + k * self.finetune_epochs

    def _due(self, trainer: pl.Trainer) -> bool:
        return self.done < len(self.groups) and self._epoch_of(self.done) <= trainer.current_epoch

    def _step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prune_group(trainer, pl_module, self.groups[self.done])
        self.done += 1

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        if self.baseline is None:
            return None
        final = {**self.cost(pl_module), "val_acc": self.final_score(trainer, pl_module)}
        return {"b": self.b, "baseline": self.baseline, "final": final, "layers": self.history}

    # -- one pruning point -----------------------------------------------------------------------------------

    def _prune_group(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        model = plan.network_of(pl_module)
        inputs = surgery.example_input(model, self.input_shape)
        graph = surgery.build_graph(model, inputs)
        maps = surgery.output_channel_maps(model, graph, name)
        weight = model.get_submodule(name).weight
        size = weight.shape[0]
        seed = self.seed + len(self.history)
        search = LayerSearch(
            weight,
            min_keep_count(self.min_keep, size),
            seed=seed,
            lr=self.agent_lr,
            entropy_coef=self.entropy_coef,
            init_keep=self.init_keep,
            prior_scale=self.l1_prior,
        )
        batches = self.batches(trainer, pl_module, "val", self.reward_batches)
        holdout = self._holdout(trainer, pl_module)
        calibration = self.calibration(trainer, pl_module, seed)
        context = trainer.precision_plugin.forward_context
        baseline_cost = self.cost(pl_module) if self.p_star is None else None  # the unpruned model, once
        # `level`: the layer's unpruned score that drops are measured from (on the held-out batches, if any).
        recovery, reference, level, p_star_scores = None, None, None, None
        if self.recovery_steps:
            unpruned_mask = torch.ones(1, size, dtype=torch.bool)
            recovery = self._recovery(trainer, pl_module, name, inputs, calibration, seed)
            reference = self._score_masks(trainer, pl_module, recovery, unpruned_mask)[0]
            level = reference
            if holdout:  # the same recovery, scored on the held-out batches
                held_out = self._recovery(trainer, pl_module, name, inputs, calibration, seed, holdout)
                level = self._score_masks(trainer, pl_module, held_out, unpruned_mask)[0]
            if self.p_star is None:
                # Draws on other training batches; their seeds follow the layers' so no layer shares them.
                first = self.seed + len(self.groups)
                p_star_scores = [level] + [
                    self._score_masks(
                        trainer,
                        pl_module,
                        self._recovery(trainer, pl_module, name, inputs, calibration, s, holdout or None),
                        unpruned_mask,
                    )[0]
                    for s in range(first, first + self.p_star_draws - 1)
                ]
                self.p_star = sum(p_star_scores) / len(p_star_scores)
        elif holdout:
            level = scoring.evaluate(model, holdout, context, self.score)
        with (
            scoring.CandidateScorer(
                model,
                maps,
                batches,
                context,
                self.cache,
                self.max_cache_mb,
                calibration=calibration,
                score=self.score,
            ) as scorer,
            tracking.SearchTracker(trainer, name, len(self.history), len(self.groups), self.agent_updates) as track,
        ):
            unpruned = scorer.accuracy()
            level = unpruned if level is None else level
            if self.p_star is None:
                self.p_star = level
            if baseline_cost is not None:
                self.baseline = {**baseline_cost, "val_acc": self.baseline_score(trainer, self.p_star)}
                if p_star_scores is not None:
                    self.baseline["p_star_scores"] = p_star_scores
            # A sample (scored without recovery, on the reward batches) counts as the level minus its own drop.
            offset = level - unpruned
            p_ref = decision.reference(self.drop_from, self.p_star, level, self.history)
            budget = self._budget()
            step_stats = []
            for update in range(self.agent_updates):
                masks = search.sample(self.num_samples)
                scores = [s + offset for s in self._score_masks(trainer, pl_module, scorer, masks)]
                rewards = decision.rewards(self.reward, scores, masks.sum(1).tolist(), size, p_ref, budget)
                search.update(masks, rewards)
                step_stats.append((float(rewards.mean()), float(rewards.max())))
                track.update(update, rewards, search.probs())
            if recovery is None:
                keep = self._decide(trainer, pl_module, scorer, search, p_ref, offset)
                keep = trainer.strategy.broadcast(keep, src=0)
                decision_acc = scorer.accuracy(keep) + offset
            else:
                candidates = self._candidates(search)
        if recovery is not None:
            keep, decision_acc = self._decide_recovered(
                trainer, pl_module, recovery, candidates, reference, p_ref, level - reference
            )
        removed = (~keep).nonzero().flatten().tolist()
        if removed:
            cut = self.cut(trainer, pl_module, {name: removed}, graph, calibration)
            removed = cut.get(name, [])
        record = {
            "index": len(self.history),
            "name": name,
            "before": size,
            "after": size - len(removed),
            "decision_acc": decision_acc if removed else level,
            "reference": level,
            "reward_mean": step_stats[-1][0],
            "reward_best": max(best for _, best in step_stats),
            "keep_probs": [round(p, 4) for p in search.probs().tolist()],
            "budget": budget,
            **self.cost(pl_module),
        }
        if recovery is not None:
            record["recovered_reference"] = level
        self.history.append(record)
        self.last_search = {"name": name, **search.state_dict()}
        tracking.log_layer(trainer, pl_module, record, self.baseline, len(self.groups), self.p_star, self.b)

    def _score_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule, scorer: Any, masks: torch.Tensor):
        """The scores of `masks`, each rank scoring its share."""
        return self.score_shared(trainer, pl_module, lambda i: scorer.accuracy(masks[i]), len(masks))

    def _recovery(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        name: str,
        inputs: torch.Tensor,
        calibration: list[torch.Tensor],
        seed: int,
        batches: list[scoring.Batch] | None = None,
    ) -> scoring.RecoveryScorer:
        """Scores candidates of group `name` after `recovery_steps` SGD steps on training batches drawn by `seed`,
        on `batches` (None: the first `recovery_batches` validation batches)."""
        return scoring.RecoveryScorer(
            plan.network_of(pl_module),
            name,
            inputs,
            calibration,
            self.batches(trainer, pl_module, "train", self.recovery_steps, seed=seed, shuffle=True),
            batches or self.batches(trainer, pl_module, "val", self.recovery_batches or self.reward_batches),
            self.recovery_lr,
            trainer.precision_plugin.forward_context,
            seed,
            self.score,
        )

    def _scored_batches(self) -> int:
        """Validation batches, from the first, that candidates are scored on; the held-out ones follow them."""
        recovered = (self.recovery_batches or self.reward_batches) if self.recovery_steps else 0
        return max(self.reward_batches, recovered)

    def _holdout(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[scoring.Batch]:
        """The `holdout_batches` validation batches after the scored ones (none with `holdout_batches=0`)."""
        if not self.holdout_batches:
            return []
        skip = self._scored_batches()
        holdout = self.batches(trainer, pl_module, "val", skip + self.holdout_batches)[skip:]
        if len(holdout) < self.holdout_batches:
            raise MisconfigurationException(self._holdout_message(skip + len(holdout)))
        return holdout

    def _holdout_message(self, available: int) -> str:
        return (
            f"RLPruneCallback: holdout_batches={self.holdout_batches} needs that many validation batches after "
            f"the {self._scored_batches()} that candidates are scored on (reward_batches / recovery_batches), "
            f"but the validation split has {available}. Lower holdout_batches or recovery_batches, or hold out "
            "more training data for validation."
        )

    def _budget(self) -> float:
        return budget_at(self.b, len(self.history), len(self.groups), self.budget_schedule, self.stakes)

    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        scorer: scoring.CandidateScorer,
        search: LayerSearch,
        p_ref: float,
        offset: float,
    ) -> torch.Tensor:
        if self.decision == "greedy":
            return search.decision()
        masks = self._candidates(search)
        scores = [s + offset for s in self._score_masks(trainer, pl_module, scorer, masks)]
        return masks[decision.choose(self.decision, self.reward, scores, masks, p_ref, self._budget())]

    def _candidates(self, search: LayerSearch) -> torch.Tensor:
        return decision.candidates(search.probs(), search.decision(), search.min_keep, self.decision_counts)

    def _decide_recovered(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        recovery: scoring.RecoveryScorer,
        candidates: torch.Tensor,
        reference: float,
        p_ref: float,
        shift: float,
    ) -> tuple[torch.Tensor, float]:
        """The candidate the decision keeps, scored after recovery (keeping all: `reference`) and raised by `shift`
        (the layer's level minus `reference`), and its score."""
        masks = decision.unique_cuts(candidates)
        scores = [s + shift for s in [reference, *self._score_masks(trainer, pl_module, recovery, masks[1:])]]
        best = decision.choose(self.decision, self.reward, scores, masks, p_ref, self._budget())
        best = int(trainer.strategy.broadcast(best, src=0))
        return masks[best], scores[best]

    # -- resumable state -------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"stakes": self.stakes, "done": self.done, "p_star": self.p_star, "last_search": self.last_search}

    def _load_state(self, state: dict[str, Any]) -> None:
        if "done" not in state or "p_star" not in state:
            raise ValueError(
                "The checkpoint's RLPruneCallback state lacks ['done', 'p_star']: it was not saved by this callback. "
                "Resume from a checkpoint of an RLPruneCallback run, or start the run without ckpt_path."
            )
        self.stakes = state.get("stakes", self.stakes)  # older checkpoints have none: keep setup's
        self.done = int(state["done"])
        self.p_star = state["p_star"]
        self.last_search = state.get("last_search")


def _describe(metric: MetricSpec) -> str:
    """A metric argument as plain data for loggers."""
    if metric is None:
        return "top1"
    return getattr(metric, "__name__", None) or type(metric).__name__
