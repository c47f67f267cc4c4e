"""`RLPruneCallback`: learned, layer-by-layer filter pruning between fine-tuning epochs."""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.seed import isolate_rng

from lightning_prune import scoring, surgery, tracking
from lightning_prune.measure import macs_at_stake, model_cost
from lightning_prune.module import ImageClassifier
from lightning_prune.policy import LayerSearch, is_min_keep, min_keep_count, ranked_masks
from lightning_prune.reward import REWARDS, budget_at, charged, fewest_within


class RLPruneCallback(Callback):
    """Prune convolution filters layer by layer with a learned agent per layer (Huang et al., 2018).

    At each pruning point the agent of the next channel group (lowest first, or in `layers` order) samples
    `num_samples` keep/remove masks over the group's filters, scores each on `reward_batches` batches of the
    validation split, and is updated by REINFORCE. After `agent_updates` updates the decision is made
    (`decision`) and applied by physically removing the filters (and every coupled tensor), and training
    fine-tunes for `finetune_epochs` epochs before the next group. Epochs after the last group are final fine-tuning.

    Before a candidate is scored, the BatchNorm layers after the group re-estimate their statistics on
    `calibration_batches` training batches. Without this, removing filters shifts the inputs of every later
    BatchNorm and the candidate scores far below what the pruned network is worth (on the b-sweep's VGG-16 x0.25,
    keeping 32 of 128 filters of `features.24` scores 61 % as is and 92 % after re-estimation; see
    `benchmarks/bn_reestimation.py`), so the reward would punish pruning that costs little. After each cut the
    pruned model's BatchNorm statistics are re-estimated on the same batches, so the next group (even at the
    same epoch, with `finetune_epochs=0`) starts from a consistent model.

    The reward is `(1 - max(p* - p, 0) / b) * log(N / kept)` where `p*` is the validation accuracy (points) of
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

    Under DDP every rank scores a share of the masks on the same batches (the first `reward_batches` of the
    validation split, read in order) and applies rank 0's decision. The search leaves the global random
    streams as it found them, and the callback's checkpoint state holds them, so a resumed run continues with
    the data order of an uninterrupted one. Bad arguments fail when the callback is constructed, a schedule, layer
    name or validation split that does not fit the run at `setup`, before any training (a `monitor` that only a
    validation run can reveal: at the end of the sanity check).

    Args:
        b: allowed accuracy drop of the whole network in percentage points (> 0).
        layers: layer names or fnmatch patterns selecting the groups to prune, in this order (None: every
            prunable convolution group, lowest first). See the error message of a bad name for the choices.
        start_epoch: epoch before which the first group is pruned (0 prunes the model as given).
        finetune_epochs: training epochs between two pruned groups (0 prunes all groups at `start_epoch`).
        num_samples: masks sampled per agent update (K).
        agent_updates: policy-gradient updates per group.
        reward_batches: validation batches each candidate is scored on.
        reward: "huang" (logarithmic efficiency term) or "yang" (linear, N / kept).
        min_keep: filters every group keeps: a count (int >= 1) or a fraction of the group (float in (0, 1]).
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
            draw is noisy: on the b-sweep's baseline eight draws scored 93.36-93.66 (mean 93.52). The scores
            are in the summary's `baseline["p_star_scores"]`.
        holdout_batches: validation batches, after the ones candidates are scored on (`reward_batches` and
            `recovery_batches`), on which `p*` and each layer's unpruned model are scored (0: on the candidates'
            batches). Every decision keeps the candidate that scores best on its batches, so after a few layers
            the model scores optimistically there, and a drop measured there undercounts what the network lost.
            With held-out batches a candidate's score is the layer's held-out score plus the candidate's own
            drop on the scoring batches: no choice ever reads the held-out images, so earlier choices' optimism
            does not add up.
        cache: score candidates by running only the part of the network after the cached prefix.
        max_cache_mb: memory bound of that cache; above it the full forward is used.
        monitor: the logged validation accuracy metric (points) reported as baseline and final accuracy.
        seed: seeds agents and sampling; the same seed gives the same decisions.

    Example::

        trainer = Trainer(max_epochs=30, callbacks=[RLPruneCallback(b=1.0, start_epoch=5, finetune_epochs=1)])
        trainer.fit(ImageClassifier("vgg16", model_kwargs={"width": 0.25}), datamodule=dm)
    """

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
        monitor: str = "val_acc",
        seed: int = 0,
    ) -> None:
        super().__init__()
        checks = [
            (b > 0, f"b={b} must be > 0: it is the accuracy drop (percentage points) the network may lose"),
            (num_samples >= 1, f"num_samples={num_samples} must be >= 1 (masks sampled per agent update)"),
            (agent_updates >= 1, f"agent_updates={agent_updates} must be >= 1"),
            (reward_batches >= 1, f"reward_batches={reward_batches} must be >= 1"),
            (start_epoch >= 0, f"start_epoch={start_epoch} must be >= 0"),
            (finetune_epochs >= 0, f"finetune_epochs={finetune_epochs} must be >= 0"),
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
            (calibration_batches >= 0, f"calibration_batches={calibration_batches} must be >= 0 (0 turns it off)"),
            (recovery_steps >= 0, f"recovery_steps={recovery_steps} must be >= 0 (0 turns recovery off)"),
            (recovery_lr > 0, f"recovery_lr={recovery_lr} must be > 0"),
            (p_star_draws >= 1, f"p_star_draws={p_star_draws} must be >= 1 (recovered scores averaged into p*)"),
            (holdout_batches >= 0, f"holdout_batches={holdout_batches} must be >= 0 (0 turns the held-out level off)"),
            (
                recovery_batches is None or recovery_batches >= 1,
                f"recovery_batches={recovery_batches} must be >= 1 (None: reward_batches)",
            ),
            (
                recovery_steps == 0 or decision != "greedy",
                f"recovery_steps={recovery_steps} scores the candidate counts of decision='reward' or 'budget', "
                "but decision='greedy' scores none: use decision='reward' or recovery_steps=0",
            ),
            (max_cache_mb >= 0, f"max_cache_mb={max_cache_mb} must be >= 0"),
            (layers is None or len(layers) > 0, "layers=[] selects nothing: pass None to prune every group"),
        ]
        checks.append((is_min_keep(min_keep), f"min_keep={min_keep!r} must be a count >= 1 or a fraction in (0, 1]"))
        for ok, message in checks:
            if not ok:
                raise MisconfigurationException(f"RLPruneCallback: {message}")
        self.b = float(b)
        self.layers = list(layers) if layers is not None else None
        self.start_epoch = start_epoch
        self.finetune_epochs = finetune_epochs
        self.num_samples = num_samples
        self.agent_updates = agent_updates
        self.reward_batches = reward_batches
        self.reward = reward
        self.min_keep = min_keep
        self.agent_lr = agent_lr
        self.entropy_coef = entropy_coef
        self.init_keep = init_keep
        self.l1_prior = l1_prior
        self.decision = decision
        self.decision_counts = decision_counts
        self.budget_schedule = budget_schedule
        self.drop_from = drop_from
        self.calibration_batches = calibration_batches
        self.recovery_steps = recovery_steps
        self.recovery_lr = recovery_lr
        self.recovery_batches = recovery_batches
        self.p_star_draws = p_star_draws
        self.holdout_batches = holdout_batches
        self.cache = cache
        self.max_cache_mb = max_cache_mb
        self.monitor = monitor
        self.seed = seed
        self._reset_state()

    def _reset_state(self) -> None:
        self.groups: list[str] = []
        self.stakes: list[int] | None = None  # MACs at stake per group, for budget_schedule="macs"
        self.done = 0
        self.p_star: float | None = None
        self.baseline: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.last_search: dict[str, Any] | None = None
        self._monitor_checked = False

    # -- hyper-parameters as plain data (loggers' run config) --------------------------------------------

    @property
    def hparams(self) -> dict[str, Any]:
        keys = (
            "b", "layers", "start_epoch", "finetune_epochs", "num_samples", "agent_updates", "reward_batches",
            "reward", "min_keep", "agent_lr", "entropy_coef", "init_keep", "l1_prior", "decision", "decision_counts",
            "budget_schedule", "drop_from", "calibration_batches", "recovery_steps", "recovery_lr", "recovery_batches",
            "p_star_draws", "holdout_batches", "cache", "max_cache_mb", "monitor", "seed",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    # -- setup: every check before any training time is spent ---------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, ImageClassifier):
            raise MisconfigurationException(
                "RLPruneCallback needs a `lightning_prune.ImageClassifier` (or a subclass): it records the "
                f"pruning plan in the module's checkpoint. Got {type(pl_module).__name__}; wrap your network "
                "as `ImageClassifier(model=your_network, num_classes=...)`."
            )
        self._check_validation(trainer, pl_module)
        model = pl_module.model
        inputs = surgery.example_input(model, pl_module.plan.input_shape)
        graph = surgery.build_graph(model, inputs)
        groups = surgery.channel_groups(model, graph, inputs)
        if not groups:
            raise MisconfigurationException(
                f"RLPruneCallback: {type(model).__name__} has no prunable convolution channels (no Conv2d whose "
                "output feeds another layer). Use a convolutional network."
            )
        if not self.groups:  # a resumed run keeps the groups it started with
            try:
                chosen = surgery.select_groups(groups, self.layers)
            except ValueError as err:
                raise MisconfigurationException(f"RLPruneCallback: {err}") from err
            self.groups = [g.name for g in chosen]
            if self.budget_schedule == "macs":
                self.stakes = macs_at_stake(model, inputs, self.groups)
            sizes = {g.name: g.size for g in chosen}
            if isinstance(self.min_keep, int):
                small = {n: s for n, s in sizes.items() if s <= self.min_keep}
                if small:
                    raise MisconfigurationException(
                        f"RLPruneCallback: min_keep={self.min_keep} leaves nothing to prune in {small} "
                        "(layer: filters); lower min_keep or pass it as a fraction such as 0.1"
                    )
        self._check_schedule(trainer)
        tracking.log_hyperparams(trainer, self.hparams)

    def _check_validation(self, trainer: pl.Trainer, pl_module: ImageClassifier) -> None:
        """Candidates are scored on the validation split and `monitor` is read from validation: both must exist."""
        if trainer.limit_val_batches == 0:
            raise MisconfigurationException(
                "RLPruneCallback: limit_val_batches=0 turns validation off, but candidates are scored on the "
                "validation split and `monitor` is logged by validation. Keep limit_val_batches > 0."
            )
        loader = scoring.validation_loader(trainer)
        available, needed = scoring.batch_count(loader), self._scored_batches() + self.holdout_batches
        if self.holdout_batches and available is not None and available < needed:
            raise MisconfigurationException(self._holdout_message(available))
        declared = _declared_metrics(trainer, pl_module)
        if declared is not None and self.monitor not in declared:
            raise MisconfigurationException(
                f"RLPruneCallback: monitor={self.monitor!r} is never logged: {type(pl_module).__name__}'s "
                f"validation logs {', '.join(declared)}. Set `monitor` to the validation accuracy in percentage "
                "points (monitor='val_acc')."
            )

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        needed = self.start_epoch + max(len(self.groups) * self.finetune_epochs, 1)
        if trainer.fast_dev_run:
            if needed > 1:
                rank_zero_warn(
                    f"RLPruneCallback: fast_dev_run runs one epoch, so only the layers scheduled at epoch 0 are "
                    f"pruned (the full schedule needs {needed} epochs)."
                )
        elif trainer.max_epochs is not None and 0 <= trainer.max_epochs < needed:
            raise MisconfigurationException(
                f"RLPruneCallback: the schedule needs max_epochs >= {needed} (start_epoch={self.start_epoch} + "
                f"{len(self.groups)} layers x finetune_epochs={self.finetune_epochs}), got "
                f"max_epochs={trainer.max_epochs}. Raise max_epochs to {needed}, or lower start_epoch / "
                "finetune_epochs / select fewer layers."
            )

    def _check_monitor(self, trainer: pl.Trainer) -> None:
        if self._monitor_checked:
            return
        if self.monitor not in trainer.callback_metrics:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise MisconfigurationException(
                f"RLPruneCallback: monitor={self.monitor!r} is not logged during validation. Logged metrics: "
                f"{logged}. Set `monitor` to the validation accuracy in percentage points."
            )
        self._monitor_checked = True

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_monitor(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._check_monitor(trainer)

    # -- schedule ------------------------------------------------------------------------------------------

    def _epoch_of(self, k: int) -> int:
        return self.start_epoch + k * self.finetune_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The search leaves the global random streams as they were, so the data order and augmentation of
        # training are those of a run without pruning, and a resumed run continues them exactly.
        with isolate_rng():
            while self.done < len(self.groups) and self._epoch_of(self.done) <= trainer.current_epoch:
                self._prune_group(trainer, pl_module, self.groups[self.done])
                self.done += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.baseline is None:
            return
        final = {**self._cost(pl_module), "val_acc": _metric(trainer, self.monitor)}
        summary = {"b": self.b, "baseline": self.baseline, "final": final, "layers": self.history}
        tracking.write_summary(trainer, summary)
        tracking.log_final(trainer, summary)

    # -- one pruning point -----------------------------------------------------------------------------------

    def _cost(self, pl_module: pl.LightningModule) -> dict[str, int]:
        model = pl_module.model
        return model_cost(model, surgery.example_input(model, pl_module.plan.input_shape)).as_dict()

    def _prune_group(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        model = pl_module.model
        inputs = surgery.example_input(model, pl_module.plan.input_shape)
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
        batches = scoring.first_batches(trainer, pl_module, "val", self.reward_batches)
        holdout = self._holdout(trainer, pl_module)
        calibration = scoring.calibration_inputs(trainer, pl_module, self.calibration_batches, seed)
        baseline_cost = self._cost(pl_module) if self.p_star is None else None  # the unpruned model, once
        # `level`: the layer's unpruned score that drops are measured from (on the held-out batches, if any).
        recovery, reference, level, p_star_scores = None, None, None, None
        if self.recovery_steps:
            unpruned_mask = torch.ones(1, size, dtype=torch.bool)
            recovery = self._recovery(trainer, pl_module, name, inputs, calibration, seed)
            reference = _score_shared(trainer, pl_module, recovery, unpruned_mask)[0]
            level = reference
            if holdout:  # the same recovery, scored on the held-out batches
                held_out = self._recovery(trainer, pl_module, name, inputs, calibration, seed, holdout)
                level = _score_shared(trainer, pl_module, held_out, unpruned_mask)[0]
            if self.p_star is None:
                # Draws on other training batches; their seeds follow the layers' so no layer shares them.
                first = self.seed + len(self.groups)
                p_star_scores = [level] + [
                    _score_shared(
                        trainer,
                        pl_module,
                        self._recovery(trainer, pl_module, name, inputs, calibration, s, holdout or None),
                        unpruned_mask,
                    )[0]
                    for s in range(first, first + self.p_star_draws - 1)
                ]
                self.p_star = sum(p_star_scores) / len(p_star_scores)
        elif holdout:
            level = scoring.evaluate(model, holdout, trainer.precision_plugin.forward_context)
        with (
            scoring.CandidateScorer(
                model,
                maps,
                batches,
                trainer.precision_plugin.forward_context,
                self.cache,
                self.max_cache_mb,
                calibration=calibration,
            ) as scorer,
            tracking.SearchTracker(trainer, name, len(self.history), len(self.groups), self.agent_updates) as track,
        ):
            unpruned = scorer.accuracy()
            level = unpruned if level is None else level
            if self.p_star is None:
                self.p_star = level
            if baseline_cost is not None:
                self.baseline = {**baseline_cost, "val_acc": _metric(trainer, self.monitor, self.p_star)}
                if p_star_scores is not None:
                    self.baseline["p_star_scores"] = p_star_scores
            # A sample (scored without recovery, on the reward batches) counts as the level minus its own drop.
            offset = level - unpruned
            p_ref = self._p_ref(level)
            step_stats = []
            for update in range(self.agent_updates):
                masks = search.sample(self.num_samples)
                rewards = self._rewards(_score_shared(trainer, pl_module, scorer, masks), masks, p_ref, offset)
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
            pl_module.prune(name, removed, graph)
            context = trainer.precision_plugin.forward_context
            scoring.reestimate_batchnorm(pl_module.model, calibration, context)
        cost = self._cost(pl_module)
        record = {
            "index": len(self.history),
            "name": name,
            "before": size,
            "after": size - len(removed),
            "decision_acc": decision_acc,
            "reference": level,
            "reward_mean": step_stats[-1][0],
            "reward_best": max(best for _, best in step_stats),
            "keep_probs": [round(p, 4) for p in search.probs().tolist()],
            "budget": self._budget(),
            **cost,
        }
        if recovery is not None:
            record["recovered_reference"] = level
        self.history.append(record)
        self.last_search = {"name": name, **search.state_dict()}
        tracking.log_layer(trainer, pl_module, record, self.baseline, len(self.groups), self.p_star, self.b)

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
            pl_module.model,
            name,
            inputs,
            calibration,
            scoring.first_batches(trainer, pl_module, "train", self.recovery_steps, seed=seed, shuffle=True),
            batches or scoring.first_batches(trainer, pl_module, "val", self.recovery_batches or self.reward_batches),
            self.recovery_lr,
            trainer.precision_plugin.forward_context,
            seed,
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
        holdout = scoring.first_batches(trainer, pl_module, "val", skip + self.holdout_batches)[skip:]
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

    def _rewards(self, accs: list[float], masks: torch.Tensor, p_ref: float, offset: float = 0.0) -> torch.Tensor:
        """The rewards of masks scoring `accs`, each scored as the accuracy `acc + offset`, against `p_ref`."""
        reward_fn, size = REWARDS[self.reward], masks.shape[1]
        budget = self._budget()
        kept = masks.sum(1).tolist()
        return torch.tensor([reward_fn(p_ref, a + offset, budget, size, k) for a, k in zip(accs, kept, strict=True)])

    def _budget(self) -> float:
        return budget_at(self.b, len(self.history), len(self.groups), self.budget_schedule, self.stakes)

    def _p_ref(self, reference: float) -> float:
        """The accuracy this layer's drops are measured from: `p*`, or (`drop_from="layer"`) the layer's own
        unpruned score raised by the drops that the layers pruned before it were charged."""
        if self.drop_from == "start":
            return self.p_star
        return reference + charged(r["reference"] - r["decision_acc"] for r in self.history)

    def _choose(self, accs: list[float], masks: torch.Tensor, p_ref: float) -> int:
        """The index of the mask the decision keeps among `masks` scoring `accs` (one of them keeps all)."""
        if self.decision == "budget":
            kept = masks.sum(1).tolist()
            best = fewest_within([p_ref - a for a in accs], kept, self._budget())
            return best if best is not None else kept.index(max(kept))
        return int(self._rewards(accs, masks, p_ref).argmax())

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
        accs = [a + offset for a in _score_shared(trainer, pl_module, scorer, masks)]
        return masks[self._choose(accs, masks, p_ref)]

    def _candidates(self, search: LayerSearch) -> torch.Tensor:
        """The agent's greedy mask and the masks keeping its `decision_counts` counts of most likely filters."""
        ranked = ranked_masks(search.probs(), search.min_keep, self.decision_counts)
        return torch.cat([search.decision()[None], ranked])

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
        full = torch.ones_like(candidates[0])
        unique = list({tuple(m.tolist()): m for m in candidates if not m.all()}.values())
        masks = torch.stack([full, *unique])
        accs = [a + shift for a in [reference, *_score_shared(trainer, pl_module, recovery, masks[1:])]]
        best = int(trainer.strategy.broadcast(self._choose(accs, masks, p_ref), src=0))
        return masks[best], accs[best]

    # -- resumable state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "stakes": self.stakes,
            "done": self.done,
            "p_star": self.p_star,
            "baseline": self.baseline,
            "history": self.history,
            "last_search": self.last_search,
            "rng": _get_rng(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [k for k in ("groups", "done", "p_star", "baseline", "history") if k not in state_dict]
        if missing:
            raise ValueError(
                f"The checkpoint's RLPruneCallback state lacks {missing}: it was not saved by this callback. "
                "Resume from a checkpoint of an RLPruneCallback run, or start the run without ckpt_path."
            )
        self.groups = list(state_dict["groups"])
        self.stakes = state_dict.get("stakes", self.stakes)  # older checkpoints have none: keep setup's
        self.done = int(state_dict["done"])
        self.p_star = state_dict["p_star"]
        self.baseline = state_dict["baseline"]
        self.history = list(state_dict["history"])
        self.last_search = state_dict.get("last_search")
        if state_dict.get("rng") is not None:
            # At once, not at the next epoch start: Lightning draws the first epoch's data order (and prefetches
            # a batch) before any epoch hook of a resumed run.
            _set_rng(state_dict["rng"])


# -- helpers: data, distribution, random state ---------------------------------------------------------------


def _metric(trainer: pl.Trainer, key: str, default: float | None = None) -> float | None:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else default


def _declared_metrics(trainer: pl.Trainer, pl_module: ImageClassifier) -> tuple[str, ...] | None:
    """What validation logs, known before it runs: an ImageClassifier whose validation code is its own and no
    callback from outside Lightning and this package (those may log too). None: only a validation run tells."""
    hooks = ("validation_step", "_step", "_log_accuracy", "on_validation_epoch_end", "on_validation_batch_end")
    if any(getattr(type(pl_module), h, None) is not getattr(ImageClassifier, h, None) for h in hooks):
        return None
    own = ("pytorch_lightning", "lightning", "lightning_prune")
    if any(type(cb).__module__.split(".")[0] not in own for cb in trainer.callbacks):
        return None
    return ImageClassifier.validation_metrics


def _score_shared(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    scorer: scoring.CandidateScorer | scoring.RecoveryScorer,
    masks: torch.Tensor,
) -> list[float]:
    """Each rank scores its share of the masks; the accuracies are summed across ranks."""
    accs = torch.zeros(len(masks), dtype=torch.float64, device=pl_module.device)
    for i in range(trainer.global_rank, len(masks), trainer.world_size):
        accs[i] = scorer.accuracy(masks[i])
    if trainer.world_size > 1:
        accs = trainer.strategy.reduce(accs, reduce_op="sum")
    return accs.tolist()


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
