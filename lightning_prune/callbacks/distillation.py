"""Knowledge distillation while fine-tuning a pruned model: the unpruned model teaches the pruned one.

`DistillationCallback` takes a frozen copy of the model before pruning changes it and sets it as the
`ImageClassifier.distiller`, whose extra loss term is added to the training loss (Hinton et al., 2015).
The teacher is a plain attribute of a plain object, so it is in neither the module's state dict (checkpoints)
nor its parameters (optimizer, DDP); it stays in eval mode, on the student's device and dtype, and runs inside
the training step's autocast context (mixed precision).
"""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune.zoo.module import ImageClassifierBase


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(teacher / T) || softmax(student / T))`, batch mean, computed in float32."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


class Distiller:
    """A frozen teacher and the weighted distillation term: `distiller(x, student_logits) -> loss term`.

    Args:
        teacher: the teacher network (frozen and set to eval mode here; pass a copy).
        temperature: softmax temperature (> 0).
        weight: factor of the term added to the training loss (>= 0).
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, weight: float = 0.5) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        for p in self.teacher.parameters():
            p.grad = None
        self.temperature = temperature
        self.weight = weight

    def __call__(self, x: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        param = next(self.teacher.parameters(), None)
        if param is not None and param.device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return self.weight * distillation_loss(student_logits, teacher_logits, self.temperature)


class DistillationCallback(Callback):
    """Distil the unpruned model into the model being pruned while it fine-tunes.

    The teacher is a frozen copy of `pl_module.model` taken at fit start, or, with `teacher_epoch > 0`, after
    that many training epochs (set it to the pruning callback's `start_epoch` when training from scratch;
    the copy is taken before the next epoch's pruning). From then on the module's training loss is
    `cross-entropy + weight * T^2 * KL(teacher || student)` at temperature T, logged as `train_kd_loss`.
    A run resumed from a checkpoint past `teacher_epoch` distils from the model as restored.

    Args:
        temperature: softmax temperature T (> 0).
        weight: weight of the distillation term (>= 0).
        teacher_epoch: training epochs before the teacher is copied (0: at fit start).

    Example::

        Trainer(callbacks=[DistributionPruneCallback(target=0.5), DistillationCallback(temperature=4.0)])
    """

    def __init__(self, temperature: float = 4.0, weight: float = 0.5, teacher_epoch: int = 0) -> None:
        super().__init__()
        checks = [
            (temperature > 0, f"temperature={temperature} must be > 0"),
            (weight >= 0, f"weight={weight} must be >= 0 (factor of the distillation term)"),
            (teacher_epoch >= 0, f"teacher_epoch={teacher_epoch} must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise MisconfigurationException(f"DistillationCallback: {message}")
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.teacher_epoch = teacher_epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not isinstance(pl_module, ImageClassifierBase):
            raise MisconfigurationException(
                "DistillationCallback needs a `lightning_prune.ImageClassifier` (or a subclass): it adds the "
                f"distillation term through the module's `distiller`. Got {type(pl_module).__name__}."
            )

    def _attach(self, pl_module: pl.LightningModule) -> None:
        pl_module.distiller = Distiller(copy.deepcopy(pl_module.model), self.temperature, self.weight)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > self.teacher_epoch:
            rank_zero_warn(
                "DistillationCallback: the run resumes past teacher_epoch; the teacher is the model as restored."
            )
        if trainer.current_epoch >= self.teacher_epoch:
            self._attach(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.distiller is None and trainer.current_epoch + 1 >= self.teacher_epoch:
            self._attach(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(pl_module, ImageClassifierBase):
            pl_module.distiller = None
