"""`Session`: what a pruning step does to the Trainer's module, bound once per step so that the callbacks' hooks
only orchestrate: the data it reads, scores shared across DDP ranks, cost, cuts, snapshots and training cycles."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_prune.engine import batchnorm, data, plan, scoring, surgery
from lightning_prune.engine.cost import model_cost
from lightning_prune.engine.cycle import train_cycle
from lightning_prune.engine.metric import Score, Unpack
from lightning_prune.engine.snapshot import TrainingSnapshot


class Pruner(Protocol):
    """What a session reads from its pruning callback (`callbacks.base.PruningCallback`)."""

    groups: list[str]
    input_shape: list[int] | None
    options: Any

    @property
    def unpack(self) -> Unpack: ...

    @property
    def score(self) -> Score: ...


class Session:
    """A pruning callback's services on one Trainer and module.

    Args:
        callback: the pruning callback (its scoring options, metric, example input shape and name).
        trainer: the Trainer running the fit.
        pl_module: the module being pruned.
    """

    def __init__(self, callback: Pruner, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.callback, self.trainer, self.module = callback, trainer, pl_module
        self.name = type(callback).__name__
        self.context = trainer.precision_plugin.forward_context

    @property
    def network(self) -> nn.Module:
        """The module's prunable network (see `plan.network_of`)."""
        return plan.network_of(self.module)

    def graph(self) -> Any:
        """The network's channel dependency graph now."""
        network = self.network
        return surgery.build_graph(network, surgery.example_input(network, self.callback.input_shape))

    def cost(self) -> dict[str, int]:
        """Params and MACs of the network now."""
        network = self.network
        return model_cost(network, surgery.example_input(network, self.callback.input_shape)).as_dict()

    def widths(self) -> dict[str, int]:
        """Each chosen group's filters now."""
        network = self.network
        return {name: surgery.out_channels(network.get_submodule(name)) for name in self.callback.groups}

    # -- data --------------------------------------------------------------------------------------------------

    def batches(
        self, split: Literal["train", "val"], count: int, seed: int | None = None, shuffle: bool = False
    ) -> list[data.Batch]:
        """The first `count` batches of a split as `(inputs, target)` (see `data.first_batches`)."""
        return data.first_batches(self.trainer, self.module, split, count, seed, shuffle, self.callback.unpack)

    def calibration(self, seed: int) -> list[torch.Tensor]:
        """The training inputs BatchNorm statistics are re-estimated on."""
        return [x for x, _ in self.batches("train", self.callback.options.calibration_batches, seed=seed)]

    # -- scores ------------------------------------------------------------------------------------------------

    def evaluate(self, batches: Sequence[data.Batch]) -> float:
        """The network's metric on `batches`."""
        return scoring.evaluate(self.network, batches, self.context, self.callback.score)

    def shared(self, score: Callable[[int], float], n: int, layer: str | None = None) -> list[float]:
        """`score(i)` for i < n, each rank computing its share; the scores are summed across ranks. A score that
        is not finite (NaN: the candidate's outputs or metric were not, see `scoring.evaluate`) comes back as
        -inf, so a higher-is-better choice refuses it, with a warning naming `layer`."""
        values = torch.zeros(n, dtype=torch.float64, device=self.module.device)
        for i in range(self.trainer.global_rank, n, self.trainer.world_size):
            value = score(i)
            values[i] = value if math.isfinite(value) else -math.inf
        if self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum")
        refused = int(torch.isinf(values).sum())
        if refused:
            rank_zero_warn(
                f"{self.name}: {refused} of {n} candidates of {layer or 'the model'} gave outputs or a score that "
                "are not finite (NaN or inf) and are refused."
            )
        return values.tolist()

    def batch_scores(self, batches: Sequence[data.Batch]) -> list[float]:
        """The network's score on each of `batches`, each rank scoring a share."""
        return self.shared(lambda i: self.evaluate(batches[i : i + 1]), len(batches))

    # -- changes -----------------------------------------------------------------------------------------------

    def cut(self, removals: dict[str, list[int]], graph: Any, calibration: Sequence[torch.Tensor]) -> dict:
        """Remove rank 0's `removals` (group name -> filter indices) on every rank, with the optimizers following,
        rebuild a DDP wrapper and re-estimate BatchNorm statistics. A cut that fails is skipped with a warning,
        the model, optimizers and plan as before it. Returns the cuts made."""
        trainer = self.trainer
        removals = trainer.strategy.broadcast(removals, src=0)
        done = {}
        for name, idxs in removals.items():
            try:
                step = plan.prune(self.module, name, idxs, graph, trainer.optimizers)
            except Exception as err:  # noqa: BLE001 - surgery restored the model; training goes on
                rank_zero_warn(f"{self.name}: cutting {name} failed and was skipped ({err}).")
                continue
            done[name] = step[2]  # grouped convolutions cut whole units: what was removed
        if done:
            if isinstance(trainer.strategy.model, DistributedDataParallel):
                trainer.strategy.model = self.module
                trainer.strategy.configure_ddp()
            batchnorm.reestimate_batchnorm(self.network, calibration, self.context)
        return done

    def snapshot(self) -> TrainingSnapshot:
        """What a cut and training change (weights, plan, optimizers, schedulers), to restore later."""
        return TrainingSnapshot(self.trainer, self.module)

    def train(self, steps: int, seed: int) -> None:
        """`steps` training steps of the module's own `training_step`, the learning rate decaying to 0."""
        train_cycle(self.trainer, self.module, steps, seed=seed)
