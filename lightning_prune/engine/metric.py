"""What pruning candidates are scored on: a metric of a model's outputs against targets, in points.

A batch is split into `(inputs, target)` by `unpack_batch` (default: a pair). The score is one of
- `TopOne` (the default): how often the argmax over dim 1 of the outputs agrees with integer targets: accuracy
  for (B, C) outputs, pixel accuracy for (B, C, H, W) outputs against (B, H, W) targets;
- a torchmetrics `Metric` (e.g. `MulticlassJaccardIndex` for mIoU), computed over all scored batches;
- a plain callable `(preds, target) -> float`, averaged over batches weighted by their size.

Scores are in points: a metric valued in [0, 1] counts x100 (a torchmetrics metric by its declared upper bound,
a callable by its value on the unpruned model). Higher must be better.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torchmetrics import Metric

#: Splits a batch into `(inputs, target)`.
Unpack = Callable[[Any], tuple[Any, Any]]
#: What a user passes as `metric`: None (top-1 agreement), a torchmetrics Metric or `(preds, target) -> float`.
MetricSpec = Metric | Callable[[torch.Tensor, torch.Tensor], Any] | None


def unpack_pair(batch: Any) -> tuple[Any, Any]:
    """`(inputs, target)` of a batch that is a pair, as Lightning's default collate makes of `(x, y)` samples.

    Raises:
        TypeError: the batch is not a list or tuple of two items.
    """
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    shape = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (list, tuple)) else "")
    raise TypeError(f"the batch is {shape}, not an (inputs, target) pair")


class Score(Protocol):
    """Accumulates a metric over batches."""

    def reset(self) -> None: ...

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None: ...

    def compute(self) -> float: ...


class TopOne:
    """Points of agreement between the argmax over dim 1 of `preds` and integer `target` (pixels equal to
    `ignore_index` are not counted)."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.correct: torch.Tensor | int = 0
        self.total: torch.Tensor | int = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.dim() < 2 or preds.shape[:1] + preds.shape[2:] != target.shape:
            raise ValueError(
                f"outputs of shape {list(preds.shape)} do not match targets of shape {list(target.shape)}: the "
                "default metric compares the argmax over dim 1 with integer targets of shape (B,) or (B, H, W)"
            )
        hit = preds.argmax(1) == target
        if self.ignore_index is not None:
            counted = target != self.ignore_index
            hit, self.total = hit & counted, self.total + counted.sum()
        else:
            self.total = self.total + target.numel()
        self.correct = self.correct + hit.sum()

    def compute(self) -> float:
        return 100.0 * int(self.correct) / max(int(self.total), 1)


class MetricScore:
    """A torchmetrics metric (a private copy, on the outputs' device), in points when its upper bound is 1."""

    def __init__(self, metric: Metric) -> None:
        self.metric = copy.deepcopy(metric)
        self.scale = 100.0 if getattr(metric, "plot_upper_bound", None) == 1.0 else 1.0

    def reset(self) -> None:
        self.metric.reset()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.to(preds.device)
        self.metric.update(preds.float(), target)

    def compute(self) -> float:
        return self.scale * float(self.metric.compute())


class CallableScore:
    """`fn(preds, target)` averaged over batches, weighted by their size, times `scale`."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], Any], scale: float = 1.0) -> None:
        self.fn, self.scale = fn, scale
        self.reset()

    def reset(self) -> None:
        self.weighted, self.count = 0.0, 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        size = len(target) if hasattr(target, "__len__") else 1
        self.weighted += float(self.fn(preds, target)) * size
        self.count += size

    def compute(self) -> float:
        return self.scale * self.weighted / max(self.count, 1)


def make_score(metric: MetricSpec, ignore_index: int | None = None) -> Score:
    """The accumulator of a user's `metric` argument (see the module docstring)."""
    if metric is None:
        return TopOne(ignore_index)
    if isinstance(metric, Metric):
        return MetricScore(metric)
    return CallableScore(metric)


def calibrate(score: Score, preds: torch.Tensor, target: torch.Tensor) -> float:
    """The score of one batch; a callable valued in [0, 1] is switched to points (x100) on the way.

    Raises:
        ValueError: the metric cannot be computed from these outputs and targets.
    """
    try:
        score.reset()
        score.update(preds, target)
        value = score.compute()
    except Exception as err:  # noqa: BLE001 - any failure means the metric does not fit the outputs
        raise ValueError(
            f"the metric cannot be computed from the model's outputs {_describe(preds)} and the targets "
            f"{_describe(target)}: {err}"
        ) from err
    if isinstance(score, CallableScore) and score.scale == 1.0 and 0.0 <= value <= 1.0:
        score.scale = 100.0
        value *= 100.0
    return value


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"(tensor {list(value.shape)}, {str(value.dtype).removeprefix('torch.')})"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"({type(value).__name__} of {len(value)})"
    return f"({type(value).__name__})"
