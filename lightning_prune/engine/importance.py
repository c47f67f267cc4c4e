"""How much each filter matters inside a channel group (the criteria of RL-Pruner, Wang & Kindratenko 2024): the
L1 norm of its weights, or the first-order Taylor term accumulated on training batches, summed over the coupled
filters of each root channel."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.engine.data import Batch
from lightning_prune.engine.surgery import preserved_modes

Criterion = Literal["l1", "taylor"]
CRITERIA: tuple[str, ...] = ("l1", "taylor")
ChannelMaps = Sequence[tuple[nn.Module, torch.Tensor]]


def filter_scores(
    model: nn.Module,
    convs: Sequence[nn.Conv2d],
    criterion: Criterion,
    batches: Sequence[Batch] = (),
    forward_context: Callable[[], AbstractContextManager] | None = None,
) -> dict[nn.Module, torch.Tensor]:
    """Importance of every output filter of `convs` (float32, CPU).

    "l1": the L1 norm of the filter's weights. "taylor": first-order Taylor `sum |w * dL/dw|` over the filter,
    accumulated over `batches` (cross-entropy, eval mode; `.grad` and `requires_grad` are left untouched).
    """
    if criterion == "l1":
        return {c: c.weight.detach().abs().flatten(1).sum(1).float().cpu() for c in convs}
    if criterion != "taylor":
        raise ValueError(f"criterion={criterion!r} is unknown: use one of {CRITERIA}")
    weights = [c.weight for c in convs]
    totals = [torch.zeros(w.shape[0]) for w in weights]
    flags = [w.requires_grad for w in weights]
    context = forward_context or nullcontext
    try:
        with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for w in weights:
                w.requires_grad_(True)
            for x, y in batches:
                with context():
                    loss = F.cross_entropy(model(x).float(), y)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for total, w, g in zip(totals, weights, grads, strict=True):
                    if g is not None:
                        total += (w.detach() * g).abs().flatten(1).sum(1).float().cpu()
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    return dict(zip(convs, totals, strict=True))


def group_importance(
    group_maps: Mapping[str, ChannelMaps], scores: Mapping[nn.Module, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per root channel of each group, the summed importance of the coupled filters of its scored layers."""
    result = {}
    for name, maps in group_maps.items():
        # an index of the module's width marks a root channel that does not reach it: it adds nothing
        terms = [torch.cat([scores[m], scores[m].new_zeros(1)])[idx.cpu()] for m, idx in maps if m in scores]
        result[name] = torch.stack(terms).sum(0)
    return result
