"""Size and speed of a model: parameters, MACs (one counter for every method) and measured latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.engine import surgery


@dataclass(frozen=True)
class ModelCost:
    """Parameter count and multiply-accumulates of one forward pass of a single example."""

    params: int
    macs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def model_cost(model: nn.Module, example_input: torch.Tensor) -> ModelCost:
    """Count params and MACs with torch-pruning's counter (the one counter used for every comparison)."""
    with surgery.preserved_modes(model):
        macs, params = tp.utils.count_ops_and_params(model, example_input[:1])
    return ModelCost(params=int(params), macs=int(macs))


def latency_ms(model: nn.Module, example_input: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock time of one forward pass of `example_input` in eval mode, in milliseconds."""
    x = example_input
    times = []
    with surgery.preserved_modes(model), torch.inference_mode():
        model.eval()
        for i in range(warmup + repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
