"""`ImageClassifier`: a LightningModule around any image-to-logits network, carrying its pruning plan.

`ImageClassifier` is a `pytorch_lightning.LightningModule`; `lightning_prune.lightning.ImageClassifier` is the
same module for `import lightning as L` (a Trainer accepts only modules of its own namespace).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.engine import plan
from lightning_prune.engine.plan import PLAN_KEY, Prunable, PruningPlan
from lightning_prune.zoo.models import build_model


class ImageClassifierBase(Prunable):
    """Cross-entropy classifier whose accuracy is logged in percentage points (`train_acc`, `val_acc`, `test_acc`).

    The pruning plan (which channels were removed) is part of the module's state dict, so a checkpoint of a
    pruned model loads into a freshly built, unpruned one: `ImageClassifier.load_from_checkpoint(path)`,
    `Trainer.fit(ckpt_path=...)` and a plain `load_state_dict` all rebuild the pruned shapes first.

    Args:
        model: a built-in or torchvision model name (see `lightning_prune.zoo.models.build_model`), or any
            `nn.Module` mapping images to logits (then pass `model=` again to `load_from_checkpoint`).
        num_classes: number of classes.
        in_channels: image channels (1 for grayscale).
        image_size: side of the square input images; used to trace the model.
        model_kwargs: extra arguments for `build_model` (e.g. `{"width": 0.25}`).
        optimizer: "sgd" (with Nesterov momentum), "adam" or "adamw".
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        scheduler: "cosine" (over `max_epochs`), "step" (x0.1 at 50% and 75% of `max_epochs`) or "none".
        label_smoothing: cross-entropy label smoothing.
        channels_last: keep weights and inputs in the channels_last memory format, usually faster for
            convolutions on CPU and under mixed precision on GPU; pruning keeps the layout.
        weights: a checkpoint (Lightning's, or a saved state dict) of this module whose weights, pruned shapes
            included, initialise it: a trained network to prune from a config. Not saved in the hyperparameters,
            so its checkpoints reload without that file.

    Example::

        model = ImageClassifier("vgg16", num_classes=10, model_kwargs={"width": 0.25})
        Trainer(max_epochs=30, callbacks=[RLPruneCallback(b=1.0)]).fit(model, datamodule=dm)
    """

    pruning_root = "model"

    #: Metrics its validation logs (the callback checks `monitor` against them before training).
    validation_metrics: tuple[str, ...] = ("val_loss", "val_acc")

    def __init__(
        self,
        model: str | nn.Module = "vgg16",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: Literal["cosine", "step", "none"] = "cosine",
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={optimizer!r} is not supported: use 'sgd', 'adam' or 'adamw'")
        if scheduler not in ("cosine", "step", "none"):
            raise ValueError(f"scheduler={scheduler!r} is not supported: use 'cosine', 'step' or 'none'")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.save_hyperparameters(ignore=["model", "weights"] if isinstance(model, nn.Module) else ["weights"])
        if isinstance(model, str):
            model = build_model(model, num_classes=num_classes, in_channels=in_channels, **(model_kwargs or {}))
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.example_input_array = torch.zeros(1, in_channels, image_size, image_size)
        self.plan = PruningPlan(input_shape=[1, in_channels, image_size, image_size])
        #: Extra training-loss term `distiller(x, logits)` (knowledge distillation, set by `DistillationCallback`).
        self.distiller: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        if weights is not None:
            if not Path(weights).is_file():
                raise FileNotFoundError(
                    f"weights={weights!r} is not a file: pass the path of a checkpoint of this module (e.g. the "
                    "last.ckpt of its dense training run)"
                )
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("state_dict", state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        getattr(self, f"{stage}_acc").update(logits.detach(), y)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        if stage == "train" and self.distiller is not None:
            distill = self.distiller(x, logits)
            self.log("train_kd_loss", distill)
            loss = loss + distill
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_accuracy(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_acc")
        self.log(f"{stage}_acc", metric.compute() * 100.0, prog_bar=True)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_accuracy("train")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.momentum > 0
            )
        else:
            cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
            opt = cls(params, lr=hp.lr, weight_decay=hp.weight_decay)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        elif hp.scheduler == "step":
            milestones = [max(1, epochs // 2), max(2, epochs * 3 // 4)]
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- pruning plan --------------------------------------------------------------------------------------

    def prune(self, name: str, idxs: list[int], graph: Any = None, optimizers: list | tuple | None = None) -> None:
        """Physically remove output channels `idxs` of layer `name` (and every coupled tensor); record the step.

        Attached to a Trainer, its optimizers (unless `optimizers` is given) follow the new parameters with their
        state sliced to the kept channels, and a DistributedDataParallel wrapper is rebuilt around the new shapes.
        """
        trainer = self._trainer
        if optimizers is None:
            optimizers = trainer.optimizers if trainer is not None else ()
        plan.prune(self, name, idxs, graph, optimizers)
        if trainer is not None and isinstance(trainer.strategy.model, DistributedDataParallel):
            trainer.strategy.model = self
            trainer.strategy.configure_ddp()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another network before anything is loaded (Lightning calls this first)."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        if PLAN_KEY not in state:
            raise ValueError(
                "The checkpoint has no pruning plan (state_dict key '_extra_state'): it was not saved from a "
                "lightning_prune ImageClassifier. Load it with the module class that saved it."
            )
        target = self._read_plan(state[PLAN_KEY])
        replayed = plan.replayed_state(self.model, self.plan.pending(target), target.input_shape)
        expected = {f"model.{k}": v.shape for k, v in replayed.items()}
        saved = {k: v.shape for k, v in state.items() if k.startswith("model.") and torch.is_tensor(v)}
        problems = [
            f"{k}: checkpoint {list(saved[k])}, model {list(s)}"
            for k, s in expected.items()
            if k in saved and saved[k] != s
        ]
        if self.strict_loading:
            problems += [f"{k}: missing from the checkpoint" for k in expected if k not in saved]
            problems += [f"{k}: not in the model" for k in saved if k not in expected]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(
                f"The checkpoint does not match this {type(self.model).__name__} (after replaying its pruning "
                f"plan): {shown}. Build the module with the checkpoint's hyper-parameters "
                "(`ImageClassifier.load_from_checkpoint(path)` does) or resume from a checkpoint of this network."
            )

    def _read_plan(self, state: Any) -> PruningPlan:
        target = PruningPlan.from_state(state)
        if target.input_shape[1:] != self.plan.input_shape[1:]:
            raise ValueError(
                f"The checkpoint's model was traced with input shape {target.input_shape[1:]} but this module "
                f"expects {self.plan.input_shape[1:]}: build it with the same in_channels and image_size"
            )
        return target


class ImageClassifier(ImageClassifierBase, pl.LightningModule):
    __doc__ = ImageClassifierBase.__doc__
