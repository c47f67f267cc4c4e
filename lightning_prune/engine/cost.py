"""Size and speed of a model: parameters, MACs (one counter for every method) and measured latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
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


# -- what per-group counts save (the distribution search's cost model) ------------------------------------------


def _in_channels(module: nn.Module) -> int:
    return int(getattr(module, "in_channels", getattr(module, "in_features", 0)))


@dataclass(frozen=True)
class CostModel:
    """MACs and params of a model as a function of the root channels removed from each group.

    Each layer's cost (torch-pruning's per-layer count, the one `measure.model_cost` sums) scales with the
    fraction of its output channels kept times the fraction of its input channels kept. Layers no group
    touches as a module (activations, pooling) keep their cost, so a saving is slightly underestimated.
    """

    macs: torch.Tensor  # (layers,)
    params: torch.Tensor  # (layers,)
    out_share: torch.Tensor  # (layers, groups): fraction of a layer's outputs one root channel of a group removes
    in_share: torch.Tensor  # (layers, groups): same for its inputs

    @classmethod
    def of(cls, model: nn.Module, graph: tp.DependencyGraph, names: Sequence[str], inputs: torch.Tensor) -> CostModel:
        """Read the current per-layer costs and each group's coupled layers from the dependency graph."""
        with surgery.preserved_modes(model):
            _, _, layer_macs, layer_params = tp.utils.count_ops_and_params(model, inputs[:1], layer_wise=True)
        layers = [m for m in model.modules() if not list(m.children())]
        row = {m: i for i, m in enumerate(layers)}
        out_share = torch.zeros(len(layers), len(names), dtype=torch.float64)
        in_share = torch.zeros_like(out_share)
        for g, name in enumerate(names):
            root = model.get_submodule(name)
            size = surgery.out_channels(root)
            prune_out = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, prune_out, list(range(size)))
            for item in group.items:
                module = item.dep.target.module
                if module not in row:
                    continue
                per_root = len(item.idxs) / size
                if item.dep.handler.__name__ == "prune_out_channels":
                    out_share[row[module], g] += per_root / surgery.out_channels(module)
                elif not (isinstance(module, nn.Conv2d) and module.groups > 1) and _in_channels(module):
                    in_share[row[module], g] += per_root / _in_channels(module)
        return cls(
            macs=torch.tensor([float(layer_macs.get(m) or 0) for m in layers], dtype=torch.float64),
            params=torch.tensor([float(layer_params.get(m) or 0) for m in layers], dtype=torch.float64),
            out_share=out_share,
            in_share=in_share,
        )

    def cost(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MACs, params) after removing `counts` root channels per group; `counts` is (groups,) or (k, groups)."""
        counts = counts.double()
        kept = (1 - counts @ self.out_share.T).clamp(min=0) * (1 - counts @ self.in_share.T).clamp(min=0)
        return kept @ self.macs, kept @ self.params
