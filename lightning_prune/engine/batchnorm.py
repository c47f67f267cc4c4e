"""BatchNorm re-estimation: after a cut, or for a candidate, the running statistics are re-estimated on
training inputs, so a pruned network is scored with the statistics it will have (the adaptive BatchNorm evaluation
of EagleEye, Li et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

#: Any BatchNorm layer (1d, 2d, 3d, sync).
BatchNorm = nn.modules.batchnorm._BatchNorm
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def reestimating(norms: Sequence[BatchNorm]) -> Iterator[None]:
    """Forwards inside the block re-estimate the running statistics of `norms` from scratch (an equal-weight
    average over the batches); their momentum and mode come back afterwards."""
    saved = [(n, n.momentum, n.training) for n in norms]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        yield
    finally:
        for norm, momentum, training in saved:
            norm.momentum, norm.training = momentum, training


def reestimate_batchnorm(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    forward_context: Callable[[], AbstractContextManager] | None = None,
) -> None:
    """Re-estimate the running statistics of every BatchNorm layer of `model` on `inputs` (the rest of the model
    runs in eval mode; modes come back afterwards). After pruning, the statistics then match the pruned network."""
    norms = [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]
    if not norms or not inputs:
        return
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), reestimating(norms), (forward_context or nullcontext)():
            for x in inputs:
                model(x)
    finally:
        for module, training in modes:
            module.training = training


def save_norms(norms: Iterable[BatchNorm]) -> list[tuple[BatchNorm, dict[str, torch.Tensor]]]:
    """Each tracking BatchNorm layer with a copy of its statistics."""
    return [
        (n, {k: getattr(n, k).clone() for k in _NORM_STATS})
        for n in norms
        if n.track_running_stats and n.running_mean is not None
    ]


def restore_norms(saved: Sequence[tuple[BatchNorm, dict[str, torch.Tensor]]]) -> None:
    with torch.no_grad():
        for norm, state in saved:
            for k in _NORM_STATS:
                getattr(norm, k).copy_(state[k])
