"""`RLPruneCallback`: filters removed in the order agents learn, to the level the accuracy budget affords."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune.callbacks.base import PruningCallback
from lightning_prune.callbacks.group_search import GroupSearch
from lightning_prune.callbacks.options import RLOptions, is_number
from lightning_prune.callbacks.session import Session
from lightning_prune.engine import data
from lightning_prune.engine.metric import MetricSpec
from lightning_prune.io import tracking
from lightning_prune.search import level
from lightning_prune.search.floors import min_keep_count


class RLPruneCallback(PruningCallback):
    """Remove convolution filters, in the order agents learn, down to the smallest network that loses `b` points.

    At `start_epoch`, before training:

    1. **Where.** An agent per channel group (lowest group first, or in `layers` order) samples
       `options.num_samples` keep/remove masks over the group's filters, each scored on the first
       `options.reward_batches` validation batches with the following BatchNorm layers re-estimated, and is
       updated by REINFORCE with the reward `(1 - max(p* - p, 0) / b) * log(N / kept)` (Huang et al., 2018;
       "yang": `N / kept`). Its keep probabilities order the group's filters, least likely first: the network at
       any level is a prefix of these orders, every group losing the same fraction of its filters.
    2. **How much.** `options.probes` probes each cut the network to a level, train it for a cycle of
       `options.probe_batches` training steps whose learning rate decays to 0, and read the drop paired with the
       unpruned network on the same held-out validation images (those after the reward batches:
       `options.check_batches`). The first probe also trains a cycle four times as long from its cut: its two
       readings tell how much of a one-cycle drop the run's remaining training recovers, which carries every
       probe to the end of the run. A curve through the probes chooses the largest level whose predicted drop,
       plus half a standard error, is within `b` (`lightning_prune.search.level`). Each probe is undone before the next.
    3. The network is cut to that level, and the rest of the run fine-tunes it. The summary shows every probe,
       the chosen level with its predicted drop, and the drop realised at the end on the same images.

    Any LightningModule is pruned: the convolutions of its `forward` (traced with `example_input_array`, else
    the first training batch's inputs), scored with `metric` on batches that `options.unpack_batch` splits into
    `(inputs, target)`, trained in probes by its own `training_step` (automatic optimization). `b` is in points
    of that metric: a metric valued in [0, 1] counts x100. The module's checkpoints carry the pruned structure
    (`lightning_prune.engine.plan`). Under DDP every rank scores a share of the masks and batches and applies rank 0's
    decisions. The search and probes leave the global random streams as they found them and happen inside one
    hook, so a resumed run continues as an uninterrupted one; it must keep `b` and `layers`. Bad arguments fail
    when the callback is constructed; a schedule, layer, batch, metric or `forward` that does not fit the run
    fails at `setup`, before any training.

    One `RLPruneCallback` per Trainer (Lightning refuses two with the same `state_key`): list every layer to prune
    in one callback's `layers`.

    Args:
        b: the drop of the network's score the user accepts, in points of `metric` (> 0, finite).
        layers: layer names or fnmatch patterns selecting the groups to prune, in this order (None: every
            prunable convolution group, lowest first).
        start_epoch: epoch at which the network is pruned (0 prunes the model as given: pass a trained one).
        min_keep: filters every group keeps: a count (int >= 1) or a fraction of the group (float in (0, 1)).
        metric: what is scored: None (top-1 agreement of the argmax over dim 1 with integer targets: accuracy,
            or pixel accuracy for (B, C, H, W) outputs), a torchmetrics `Metric` (e.g. `MulticlassJaccardIndex`
            for mIoU) or a callable `(preds, target) -> float`; higher is better.
        monitor: a logged metric reported as the summary's baseline and final value (None: the callback's own
            `metric` on the held-out validation batches). Read for reporting only.
        seed: seeds agents, sampling and the probes' batches; the same seed gives the same decisions.
        options: the search's other settings (`lightning_prune.RLOptions`; None: its defaults).

    Example::

        trainer = L.Trainer(max_epochs=15, callbacks=[RLPruneCallback(b=1.0)])
        trainer.fit(my_trained_module, datamodule=dm)
    """

    options_type = RLOptions
    arguments = ("b", "layers", "start_epoch", "min_keep", "monitor", "seed")
    resume_args = ("b", "layers")
    run_state = ("orders", "dense", "probes", "level")

    def __init__(
        self,
        b: float = 1.0,
        layers: list[str] | None = None,
        start_epoch: int = 0,
        min_keep: int | float = 0.1,
        metric: MetricSpec = None,
        monitor: str | None = None,
        seed: int = 0,
        options: RLOptions | None = None,
    ) -> None:
        budget = (
            is_number(b) and math.isfinite(b) and b > 0,
            f"b={b!r} must be a number > 0 and finite: it is the drop (points of the metric) the network may lose",
        )
        options = RLOptions() if options is None else options
        super().__init__(layers, start_epoch, 0, min_keep, metric, monitor, seed, options, [budget])
        self.b = float(b)
        self._reset()

    def _reset(self) -> None:
        self.orders: dict[str, list[int]] = {}  # each group's filters, the first to go first
        self.dense: list[float] | None = None  # the unpruned network's score per held-out batch
        self.probes: list[dict[str, Any]] = []
        self.level: dict[str, Any] | None = None  # the chosen level, once the network is cut to it

    # -- setup -------------------------------------------------------------------------------------------------

    def _budget_points(self) -> float:
        return self.b

    def _setup_groups(self, trainer: pl.Trainer, network: torch.nn.Module, inputs: torch.Tensor, graph: Any) -> None:
        self._check_split(trainer)
        if not trainer.lightning_module.automatic_optimization:
            raise MisconfigurationException(
                f"RLPruneCallback: {type(trainer.lightning_module).__name__} uses manual optimization, but the "
                "probes train the cut network with the module's training_step and the run's optimizer "
                "(automatic optimization). Prune it with automatic optimization, or use DistributionPruneCallback."
            )
        if isinstance(self.min_keep, int):
            small = {n: w for n, w in self.widths.items() if w <= self.min_keep}
            if small:
                raise MisconfigurationException(
                    f"RLPruneCallback: min_keep={self.min_keep} leaves nothing to prune in {small} "
                    "(layer: filters); lower min_keep or pass it as a fraction such as 0.1"
                )

    def _check_split(self, trainer: pl.Trainer) -> None:
        available = data.batch_count(data.loader(trainer, "val"))
        if available is None and self.options.check_batches is None:
            raise MisconfigurationException(
                "RLPruneCallback: the validation dataset has no length, so the batches after the reward batches that "
                "the probes are measured on cannot be counted. Set options.check_batches (e.g. 20)."
            )
        reward, needed = self.options.reward_batches, self.options.reward_batches + (self.options.check_batches or 1)
        if available is not None and available < needed:
            raise MisconfigurationException(
                f"RLPruneCallback: the probes are measured on validation batches after the {reward} the search "
                f"scores (options.reward_batches), so the validation split needs at least {needed} batches, but it "
                f"has {available}. Hold out more training data for validation, or lower options.reward_batches / "
                "options.check_batches."
            )
        if self.options.probe_batches is None and data.batch_count(data.loader(trainer, "train")) is None:
            raise MisconfigurationException(
                "RLPruneCallback: the training data has no length, so a probe's cycle cannot be one epoch long. "
                "Set options.probe_batches (e.g. 100)."
            )

    def _schedule_epochs(self) -> int:
        return self.start_epoch + 1

    def _schedule_text(self) -> str:
        return f"pruning at start_epoch={self.start_epoch} and an epoch of fine-tuning after it"

    # -- the one pruning point: learn the orders, probe, cut ---------------------------------------------------

    def _due(self, trainer: pl.Trainer) -> bool:
        return self.level is None and trainer.current_epoch >= self.start_epoch

    def _step(self, trainer: pl.Trainer, run: Session) -> None:
        remaining = _remaining_batches(trainer)
        checks = self._check_batches(run)
        self.dense = run.batch_scores(checks)
        self.baseline = {**run.cost(), "val_acc": self.baseline_score(trainer, sum(self.dense) / len(self.dense))}
        if remaining < 1:
            rank_zero_warn(
                f"RLPruneCallback: no training is left after epoch {trainer.current_epoch} to fine-tune a pruned "
                "network, so nothing is pruned. Raise max_epochs / max_steps, or lower start_epoch."
            )
            self.level = {"ratio": 0.0, "predicted": 0.0, "epoch": trainer.current_epoch}
            return
        if not self.orders:
            self._learn_orders(run)
        cycle = self.options.probe_batches or int(trainer.num_training_batches)
        top = level.max_ratio(self.widths, self._floors())
        while len(self.probes) < self.options.probes:
            ratio = level.next_ratio(self.probes, self.b, top)
            self.probes.append(self._probe(run, ratio, checks, cycle, remaining))
        chosen = self._cut_finite(run, level.choose(self.probes, self.b, top), checks)
        self.record_cuts(trainer, run, self.widths)
        self.level = {**chosen, "epoch": trainer.current_epoch, "macs_removed": self._macs_removed(run)}
        tracking.log_level(trainer, self.probes, self.level)
        self.info(
            f"pruned {100 * self.level['macs_removed']:.1f}% of the MACs (ratio {chosen['ratio']:.3f} of every "
            f"group), predicted final drop {chosen['predicted']:.2f} of b={self.b}"
        )

    def _cut_finite(self, run: Session, chosen: dict[str, Any], checks: list[data.Batch]) -> dict[str, Any]:
        """Cut to the `chosen` level; if the cut network's held-out outputs are not finite, undo it and cut to the
        next lower level a probe measured as finite, else leave the network dense, with a warning. Returns the
        level kept."""
        lower = sorted({p["ratio"] for p in self.probes if math.isfinite(p["predicted"])}, reverse=True)
        for ratio in [chosen["ratio"], *(r for r in lower if r < chosen["ratio"])]:
            if ratio == 0:
                break
            snapshot = run.snapshot()
            self._cut_to(run, ratio)
            if all(math.isfinite(v) for v in run.batch_scores(checks)):
                predicted = level.curve(ratio, chosen["scale"], chosen["alpha"])
                return chosen if ratio == chosen["ratio"] else {**chosen, "ratio": ratio, "predicted": predicted}
            snapshot.restore(run.trainer)
            rank_zero_warn(
                f"RLPruneCallback: the network cut to ratio {ratio:.3f} ({', '.join(self.groups)}) gives outputs "
                "that are not finite (NaN or inf) on the held-out batches: the cut is undone."
            )
        return {**chosen, "ratio": 0.0, "predicted": 0.0}

    def _floors(self) -> dict[str, int]:
        return {name: min_keep_count(self.min_keep, width) for name, width in self.widths.items()}

    def _macs_removed(self, run: Session) -> float:
        return 1 - run.cost()["macs"] / self.baseline["macs"]

    def _probe(self, run: Session, ratio: float, checks: list[data.Batch], cycle: int, remaining: float) -> dict:
        """Cut to `ratio`, train a decaying cycle from the cut (the first probe also one `level.SPAN` times as
        long, which measures how much of the drop training recovers), read the paired drop after each; then undo
        it all and predict the drop after `remaining` batches."""
        lengths = [cycle] if self.probes else [cycle, level.SPAN * cycle]
        snapshot, readings = run.snapshot(), []
        try:
            self._cut_to(run, ratio)
            macs_removed = self._macs_removed(run)
            for i, length in enumerate(lengths):
                cut = run.snapshot() if i + 1 < len(lengths) else None
                run.train(length, seed=self.seed + len(self.probes) + i)
                readings.append(level.paired_drop(self.dense, run.batch_scores(checks)))
                if cut is not None:
                    cut.restore(run.trainer)
        finally:
            snapshot.restore(run.trainer)
        first = self.probes[0]["readings"] if self.probes else [[r.drop, r.se] for r in readings]
        share = level.recovery(first[0][0], first[1][0], cycle, remaining)
        predicted, se = level.predicted_reading(readings[0], share)
        pairs = [[r.drop, r.se] for r in readings]
        probe = {"ratio": ratio, "macs_removed": macs_removed, "cycles": lengths, "readings": pairs}
        probe.update(recovery=share, predicted=predicted, se=se)
        if not math.isfinite(probe["predicted"]):
            rank_zero_warn(
                f"RLPruneCallback: the network cut to ratio {ratio:.3f} ({', '.join(self.groups)}) scores non-finite "
                f"values after training (readings {probe['readings']}): that level and any beyond it are refused."
            )
            probe["predicted"] = math.inf
        drops = " then ".join(f"{r.drop:.2f} +- {r.se:.2f} ({n} steps)" for r, n in zip(readings, lengths, strict=True))
        self.info(
            f"probe {len(self.probes) + 1}/{self.options.probes}: {100 * macs_removed:.1f}% of the MACs, drop "
            f"{drops}, predicted final {predicted:.2f} (recovery {share:.2f})"
        )
        return probe

    def _cut_to(self, run: Session, ratio: float) -> None:
        """Cut every group's first filters of its order at `ratio` (BatchNorm statistics re-estimated)."""
        cuts = level.removals(self.orders, ratio, self._floors())
        if cuts:
            run.cut(cuts, run.graph(), run.calibration(self.seed))

    # -- where: each group's order, learned once -----------------------------------------------------------------

    def _learn_orders(self, run: Session) -> None:
        graph, floors = run.graph(), self._floors()
        batches, calibration = run.batches("val", self.options.reward_batches), run.calibration(self.seed)
        for index, name in enumerate(self.groups):
            search = GroupSearch(run, name, floors[name], self.options, self.b, seed=self.seed + index)
            self.orders[name] = search.order(graph, batches, calibration, (index, len(self.groups)))

    # -- held-out measurements ---------------------------------------------------------------------------------

    def _check_batches(self, run: Session) -> list[data.Batch]:
        skip, count = self.options.reward_batches, self.options.check_batches
        if count is None:
            count = data.batch_count(data.loader(run.trainer, "val")) - skip
        return run.batches("val", skip + count)[skip:]

    def _summary(self, trainer: pl.Trainer, run: Session) -> dict[str, Any] | None:
        if self.baseline is None or self.dense is None:
            return None
        scores = run.batch_scores(self._check_batches(run))
        if not all(math.isfinite(v) for v in scores):
            rank_zero_warn(
                "RLPruneCallback: at the end of training the network's outputs on the held-out batches are not "
                f"finite (NaN or inf); it was cut to ratio {(self.level or {}).get('ratio', 0.0):.3f} with finite "
                "outputs, so the training after the cut diverged: lower the learning rate."
            )
        realised, check = level.paired_drop(self.dense, scores), sum(scores) / len(scores)
        final = {
            "val_acc": self.monitored(trainer) if self.monitor is not None else check,
            "check": check,
            "drop": realised.drop,
            "se": realised.se,
        }
        baseline = {**self.baseline, "check": sum(self.dense) / len(self.dense)}
        return {"b": self.b, "baseline": baseline, "final": final, "probes": self.probes, "level": self.level}

    # -- resumable state -------------------------------------------------------------------------------------

    def _load_state(self, state: dict[str, Any]) -> None:
        if "orders" not in state or "level" not in state:
            raise ValueError(
                "The checkpoint's RLPruneCallback state lacks ['orders', 'level']: it was saved by an earlier version "
                "of the callback, which pruned in measured steps. Start the run without ckpt_path (the pruned "
                "weights load with load_from_checkpoint), or resume with the version that saved it."
            )


def _remaining_batches(trainer: pl.Trainer) -> float:
    """Training batches left in the run from the current epoch on (inf: no limit)."""
    left = math.inf
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        left = (trainer.max_epochs - trainer.current_epoch) * trainer.num_training_batches
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        left = min(left, trainer.max_steps - trainer.global_step)
    return left
