"""`TrainingSnapshot`: the training state before a pruning step, to return to when the step costs too much."""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch.nn.parallel import DistributedDataParallel

from lightning_prune.engine import plan, surgery


def _copied(value: Any) -> Any:
    return value.detach().clone() if torch.is_tensor(value) else copy.deepcopy(value)


class TrainingSnapshot:
    """What a pruning step and the training after it change: the network's structure and values (parameters and
    buffers), its pruning plan, the optimizers (parameters, hyperparameters, state) and the LR schedulers.
    Held in memory; `restore()` puts all of it back, so the run continues as if the step had not been taken.
    """

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._module = pl_module
        network = plan.network_of(pl_module)
        optimizers = list(trainer.optimizers)
        self._structure = surgery.CutSnapshot(network, None, optimizers)
        # Values of every parameter and buffer of the module (the network's and any others the optimizers train).
        tensors = [p.data for p in pl_module.parameters()] + list(pl_module.buffers())
        self._values = [(t, t.detach().clone()) for t in tensors]
        self._optimizers = [
            (
                opt,
                [{k: _copied(v) for k, v in group.items() if k != "params"} for group in opt.param_groups],
                {p: {k: _copied(v) for k, v in state.items()} for p, state in opt.state.items()},
            )
            for opt in optimizers
        ]
        self._schedulers = [
            (config.scheduler, copy.deepcopy(config.scheduler.state_dict())) for config in trainer.lr_scheduler_configs
        ]
        saved = plan.plan_of(pl_module)
        self._steps = len(saved.steps) if saved is not None else 0

    def restore(self, trainer: pl.Trainer) -> None:
        """Return to the snapshot (once: it hands its saved tensors back)."""
        self._structure.restore()
        with torch.no_grad():
            for tensor, value in self._values:
                tensor.copy_(value)
        for opt, groups, state in self._optimizers:
            for group, saved in zip(opt.param_groups, groups, strict=True):
                group.update(saved)
            opt.state.clear()
            opt.state.update(state)
        for scheduler, state in self._schedulers:
            scheduler.load_state_dict(state)
        saved = plan.plan_of(self._module)
        if saved is not None:
            del saved.steps[self._steps :]
        if isinstance(trainer.strategy.model, DistributedDataParallel):  # its buckets hold the pruned parameters
            trainer.strategy.model = self._module
            trainer.strategy.configure_ddp()
